"""The console script: help, version, the planted self-check, one-line errors."""

import argparse
import json
import subprocess
import sys

from vardecouple.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vardecouple", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_help_and_version() -> None:
    out = _run("--help")
    assert out.returncode == 0 and "planted" in out.stdout
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.startswith("vardecouple ")


def test_every_help_prints_its_text_as_written() -> None:
    """argparse %-formats a flag's or a sub-command's ``help`` but not a ``description``:
    a ``%%`` typed in the one for the other is printed as is (it was, in ``power``)."""
    from vardecouple.cli.parser import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    pages = [parser.format_help(), *(p.format_help() for p in commands.choices.values())]
    assert len(pages) == 1 + len(commands.choices) >= 9
    for page in pages:
        assert "%%" not in page, page


def test_planted_recovers_the_standard_subspace(capsys) -> None:
    assert (
        main(["planted", "--n", "1500", "--dim", "32", "--rank", "2", "--varieties", "2", "--json"])
        == 0
    )
    rows = {r["estimator"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["pca"]["largest_angle_deg"] < 10
    assert rows["random"]["largest_angle_deg"] > 45


def test_bad_input_is_one_line_and_non_zero() -> None:
    out = _run("planted", "--dim", "3", "--rank", "4")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "dim >= rank + m" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run("planted", "--n", "zero")
    assert out.returncode == 2 and "positive integer" in out.stderr


def test_run_eval_report_demo_bad_input_is_one_line(tmp_path) -> None:
    cases = [
        (("run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")), "no such file"),
        (("report", str(tmp_path)), "results.json"),
        (("demo", "--out", str(tmp_path / "d"), "--model", "gemma3-270m"), "needs --corpus"),
        (
            ("demo", "--out", str(tmp_path / "d"), "--corpus", str(tmp_path)),
            "needs --standard",
        ),
    ]
    for args, expected in cases:
        out = _run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.strip().count("\n") == 0 and expected in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_eval_writes_hypotheses_and_scores_and_never_overwrites(tmp_path, mini_config) -> None:
    (tmp_path / "mini.toml").write_text(mini_config)
    args = ["eval", "--config", str(tmp_path / "mini.toml"), "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert set(scores["metrics"]) == {"deu_Latn->nds_Latn", "nds_Latn->deu_Latn"}
    for direction in scores["metrics"]:
        lines = (tmp_path / "ev" / "hypotheses" / f"{direction}.txt").read_text().split("\n")
        assert len(lines) == 20 + 1  # 20 test rows and the final newline
    assert scores["signatures"]["chrf++"].startswith("nrefs:1")
    before = (tmp_path / "ev" / "scores.json").read_bytes()
    out = _run(*args)
    assert out.returncode == 2 and "exists" in out.stderr
    assert (tmp_path / "ev" / "scores.json").read_bytes() == before
    bad = _run(*args[:-1], str(tmp_path / "ev2"), "--adapter", str(tmp_path))
    assert bad.returncode == 2 and "adapter_config.json" in bad.stderr


def test_train_again_says_finished_and_another_config_is_refused(
    tmp_path, mini_config, capsys
) -> None:
    """A finished training folder of the same config, arm and seed: exit 0, "already
    finished", nothing touched; of another config or arm (even with --resume): exit 2."""
    cfg = tmp_path / "mini.toml"
    cfg.write_text(mini_config)
    out = tmp_path / "tr"
    assert main(["train", str(cfg), "--arm", "decoupled", "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert main(["train", str(cfg), "--arm", "decoupled", "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out
    other = tmp_path / "other.toml"
    other.write_text(mini_config.replace("steps = 4", "steps = 6"))
    for args in (["train", str(other), "--arm", "decoupled", "--out", str(out), "--resume"],
                 ["train", str(cfg), "--arm", "standard", "--out", str(out)]):  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "different config, arm or seed" in err, err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    # the same command, moved elsewhere, still names the same run (where a config lies
    # does not change it)
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "mini.toml").write_text(mini_config)
    assert main(["train", str(moved / "mini.toml"), "--arm", "decoupled", "--out", str(out)]) == 0


def test_every_list_flag_takes_spaces_commas_and_repeats() -> None:
    """One habit: `--x a b`, `--x a,b`, `--x a --x b` give the same list, for every list
    flag of every command (and the help says so)."""
    from vardecouple.cli.parser import LISTS, build_parser

    parser = build_parser()
    common = {
        "demo": ["demo", "--out", "o"],
        "probe": ["probe", "--model", "m", "--corpus", "c", "--standard", "s", "--out", "o"],
        "eval": ["eval", "--config", "c.toml", "--out", "o"],
    }
    flags = [("demo", "--varieties", ["aa_Latn", "bb_Latn"]), ("demo", "--seeds", [0, 3]),
             ("probe", "--varieties", ["aa_Latn", "bb_Latn"]), ("probe", "--layers", ["0", "9"]),
             ("probe", "--adapter", ["a/x", "b/y"]),
             ("eval", "--erase-layers", [6, 9])]  # fmt: skip
    for command, flag, want in flags:
        words = [str(w) for w in want]
        forms = [[flag, *words], [flag, ",".join(words)], [x for w in words for x in (flag, w)]]
        for form in forms:
            args = parser.parse_args([*common[command], *form])
            assert getattr(args, flag[2:].replace("-", "_")) == want, (command, form)
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in common:
        assert sub[command].epilog == LISTS
