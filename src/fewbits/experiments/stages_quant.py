"""P1's stages: codebook-quantize the fine-tuned model, then fine-tune the quantized model.

Protocol (Zhao et al.): fine-tune FP32 -> quantize every embedding and fully connected weight except the
classifier -> fine-tune the codebooks (their gradient is the mean of their members', at 10x the base
learning rate) and the unquantized parameters -> evaluate on dev.
"""

from __future__ import annotations

import shutil
from typing import Any

from fewbits.errors import bad_param
from fewbits.experiments.base import Stage, StageContext
from fewbits.experiments.stages_common import (TRAIN_DEFAULTS, check_method_config, check_train, drop_checkpoints, evaluate_all, finetuned,
                                               train_config, train_record)

class Quantize(Stage):
    """``fewbits.compress(model, scheme, bits, groups=...)`` on the fine-tuned model (seeded by the run's seed);
    records the quantization error and the metrics before any fine-tuning."""

    kind = "quantize"
    uses = {"seed": 0}
    # groups 0: one codebook per tensor (P1's group-wise: 128); max_iter: k-means' Lloyd iterations (P1: 3; 0: until
    # convergence), ignored by the other schemes
    defaults = {"scheme": "kmeans", "bits": 4, "groups": 0, "max_iter": 3}

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        from fewbits.methods.codebook import CodebookConfig

        check_method_config(cls.kind, lambda: CodebookConfig(scheme=params["scheme"], bits=params["bits"]))
        if params["max_iter"] < 0:
            raise bad_param("quantize.max_iter", "an int >= 0 (0: until convergence)", params["max_iter"], cls.kind)
        if params["groups"] < 0:
            raise bad_param("quantize.groups", "an int >= 0 (0: one codebook per tensor)", params["groups"], cls.kind)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import fewbits

        model, tokenizer, task = finetuned(ctx)
        p = ctx.params
        extra = {"max_iter": p["max_iter"] or None} if p["scheme"] == "kmeans" else {}
        reports = fewbits.compress(model, p["scheme"], p["bits"], groups=p["groups"] or None,
                                   seed=ctx.config.get("seed", 0), **extra)
        ctx.state.update(model=model, tokenizer=tokenizer, task=task)
        squared = sum(r.squared_error for r in reports)
        energy = sum(r.squared_error / r.relative_error for r in reports if r.relative_error > 0)
        return {"layers": len(reports), "squared_error": squared,
                "relative_error": squared / energy if energy > 0 else 0.0,
                **evaluate_all(model, task, tokenizer, ctx)}


def measure_artifact(model: Any, tokenizer: Any, ctx: StageContext) -> dict[str, Any]:
    """Save the model as a fewbits artifact and account for its bytes (deleted unless env keep_artifacts)."""
    import fewbits
    from fewbits.io.summary import describe

    if not ctx.is_main:
        return {}
    directory = ctx.out_dir / "artifact"
    fewbits.save(model, directory, tokenizer=tokenizer)
    sizes = describe(directory).sizes()
    if not ctx.env.get("keep_artifacts"):
        shutil.rmtree(directory)
    return sizes


class FinetuneQuantized(Stage):
    """Train the quantized model: codebooks at ``lr * quantized_lr_scale`` (P1: 5e-4 vs 5e-5), codes frozen;
    ``epochs = 0`` only evaluates. Records the metrics and the artifact's true size."""

    kind = "finetune_quantized"
    defaults = {**TRAIN_DEFAULTS, "quantized_lr_scale": 10.0}

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        check_train(cls.kind, params)
        if not params["quantized_lr_scale"] > 0:
            raise bad_param("finetune_quantized.quantized_lr_scale", "a number > 0", params["quantized_lr_scale"],
                            cls.kind)
        if "quantize" not in config["pipeline"]:
            raise bad_param("pipeline", "a 'quantize' stage before 'finetune_quantized'", config["pipeline"], cls.kind)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from fewbits.methods.codebook import param_groups
        from fewbits.train import train

        model, tokenizer, task = ctx.state["model"], ctx.state["tokenizer"], ctx.state["task"]
        p = ctx.params
        record: dict[str, Any] = {}
        if p["epochs"] > 0:
            groups = lambda m: param_groups(m, p["lr"], p["quantized_lr_scale"], p["weight_decay"])  # noqa: E731
            result = train(model, task, train_config(ctx, ctx.out_dir / "train"), tokenizer=tokenizer,
                           param_groups=groups)
            record.update(train_record(result, task))
            drop_checkpoints(ctx.out_dir / "train")
        record.update(evaluate_all(model, task, tokenizer, ctx, record.get("metrics")))
        record["sizes"] = measure_artifact(model, tokenizer, ctx)
        ctx.state.update(model=model, tokenizer=tokenizer, task=task)
        return record
