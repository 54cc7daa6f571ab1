"""Output paths are checked before any work (one line, exit 2, nothing trained), and every computing verb takes
--threads."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

import pytest

from fewbits import cli
from fewbits.commands.preflight import apply_threads, check_out_dir, check_out_file
from fewbits.errors import FewbitsValueError

ROOT = Path(__file__).resolve().parents[2]
TEXT = ["--task", "vader"]
VERBS = {  # verb -> arguments before --out
    "finetune": ["--model", "tiny-bert", *TEXT],
    "quantize": ["--model", "tiny-bert", *TEXT, "--scheme", "kmeans", "--bits", "2"],
    "mask": ["--base", "minilm", *TEXT],
    "qat": ["--model", "tiny-bert", *TEXT, "--wbits", "2"],
    "landscape": ["--model", "tiny-bert", *TEXT],
    "hessian": ["--model", "tiny-bert", *TEXT],
    "demo": [],
    "sweep": [str(ROOT / "recipes" / "p1-offline.toml")],
}


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any step past the checks (loading a task, running a sweep or a report) fails the test."""
    def started(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr("fewbits.data.load_task", started)
    monkeypatch.setattr("fewbits.experiments.sweep.sweep", started)
    monkeypatch.setattr("fewbits.experiments.report.write_report", started)


def refused(capsys: pytest.CaptureFixture, verb: str, argv: list[str], *fragments: str) -> None:
    assert cli.main([verb, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fewbits {verb}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def bad_outs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Output paths no verb can write, and what the message says about each."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {"existing file": (a_file, "exists and is not a folder"),
            "under a file": (a_file / "sub", "which is a file, not a folder"),
            "unwritable": (Path("/proc/fewbits-out"), "cannot be written")}


@pytest.mark.parametrize("verb", sorted(VERBS))
@pytest.mark.parametrize("case", ["existing file", "under a file", "unwritable"])
def test_bad_out_is_refused_before_any_work(verb: str, case: str, tmp_path: Path, no_work: None,
                                            capsys: pytest.CaptureFixture) -> None:
    out, fragment = bad_outs(tmp_path)[case]
    refused(capsys, verb, [*VERBS[verb], "--out", str(out)], "'--out'", str(out), fragment)


@pytest.mark.parametrize("verb", ["finetune", "quantize", "mask", "qat", "sweep"])
def test_read_only_file_system_is_refused_before_any_work(verb: str, tmp_path: Path, no_work: None,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr("fewbits.commands.preflight.os.mkdir", read_only)
    refused(capsys, verb, [*VERBS[verb], "--out", str(tmp_path / "out")], "Read-only file system")


def test_report_out_checks(tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "res"
    results.mkdir()
    refused(capsys, "report", [str(results), "--out", str(tmp_path)], "exists and is not a regular file")
    (tmp_path / "r-plots").write_text("x")
    refused(capsys, "report", [str(results), "--out", str(tmp_path / "r.md")], "r-plots to be a folder")
    (tmp_path / "f").write_text("x")
    refused(capsys, "report", [str(results), "--out", str(tmp_path / "f" / "r.md")], "which is a file")


def test_artifact_folders_that_fewbits_would_not_replace(tmp_path: Path, no_work: None,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "q"
    (out / "artifact").mkdir(parents=True)
    (out / "artifact" / "notes.txt").write_text("mine")
    refused(capsys, "quantize", [*VERBS["quantize"], "--out", str(out)], "artifact/, a non-empty folder")
    (out / "artifact" / "notes.txt").unlink()
    (out / "artifact").rmdir()
    (out / "artifact").write_text("x")
    refused(capsys, "quantize", [*VERBS["quantize"], "--out", str(out)], "holds artifact, which must be a folder")
    (out / "model").mkdir()
    (out / "model" / "x").write_text("x")
    refused(capsys, "qat", [*VERBS["qat"], "--out", str(out)], "model/, a non-empty folder")
    refused(capsys, "mask", [*VERBS["mask"], "--out", str(out)], "not a fewbits artifact")
    (tmp_path / "ft" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ft" / "finetune.json").mkdir()
    refused(capsys, "finetune", [*VERBS["finetune"], "--out", str(tmp_path / "ft")], "holds finetune.json")


def test_good_outputs_pass_and_leave_nothing_behind(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "new" / "deeper", "x") == tmp_path / "new" / "deeper"
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "fewbits.json").write_text("{}")
    check_out_dir(tmp_path / "art", "x", is_artifact=True)
    check_out_dir(tmp_path, "x", artifacts=("art", "absent"), files=("f.json",), folders=("art",))
    check_out_file(tmp_path / "sub" / "report.md", "x", folders_beside=("report-plots",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # the probes are gone, nothing created


@pytest.mark.parametrize("verb", ["qat", "mask", "landscape", "hessian", "finetune"])
def test_threads_is_taken_and_checked(verb: str, tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    refused(capsys, verb, [*VERBS[verb], "--out", str(tmp_path / "o"), "--threads", "0"], "'--threads'",
            "positive int")
    import torch

    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    apply_threads(argparse.Namespace(threads=3), verb)
    apply_threads(argparse.Namespace(threads=None), verb)
    assert chosen == [3]


def test_info_refuses_a_layer_count_below_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refused(capsys, "info", [str(tmp_path), "--layers", "-1"], "'--layers'")
    refused(capsys, "info", [str(tmp_path), "--layers", "0"], "'--layers'")


def test_errors_are_fewbits_value_errors(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FewbitsValueError, match="exists and is not a folder"):
        check_out_dir(tmp_path / "f", "x")
