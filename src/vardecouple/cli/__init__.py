"""The ``vardecouple`` command line: parse (:mod:`.parser`), call (:mod:`.commands`),
print. Bad input and unsupported setups end in one line on stderr and exit 2.

The library is imported only inside the command that needs it, so that ``vardecouple
--help`` loads neither torch nor transformers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from vardecouple.cli.parser import build_parser

__all__ = ["main"]


def _terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _quiet_hf_bars() -> None:
    """transformers reads the environment once, at import; if it is imported, tell it."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if not _terminal(sys.stderr):
        # a log file or CI: no progress-bar redraws from transformers / huggingface_hub
        # either (ours write whole lines: vardecouple.progress)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        _quiet_hf_bars()
    try:
        return int(args.func(args))
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
        FloatingPointError,
        NotImplementedError,
    ) as exc:
        # bad input, a loss that left the finite numbers, an unsupported engine: one line
        print(f"vardecouple {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
