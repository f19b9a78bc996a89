"""What `vardecouple demo` does with what its --out already holds, before any work:
a folder of another version or other sizes, or no demo at all, is one line and exit 2,
and nothing in it changes (the finished and the resumed demo: tests/test_demo.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vardecouple.cli import main
from vardecouple.experiment.demo import DEMO_FILE

QUICK = ["--quick", "--pretrain-steps", "10", "--steps", "2", "--test-rows", "4"]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _refused(capsys, args: list[str], folder: Path, *words: str) -> str:
    before = _tree(folder)
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert _tree(folder) == before
    return err


def _stale_demo(folder: Path) -> None:
    """What the demo of an earlier version left: demo.toml, data/, run/config.json."""
    (folder / "data" / "family").mkdir(parents=True)
    (folder / "data" / "family" / "std_Latn.txt").write_text("a\n")
    (folder / "demo.toml").write_text('[data]\nroot = "demo-run/data"\n')
    (folder / "run").mkdir()
    (folder / "run" / "config.json").write_text("{}")


def test_a_demo_of_an_earlier_version_is_refused_until_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "demo-run"
    _stale_demo(out)
    _refused(capsys, ["demo", "--out", str(out), *QUICK], out, "earlier version", "--overwrite")


def test_a_demo_of_other_sizes_is_refused_and_names_what_differs(tmp_path, capsys) -> None:
    out = tmp_path / "d"
    _stale_demo(out)
    from vardecouple import __version__

    identity = {"vardecouple": __version__, "demo": {"steps": 999}, "corpus": None,
                "standard": None, "varieties": None, "model": "tiny-random"}  # fmt: skip
    (out / DEMO_FILE).write_text(json.dumps(identity))
    _refused(capsys, ["demo", "--out", str(out), *QUICK], out, "other sizes", "--overwrite")
    identity["vardecouple"] = "0.0.0-old"
    (out / DEMO_FILE).write_text(json.dumps(identity))
    _refused(capsys, ["demo", "--out", str(out), *QUICK], out, "version, sizes")


def test_a_folder_that_holds_no_demo_is_never_deleted(tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("three years of work")
    _refused(capsys, ["demo", "--out", str(out), *QUICK], out, "holds no demo")
    _refused(capsys, ["demo", "--out", str(out), *QUICK, "--overwrite"], out, "holds no demo")
    assert (out / "thesis.tex").read_text() == "three years of work"


def test_overwrite_replaces_a_stale_demo_and_runs(tmp_path, capsys) -> None:
    out = tmp_path / "demo-run"
    _stale_demo(out)
    assert main(["demo", "--out", str(out), *QUICK, "--overwrite"]) == 0
    assert (out / "run" / "report.md").is_file()
    assert not (out / "data" / "family" / "std_Latn.txt").read_text() == "a\n"
    assert main(["demo", "--out", str(out), *QUICK]) == 0  # the same demo again: finished
    assert "already finished" in capsys.readouterr().out


def test_an_interrupted_demo_resumes_without_redoing_what_is_done(
    tmp_path, monkeypatch, capsys
) -> None:
    import vardecouple.experiment.evaluation as experiment

    out = tmp_path / "d"
    real = experiment.train_arm

    def crashing(config, arm, *args, **kwargs):
        if arm == "decoupled":
            raise KeyboardInterrupt  # the user stops the demo during the second trained arm
        return real(config, arm, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_arm", crashing)
    with pytest.raises(KeyboardInterrupt):
        main(["demo", "--out", str(out), *QUICK])
    assert not (out / "run" / "results.json").exists()
    done = _tree(out / "model") | {
        arm: (out / "run" / "runs" / arm / "seed-0" / "eval.json").read_bytes()
        for arm in ("copy", "base", "standard")
    }
    monkeypatch.setattr(experiment, "train_arm", real)
    assert main(["demo", "--out", str(out), *QUICK]) == 0  # the same command resumes
    assert "demo finished" in capsys.readouterr().out
    # the pre-trained model and the finished arms were not made again
    assert done == _tree(out / "model") | {
        arm: (out / "run" / "runs" / arm / "seed-0" / "eval.json").read_bytes()
        for arm in ("copy", "base", "standard")
    }
    assert (out / "run" / "report.md").is_file()
