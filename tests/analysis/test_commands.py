"""`fewbits landscape` and `fewbits hessian` end to end on a tiny MNIST-1D CNN."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from fewbits import cli
from fewbits.analysis import Surface2D, load_directions
from fewbits.commands import hessian, landscape
from fewbits.errors import FewbitsValueError


def _args(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from fewbits.models import build_model, save_model

    torch.manual_seed(0)
    return save_model(build_model("cnn1d", width=4), tmp_path_factory.mktemp("cnn") / "model")


def test_verbs_registered():
    assert cli.VERBS["landscape"][0] == "fewbits.commands.landscape"
    assert cli.VERBS["hessian"][0] == "fewbits.commands.hessian"


def test_landscape_command_writes_plots_data_and_reusable_directions(model_dir, tmp_path, capsys):
    common = ["--model", str(model_dir), "--task", "mnist1d", "--eval-size", "40", "--batch-size", "16",
              "--grid", "3", "--span", "0.5", "--pairs", "1"]
    out = tmp_path / "a"
    assert landscape.run(_args(landscape, [*common, "--out", str(out)])) == 0
    report = json.loads((out / "landscape.json").read_text())
    assert report["examples"] == 40 and report["summary"]["pairs"] == 1 and len(report["fits"]) == 1
    printed = capsys.readouterr().out
    assert "trace" in printed and "exact in-plane curvature" in printed
    assert np.isfinite(report["summary"]["exact_trace"]["mean"]) and len(report["fits"][0]["exact_hessian"]) == 2
    for name in ("surface_pair0.png", "slices.png", "slices.json", "directions.safetensors"):
        assert (out / name).is_file(), name
    first = Surface2D.load(out / "surface_pair0.npz")
    assert first.loss.shape == (3, 3)
    assert first.loss[1, 1] == pytest.approx(report["centre"]["loss"], rel=1e-6)
    # reusing the saved directions reproduces the surfaces exactly
    again = tmp_path / "b"
    assert landscape.run(_args(landscape, [*common, "--out", str(again), "--seed", "99",
                                           "--directions", str(out / "directions.safetensors")])) == 0
    np.testing.assert_array_equal(Surface2D.load(again / "surface_pair0.npz").loss, first.loss)
    pairs, meta = load_directions(out / "directions.safetensors")
    assert len(pairs) == 1 and meta["seed"] == 0


def test_hessian_command(model_dir, tmp_path, capsys):
    out = tmp_path / "h"
    argv = ["--model", str(model_dir), "--task", "mnist1d", "--eval-size", "24", "--batch-size", "16",
            "--probes", "3", "--min-probes", "2", "--eig-iters", "3", "--temperatures", "1", "4", "--out", str(out)]
    assert hessian.run(_args(hessian, argv)) == 0
    report = json.loads((out / "hessian.json").read_text())
    assert report["hutchinson"]["probes"] <= 3 and np.isfinite(report["hutchinson"]["trace"])
    sweep = report["softmax_head"]["sweep"]
    assert report["softmax_head"]["module"] == "fc" and [c["temperature"] for c in sweep] == [1.0, 4.0]
    assert all(c["trace"] <= c["bound"] for c in sweep) and sweep[1]["trace"] < sweep[0]["trace"]
    assert (out / "trace_vs_temperature.png").is_file() and (out / "trace_vs_temperature.json").is_file()
    assert "exact trace" in capsys.readouterr().out


def test_hessian_command_spectrum_options(model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["--model", str(model_dir), "--task", "mnist1d", "--eval-size", "24", "--batch-size", "16",
            "--probes", "2", "--min-probes", "2", "--eig-iters", "6", "--which", "both", "--top", "3", "--density",
            "--density-steps", "4", "--density-probes", "2", "--layers", "2", "--temperatures", "1", "--out", str(out)]
    assert hessian.run(_args(hessian, argv)) == 0
    report = json.loads((out / "hessian.json").read_text())
    eig = report["eigenvalues"]
    assert len(eig["top"]) == 3 and eig["top"][0] == pytest.approx(eig["largest"])
    assert eig["smallest"] <= eig["top"][-1] and eig["iterations"] <= 6
    assert np.array(report["spectral_density"]["weights"]).shape == (2, 4)
    assert (out / "spectral_density.png").is_file() and (out / "spectral_density.json").is_file()
    traces = report["layer_traces"]["traces"]
    assert "fc.weight" in traces and report["layer_traces"]["probes"] == 2
    printed = capsys.readouterr().out
    assert "top eigenvalues" in printed and "per-tensor Hessian trace" in printed and "fc.weight" in printed


def test_bad_options_raise_named_errors(model_dir, tmp_path):
    with pytest.raises(FewbitsValueError, match="--grid"):
        landscape.run(_args(landscape, ["--model", str(model_dir), "--task", "mnist1d", "--grid", "2",
                                        "--out", str(tmp_path)]))
    with pytest.raises(FewbitsValueError, match="--tol"):
        hessian.run(_args(hessian, ["--model", str(model_dir), "--task", "mnist1d", "--tol", "0",
                                    "--out", str(tmp_path)]))
    for option, value in (("--top", "0"), ("--density-steps", "1"), ("--layers", "1")):
        with pytest.raises(FewbitsValueError, match=option):
            hessian.run(_args(hessian, ["--model", str(model_dir), "--task", "mnist1d", option, value,
                                        "--out", str(tmp_path)]))
