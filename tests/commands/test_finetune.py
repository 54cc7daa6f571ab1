"""`fewbits finetune` and `fewbits eval`: a tiny end-to-end run, --help, and one-line errors with exit 2."""

from __future__ import annotations

import argparse
import json

import pytest

from fewbits import cli
from fewbits.commands import eval as eval_command
from fewbits.commands import finetune

OURS = ("finetune", "eval")


@pytest.fixture
def main(monkeypatch):
    """cli.main with only these two verbs registered (so that other verbs' imports cannot interfere)."""
    monkeypatch.setattr(cli, "VERBS", {k: v for k, v in cli.VERBS.items() if k in OURS})
    return cli.main


def run_cli(main, capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_option_is_explained_in_help():
    for module in (finetune, eval_command):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, action.dest


def test_finetune_then_eval_the_saved_model(main, capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(main, capsys, "finetune", "--model", "tiny-bert", "--task", "vader", "--out", str(out),
                              "--max-steps", "3", "--batch-size", "8", "--max-length", "8", "--lr", "1e-3",
                              "--no-progress")
    assert code == 0 and f"model saved to {out}" in stdout
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["steps"] == 3 and summary["split"] == "dev" and 0 <= summary["metrics"]["accuracy"] <= 1
    assert (out / "model.safetensors").is_file() and (out / "checkpoints" / "checkpoints.json").is_file()

    code, stdout, _ = run_cli(main, capsys, "eval", "--model", str(out), "--task", "vader", "--json")
    assert code == 0
    assert json.loads(stdout) == {"task": "vader", "split": "dev", "metrics": summary["metrics"]}


def write_sst2(root, header: str) -> None:
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    for name in ("train", "dev"):
        (folder / f"{name}.tsv").write_text(f"{header}\nit is fine\t1\nit is not\t0\n")


@pytest.mark.parametrize("case", ["unknown task", "missing data dir", "bad glue columns", "not a model",
                                  "model without head", "bad setting", "model for other inputs"])
def test_bad_input_gives_one_line_and_exit_2(main, capsys, tmp_path, case):
    write_sst2(tmp_path / "glue", "words\tscore")
    (tmp_path / "empty").mkdir()
    argv = {
        "unknown task": ["finetune", "--task", "glue/nope", "--out", str(tmp_path / "o")],
        "missing data dir": ["finetune", "--task", "glue/sst2", "--data-dir", str(tmp_path / "absent"),
                             "--out", str(tmp_path / "o")],
        "bad glue columns": ["eval", "--model", "tiny-bert", "--task", "glue/sst2", "--data-dir",
                             str(tmp_path / "glue")],
        "not a model": ["eval", "--model", str(tmp_path / "empty"), "--task", "vader"],
        "model without head": ["eval", "--model", "tiny-bert", "--task", "vader"],
        "bad setting": ["finetune", "--model", "tiny-bert", "--task", "vader", "--epochs", "0", "--out",
                        str(tmp_path / "o")],
        "model for other inputs": ["finetune", "--model", "cnn1d", "--task", "vader", "--out", str(tmp_path / "o")],
    }[case]
    code, stdout, stderr = run_cli(main, capsys, *argv)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith(f"fewbits {argv[0]}: error: ")
    assert "Traceback" not in stderr
