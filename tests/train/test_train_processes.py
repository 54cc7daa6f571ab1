"""Runs in their own processes: SIGKILL mid-training then --resume, and 2-process data-parallel (gloo) training.

Both compare with the same toy run made here in one process (tests/train/train_toy.py, one torch thread).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_toy import make_model, signal_task

from fewbits.train import TrainConfig, latest_checkpoint, load_trainer_state, train

SCRIPT = str(Path(__file__).with_name("train_toy.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}


def reference(dropout: float) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The same run as train_toy.main, in this process."""
    model = make_model(dropout)
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=3, log_every=5, progress=False)
    result = train(model, signal_task(), config)
    return model.state_dict(), result.metrics


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_parameters(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, SCRIPT, str(out), "--dropout", "0.3", "--save-every", "1"]
    proc = subprocess.Popen([*cmd, "--sleep", "0.03"], env=ENV, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while latest_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # land somewhere later, possibly in the middle of writing a checkpoint
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "result.json").exists()
    killed_at = load_trainer_state(latest_checkpoint(out))["step"]
    assert 1 <= killed_at < 36

    subprocess.run([*cmd, "--resume"], env=ENV, check=True, capture_output=True, timeout=300)
    expected_state, expected_metrics = reference(dropout=0.3)
    final = load_file(out / "final.safetensors")
    assert all(torch.equal(final[k], v) for k, v in expected_state.items())  # bit for bit
    result = json.loads((out / "result.json").read_text())
    assert result == {"step": 36, "metrics": expected_metrics}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    """Same seed and global batch (16 = 2 x 8): final parameters allclose (atol 1e-5), same accuracy.

    Not bit for bit: each process averages the loss over its 8 examples and DDP averages the two
    gradients, which rounds differently from one mean over 16. The toy net has no dropout or batch
    norm, whose random masks and batch statistics are per process by design.
    """
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*launch, SCRIPT, str(out), "--dropout", "0"], env=ENV, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    expected_state, expected_metrics = reference(dropout=0.0)
    final = load_file(out / "final.safetensors")
    for k, v in expected_state.items():
        torch.testing.assert_close(final[k], v, rtol=1e-4, atol=1e-5)
    assert json.loads((out / "result.json").read_text()) == {"step": 36, "metrics": expected_metrics}
    state = load_trainer_state(latest_checkpoint(out))
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # each process's RNG is kept for resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
