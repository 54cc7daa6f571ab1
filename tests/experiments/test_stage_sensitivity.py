"""The quantize stage's sensitivity parameters in a sweep: mixed bits from a float, Fisher, outliers; old keys kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_stages import TRAIN, run_recipe

from fewbits.errors import FewbitsValueError
from fewbits.experiments.recipe import parse_recipe, resolve
from fewbits.experiments.stages import STAGES
from fewbits.experiments.stages_quant import Quantize


def test_mixed_bits_with_fisher_and_outliers_in_a_sweep(tmp_path: Path) -> None:
    results = run_recipe(tmp_path, ["finetune", "quantize", "finetune_quantized"],
                         {"finetune": TRAIN, "finetune_quantized": TRAIN,
                          "quantize": {"scheme": "optimal", "importance": "fisher", "importance_batches": 2,
                                       "outliers": 0.01}},
                         {"quantize.bits": [2, 2.5]})
    by_bits = {r["config"]["quantize"]["bits"]: r["stages"]["quantize"] for r in results}
    assert sorted(type(b).__name__ for b in by_bits) == ["float", "int"]  # each kept as given
    assert set(by_bits[2]["layer_bits"].values()) == {2} and by_bits[2]["outliers"] > 0 and not by_bits[2]["plan"]
    mixed = by_bits[2.5]
    assert len(set(mixed["layer_bits"].values())) > 1 and mixed["plan"]["bytes"] <= mixed["plan"]["budget_bytes"]


def test_default_sensitivity_parameters_leave_the_key_unchanged() -> None:
    config = resolve(STAGES, ["quantize"], {}, "t", {"model": "m", "task": "t"})
    plain = {k: v for k, v in config["quantize"].items() if k in ("scheme", "bits", "groups", "max_iter")}
    from fewbits.experiments.base import Stage

    assert Quantize.key(config, None) == Stage.key.__func__(Quantize, {**config, "quantize": plain}, None)
    changed = resolve(STAGES, ["quantize"], {"quantize.outliers": 0.005}, "t", {"model": "m", "task": "t"})
    assert Quantize.key(changed, None) != Quantize.key(config, None)


@pytest.mark.parametrize("settings, words", [
    ({"quantize.importance": "adam"}, "'quantize.importance'"),
    ({"quantize.bits": 0.5}, "Stage 'quantize': The 'bits'"), ({"quantize.bits": 8.5}, "Stage 'quantize': The 'bits'"),
    ({"quantize.scheme": "linear", "quantize.outliers": 0.01}, "'outliers'"),
    ({"quantize.bits": "2"}, "'quantize.bits'"),
])
def test_bad_sensitivity_parameters_fail_when_the_recipe_is_read(settings, words) -> None:
    data = {"pipeline": ["finetune", "quantize"], "defaults": {"model": "tiny-bert", "task": "vader"},
            "grid": {k: [v] for k, v in settings.items()}}
    with pytest.raises(FewbitsValueError, match=words):
        parse_recipe(data, STAGES, name="tiny")
