"""The argument parser: every sub-command, its flags and their checks."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from vardecouple import __version__
from vardecouple.cli.commands import (
    demo_command,
    eval_command,
    planted_command,
    power_command,
    probe_command,
    report_command,
    run_command,
    train_command,
)

__all__ = [
    "LISTS",
    "ListFlag",
    "OneLineParser",
    "alpha_value",
    "build_parser",
    "layer_index",
    "positive_int",
]


class ListFlag(argparse.Action):
    """A list flag, one habit everywhere: ``--x a b c``, ``--x a,b,c`` or a mix; a
    repeated flag adds to the list. ``item`` converts (and checks) each element."""

    def __init__(self, option_strings: list[str], dest: str, item: Any = str, **kwargs: Any):
        self.item = item
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        items = []
        for value in values:
            for part in value.split(","):
                if not part.strip():
                    raise argparse.ArgumentError(self, f"empty item in {value!r}")
                try:
                    items.append(self.item(part.strip()))
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    raise argparse.ArgumentError(self, str(exc)) from None
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(before or []), *items])


LISTS = "lists: space- or comma-separated (a b c or a,b,c)"


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (what, where, expected) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="vardecouple",
        description=(
            "Decouple a dominant standard variety's subspace while fine-tuning language "
            "models on low-resource varieties (arXiv 2508.12803, made explicit)."
        ),
        epilog="Every list flag takes space- or comma-separated values (a b c or a,b,c).",
    )
    parser.add_argument("--version", action="version", version=f"vardecouple {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser(
        "train",
        help="fine-tune one arm of a config (LoRA + online decoupling)",
        description="Fine-tune one arm of a TOML config; see examples/ for configs.",
    )
    t.add_argument("config", help="the TOML config")
    t.add_argument("--arm", required=True, help="the [arms.NAME] table to train")
    t.add_argument("--out", required=True, help="output folder (log, checkpoint, adapter)")
    t.add_argument(
        "--data-root", default=None, help="base of relative paths (default: the config's folder)"
    )
    t.add_argument("--seed", type=int, default=None, help="default: the first of train.seeds")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    t.set_defaults(func=train_command)
    r = sub.add_parser(
        "run",
        help="train and evaluate every arm × seed of a config; results.json + report.md",
        description="Train and evaluate every arm × seed; resumes after an interruption.",
    )
    r.add_argument("config", help="the TOML config")
    r.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    r.add_argument("--data-root", default=None, help="base of relative paths")
    r.add_argument(
        "--overwrite", action="store_true", help="delete a finished run in --out and redo it"
    )
    r.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="train the seeds of an arm in this many processes at once (default 1)",
    )
    r.add_argument(
        "--order",
        choices=("arm", "seed"),
        default="arm",
        help="make every seed of one arm before the next arm (arm, the default), or every "
        "arm with one seed before the next seed (seed: a run stopped part-way then has "
        "every comparison on its first seeds); the numbers are the same",
    )
    r.add_argument(
        "--plan",
        action="store_true",
        help="print what is left to do and how long it should take; run nothing, write nothing",
    )
    r.add_argument(
        "--interim",
        action="store_true",
        help="write OUT/interim.json, OUT/report.md and its plots from the arm × seed results "
        "there so far (a run in progress, or stopped); train and decode nothing",
    )
    r.add_argument(
        "--rates-from",
        default=None,
        metavar="DIR",
        help="with --plan: the run folder whose finished results give the seconds per "
        "training step and per sentence (default: --out itself)",
    )
    r.set_defaults(func=run_command)
    e = sub.add_parser(
        "eval",
        help="evaluate one model (and adapter) on a config's test split",
        description="Decode the config's test split; hypotheses and scores.json in --out.",
    )
    e.add_argument("--config", required=True, help="the TOML config (data, eval settings)")
    e.add_argument("--model", default=None, help="model spec (default: the config's)")
    e.add_argument("--adapter", default=None, help="a LoRA adapter folder (peft)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--data-root", default=None, help="base of relative paths")
    ers = e.add_argument_group(
        "inference-time erasure (any of these turns it on; defaults from [decoupler])"
    )
    ers.add_argument(
        "--erase-layers",
        action=ListFlag,
        item=layer_index,
        default=None,
        help="0-based layers, e.g. 9 or 6 9 or 6,9 (default: middle)",
    )
    ers.add_argument(
        "--erase-alpha",
        type=alpha_value,
        default=None,
        help="α of h ← h − α·UUᵀ(h − c) (default 1)",
    )
    ers.add_argument("--erase-estimator", default=None, help="the estimator fitting U")
    ers.add_argument("--erase-rank", type=positive_int, default=None, help="rank of U")
    ers.add_argument(
        "--erase-from",
        default=None,
        metavar="DIR",
        help="erase a saved subspace instead of fitting one (a trained arm's subspace/ folder;"
        " with --erase-alpha only)",
    )
    e.epilog = LISTS
    e.set_defaults(func=eval_command)
    d = sub.add_parser(
        "demo",
        help="the whole study out of the box (synthetic family, tiny model) or on a corpus",
        description=(
            "Run copy/base/standard/decoupled/random arms end to end and write a report. "
            "Default: a synthetic language family and a tiny model pre-trained on it "
            "(no network). With --corpus DIR --standard CODE [--model gemma3-270m]: "
            "a real line-aligned corpus and model."
        ),
    )
    d.add_argument("--out", required=True, help="output folder (data, model, run/report.md)")
    d.add_argument("--corpus", default=None, help="a line-aligned corpus folder instead")
    d.add_argument("--standard", default=None, help="the standard variety code (with --corpus)")
    d.add_argument(
        "--varieties", action=ListFlag, default=None, help="codes; default: all other codes"
    )
    d.add_argument("--model", default="tiny-random", help="model spec (with --corpus)")
    d.add_argument("--steps", type=positive_int, default=None, help="training steps per arm")
    d.add_argument("--seeds", action=ListFlag, item=int, default=None, help="default: 0 1")
    d.add_argument("--test-rows", type=positive_int, default=None, help="test rows")
    d.add_argument("--pretrain-steps", type=positive_int, default=None)
    d.add_argument("--lam", type=float, default=None, help="λ of the decoupled arm")
    d.add_argument("--quick", action="store_true", help="a small study (about a minute)")
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a demo of another version or sizes in --out (a finished demo of the "
        "same one is kept: the command says so and exits 0)",
    )
    d.epilog = LISTS
    d.set_defaults(func=demo_command)
    rep = sub.add_parser(
        "report",
        help="(re)write RUN_DIR/report.md and its plots from RUN_DIR/results.json",
        description="Write report.md and plots/ from a run folder's results.json.",
    )
    rep.add_argument("run_dir", help="a folder written by `vardecouple run`")
    rep.set_defaults(func=report_command)
    pw = sub.add_parser(
        "power",
        help="test sentences per direction a comparison needs for a given 95%% interval",
        description="From one seed of two finished arms in a run folder: the paired "
        "bootstrap's 95% interval of their chrF++ delta (means over the directions into the "
        "varieties and into the standard) and the sentences per direction that narrow it to "
        "±TARGET (n·(h/target)², the interval shrinking as 1/√n).",
    )
    pw.add_argument("run_dir", help="a folder written by `vardecouple run` (finished arms)")
    pw.add_argument(
        "--compare",
        nargs=2,
        action="append",
        required=True,
        metavar=("A", "B"),
        help="the delta A − B (repeat the flag for several pairs)",
    )
    pw.add_argument("--target", type=positive_float, default=1.0, help="half-width (default 1)")
    pw.add_argument("--seed", type=int, default=None, help="default: the first both finished")
    pw.add_argument(
        "--all-seeds",
        action="store_true",
        help="every seed both arms finished, averaged inside each resample (the comparison "
        "itself, with its p-value) instead of one seed",
    )
    pw.add_argument(
        "--config",
        default=None,
        help="the run's TOML config: rebuilds the references from the corpora when the folder "
        "has no references/ (a committed run keeps no copies of corpus text)",
    )
    pw.add_argument("--data-root", default=None, help="with --config: base of relative paths")
    pw.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pw.set_defaults(func=power_command)
    pb = sub.add_parser(
        "probe",
        help="geometry and codelengths of the varieties' sentence states, layer by layer",
        description=(
            "Probe a model (and LoRA adapters) on a line-aligned corpus: per decoder layer "
            "and variety, L2/cosine distance, linear CKA, principal angles, overlap and the "
            "online/variational codelengths; OUT/probe.json and OUT/plots/."
        ),
    )
    pb.add_argument("--model", required=True, help="model spec (gemma3-270m, tiny-random, ...)")
    pb.add_argument(
        "--adapter",
        action=ListFlag,
        default=None,
        metavar="DIR",
        help="peft adapter folder(s), each probed after the base model",
    )
    pb.add_argument("--corpus", required=True, help="a line-aligned corpus folder")
    pb.add_argument("--standard", required=True, help="the standard variety code")
    pb.add_argument(
        "--varieties", action=ListFlag, default=None, help="codes; default: all other codes"
    )
    pb.add_argument(
        "--layers", action=ListFlag, default=None, help="all (default) or 0-based indices: 0 3 9"
    )
    pb.add_argument(
        "--max-rows", type=positive_int, default=1000, help="first N rows (default 1000)"
    )
    pb.add_argument("--rank", type=positive_int, default=4, help="PCA rank K (default 4)")
    pb.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    pb.add_argument(
        "--max-length", type=positive_int, default=256, help="tokens per sentence (default 256)"
    )
    pb.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0)")
    pb.add_argument(
        "--subspace",
        default=None,
        metavar="DIR",
        help="a saved subspace (a trained arm's subspace/): each variety's overlap with it",
    )
    pb.add_argument("--out", required=True, help="output folder (probe.json, plots/)")
    pb.epilog = LISTS
    pb.set_defaults(func=probe_command)
    p = sub.add_parser(
        "planted",
        help="recover a planted subspace with every estimator (a quick self-check)",
        description="Run every subspace estimator on a synthetic family with planted structure.",
    )
    p.add_argument("--n", type=positive_int, default=2000, help="number of states (default 2000)")
    p.add_argument("--dim", type=positive_int, default=64, help="state dimension (default 64)")
    p.add_argument("--rank", type=positive_int, default=4, help="planted standard rank (default 4)")
    p.add_argument(
        "--varieties", type=positive_int, default=3, help="non-standard varieties (default 3)"
    )
    p.add_argument(
        "--snr", type=float, default=50.0, help="standard-subspace variance ratio (default 50)"
    )
    p.add_argument(
        "--separation", type=float, default=5.0, help="variety offset in noise sd (default 5)"
    )
    p.add_argument(
        "--support",
        type=positive_int,
        default=None,
        help="put the discriminating directions on this many coordinates",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=planted_command)
    return parser


def layer_index(text: str) -> int:
    try:
        layer = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected layer indices like 6 9 or 6,9, got {text!r}"
        ) from None
    if layer < 0:
        raise argparse.ArgumentTypeError(f"layer indices are 0-based and >= 0, got {text!r}")
    return layer


def alpha_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
