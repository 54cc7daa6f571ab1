"""`fewbits eval` on what the other commands write: a compressed artifact, a task mask over its base (and the
mask given alone, refused with one line), scored exactly as the in-memory model."""

from __future__ import annotations

import json

import pytest

import fewbits
from fewbits import cli
from fewbits.data import load_task
from fewbits.models import load_model
from fewbits.protocols.mask import load_mask
from fewbits.train import evaluate


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A fine-tuned tiny BERT, quantized to 2 bits and saved; its dev metrics in memory."""
    root = tmp_path_factory.mktemp("eval")
    assert cli.main(["finetune", "--model", "tiny-bert", "--task", "vader", "--out", str(root / "fp32"),
                     "--max-steps", "3", "--batch-size", "8", "--max-length", "8", "--lr", "1e-3",
                     "--no-progress"]) == 0
    task = load_task("vader")
    model, tokenizer = load_model(root / "fp32", task, new_head=False)
    fewbits.compress(model, "kmeans", 2, seed=0)
    fewbits.save(model, root / "q2", tokenizer=tokenizer)
    return root, evaluate(model, task, tokenizer=tokenizer, max_length=8)


def test_eval_reads_a_compressed_artifact(artifact, capsys):
    root, metrics = artifact
    code, out, _ = run_cli(capsys, "eval", "--model", str(root / "q2"), "--task", "vader", "--max-length", "8",
                           "--json")
    assert code == 0 and json.loads(out)["metrics"] == metrics


def test_eval_scores_a_mask_on_its_base_and_refuses_the_mask_alone(artifact, capsys):
    root, _ = artifact
    mask = root / "mask"
    assert cli.main(["mask", "--base", str(root / "q2"), "--task", "vader", "--out", str(mask), "--max-steps", "2",
                     "--batch-size", "8", "--max-length", "8", "--score-lr", "0.05", "--margin", "0.1",
                     "--no-progress"]) == 0
    capsys.readouterr()
    model, tokenizer = load_mask(root / "q2", mask)
    expected = evaluate(model, load_task("vader"), tokenizer=tokenizer, max_length=8)
    code, out, _ = run_cli(capsys, "eval", "--model", str(root / "q2"), "--mask", str(mask), "--task", "vader",
                           "--max-length", "8", "--json")
    assert code == 0 and json.loads(out)["metrics"] == expected
    code, out, err = run_cli(capsys, "eval", "--model", str(mask), "--task", "vader")
    assert code == 2 and "task mask" in err and "--mask" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "eval", "--model", str(root / "fp32"), "--mask", str(mask), "--task", "vader")
    assert code == 2 and "another base" in err
    code, out, _ = run_cli(capsys, "info", str(mask))  # per-layer mask sizes and sparsity, against a 1-bit bitmask
    assert code == 0 and "task       vader" in out and "bits/weight" in out and "a plain bitmask: 1 bit" in out
    code, out, _ = run_cli(capsys, "info", str(root / "q2"))
    assert code == 0 and "compression ratio" in out
