"""The real stages, end to end on a tiny BERT (hidden 32) and the VADER lexicon, a few steps each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fewbits.experiments.recipe import parse_recipe
from fewbits.experiments.stages import STAGES
from fewbits.experiments.store import Store
from fewbits.experiments.sweep import sweep

TRAIN = {"epochs": 1, "max_steps": 2, "max_length": 8, "batch_size": 16}


def run_recipe(tmp_path: Path, pipeline: list[str], defaults: dict, grid: dict) -> list[dict]:
    data = {"pipeline": pipeline, "defaults": {"model": "tiny-bert", "task": "vader", **defaults}, "grid": grid}
    recipe = parse_recipe(data, STAGES, name="tiny")
    outcome = sweep(recipe, tmp_path / "res")
    assert not outcome["failed"], [Store(tmp_path / "res").failure(r) for r in outcome["failed"]]
    results = Store(tmp_path / "res").results()
    assert len(results) == len(recipe.runs)
    return results


def test_p1_pipeline(tmp_path: Path) -> None:
    results = run_recipe(tmp_path, ["finetune", "quantize", "finetune_quantized"],
                         {"finetune": TRAIN, "finetune_quantized": TRAIN},
                         {"quantize.scheme": ["linear", "kmeans"], "quantize.bits": [2]})
    for r in results:
        stages = r["stages"]
        assert 0 < stages["quantize"]["relative_error"] < 1
        assert stages["finetune_quantized"]["steps"] == 2
        assert set(r["metrics"]) == {"accuracy"} and stages["finetune"]["prior_metrics"]["accuracy"] > 0.5
        assert 2 < r["sizes"]["bits_per_weight"] < 32 and r["sizes"]["ratio_to_fp32"] > 1
        assert not (Path(tmp_path / "res" / r["run_id"]) / "finetune_quantized" / "artifact").exists()
    assert sorted(r["stages"]["finetune"]["cached"] for r in results) == [False, True]  # one FP32 fine-tune
    shared = Store(tmp_path / "res").stage_dir("finetune", results[0]["stages"]["finetune"]["key"])
    assert (shared / "model" / "config.json").is_file() and not (shared / "train" / "checkpoints").exists()


def test_p2_pipeline(tmp_path: Path) -> None:
    qat = {**TRAIN, "lr": 1e-3}
    results = run_recipe(tmp_path, ["finetune", "ste", "regularize", "landscape"],
                         {"finetune": TRAIN, "ste": {**qat, "wbits": 2, "abits": 4}, "regularize": qat,
                          "landscape": {"pairs": 1, "grid": 3, "eval_size": 32}},
                         {"regularize.method": ["fisher", "kd"]})
    for r in results:
        assert r["stages"]["regularize"]["wbits"] == 2 and r["stages"]["regularize"]["abits"] == 4
        assert math.isfinite(r["stages"]["landscape"]["hessian"]["trace"]["mean"])
        assert r["sizes"]["bits_per_weight"] < 32
    assert sorted(r["stages"]["ste"]["cached"] for r in results) == [False, True]  # one STE checkpoint


@pytest.mark.parametrize("bits", [32, 2])
def test_p3_pipeline(tmp_path: Path, bits: int) -> None:
    (r,) = run_recipe(tmp_path, ["base", "mask"], {"mask": {**TRAIN, "lr": 1e-3}}, {"base.bits": [bits]})
    mask = r["stages"]["mask"]
    assert len(mask["kept"]) >= 2 and 0.5 < mask["kept"][-1] <= 1.0
    assert r["sizes"]["artifact_bytes"] > 0 and r["sizes"]["base_bytes"] > 0
    sizes = mask["sizes"]  # the mask alone: at most a plain bitmask's bit per weight (plus a few header bytes)
    assert 0 <= sizes["mask_bits_per_weight"] <= 1 + 512 / sizes["masked_weights"]
    assert sizes["mask_bytes"] < sizes["artifact_bytes"]
    assert (sizes["mask_bits_per_weight"] > 0) == (mask["kept"][-1] < 1)  # keeping everything costs ~nothing
    assert ("relative_error" in r["stages"]["base"]) == (bits < 32)


def test_head_only_control(tmp_path: Path) -> None:
    import torch

    from fewbits.experiments.stages_head import lora_size
    from fewbits.models import load_model

    (r,) = run_recipe(tmp_path, ["base", "head"], {"head": {**TRAIN, "lr": 1e-3}}, {"base.bits": [32]})
    head = r["stages"]["head"]
    assert head["steps"] == 2 and head["trained_params"] == 32 * 2 + 2  # tiny-bert's classifier only
    assert set(head["metrics"]) == {"accuracy"} and head["prior_metrics"]["accuracy"] > 0.5
    # tiny-bert: hidden 32, intermediate 64, 2 layers, vocabulary 141; LoRA rank 8 on every masked Linear (q, k, v,
    # o, up, down of each layer, and the pooler); the mask also covers the three embeddings
    lora = 2 * (4 * 8 * (32 + 32) + 2 * 8 * (32 + 64)) + 8 * (32 + 32)
    masked = (141 + 128 + 2) * 32 + 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32
    assert r["sizes"]["lora"] == {"rank": 8, "params": lora, "masked_weights": masked,
                                  "bits_per_masked_weight": pytest.approx(16 * lora / masked)}
    model, _ = load_model("tiny-bert", num_labels=2)
    assert lora_size(model, 4)["params"] == lora // 2
    assert masked == sum(m.weight.numel() for m in model.modules()
                         if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))) - 2 * 32  # all but the head
