"""P1's stages: codebook-quantize the fine-tuned model, then fine-tune the quantized model.

Protocol (Zhao et al.): fine-tune FP32 -> quantize every embedding and fully connected weight except the
classifier -> fine-tune the codebooks (their gradient is the mean of their members', at 10x the base
learning rate) and the unquantized parameters -> evaluate on dev.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from fewbits.errors import bad_param
from fewbits.experiments.base import Stage, StageContext
from fewbits.experiments.stages_common import TRAIN_DEFAULTS, check_method_config, check_train, drop_checkpoints, finetuned

# sensitivity-aware parameters (fewbits.protocols.sensitivity); at these values the stage is plain P1
SENSITIVITY_DEFAULTS = {"importance": "none", "importance_batches": 8, "outliers": 0.0,
                        "outlier_selection": "magnitude", "sensitivity": "error", "trace_probes": 16}


class Quantize(Stage):
    """Step 1 of the codebook protocol (``fewbits.protocols.codebook.quantize_and_evaluate``) on the fine-tuned
    model, seeded by the run's seed: records the quantization error and the metrics before any fine-tuning.

    Sensitivity-aware (:mod:`fewbits.protocols.sensitivity`): ``importance`` none | fisher (``importance_batches``
    training batches); ``outliers`` F kept exact; a float ``bits`` (2.5) is an average budget for mixed
    precision chosen by ``sensitivity`` (error | trace). Adam's moments are not available here (the finetune
    stage drops its checkpoints). Parameters left at their defaults do not enter the stage's key, so runs
    from before they existed keep their results."""

    kind = "quantize"
    uses = {"seed": 0}
    # groups 0: one codebook per tensor (P1's group-wise: 128); max_iter: k-means' Lloyd iterations (P1: 3; 0: until
    # convergence), ignored by the other schemes
    defaults = {"scheme": "kmeans", "bits": 4, "groups": 0, "max_iter": 3, **SENSITIVITY_DEFAULTS}
    numbers = frozenset({"bits"})  # an int (every layer) or a float (an average: mixed precision)

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        from fewbits.protocols.sensitivity import CompressSettings

        if params["importance"] == "adam":
            raise bad_param("quantize.importance", "'none' or 'fisher' (the finetune stage keeps no optimizer "
                            "state for 'adam')", "adam", cls.kind)
        sensitivity = {k: params[k] for k in SENSITIVITY_DEFAULTS}
        check_method_config(cls.kind, lambda: CompressSettings(scheme=params["scheme"], bits=params["bits"],
                                                               **sensitivity))
        if params["max_iter"] < 0:
            raise bad_param("quantize.max_iter", "an int >= 0 (0: until convergence)", params["max_iter"], cls.kind)
        if params["groups"] < 0:
            raise bad_param("quantize.groups", "an int >= 0 (0: one codebook per tensor)", params["groups"], cls.kind)

    @classmethod
    def key(cls, config: Mapping[str, Any], parent: str | None) -> str:
        params = {k: v for k, v in config[cls.kind].items()
                  if k not in SENSITIVITY_DEFAULTS or v != SENSITIVITY_DEFAULTS[k]}
        return super().key({**config, cls.kind: params}, parent)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from fewbits.protocols.codebook import quantize_and_evaluate

        model, tokenizer, task = finetuned(ctx)
        quantized = quantize_and_evaluate(model, task, codebook_config(ctx), tokenizer=tokenizer)
        ctx.state.update(model=model, tokenizer=tokenizer, task=task, quantized=quantized)
        return quantized.to_dict()


def codebook_config(ctx: StageContext) -> Any:
    """The codebook protocol's settings of this run: ``quantize``'s scheme, bits, groups and Lloyd iterations, the
    run's seed, and ``finetune_quantized``'s training settings (its defaults when the pipeline has none)."""
    from fewbits.protocols.codebook import QuantizeFinetuneConfig

    q = ctx.config["quantize"]
    t = ctx.config.get("finetune_quantized", FinetuneQuantized.defaults)
    return QuantizeFinetuneConfig(
        scheme=q["scheme"], bits=q["bits"], groups=q["groups"] or None, max_iter=q["max_iter"] or None,
        seed=ctx.config.get("seed", 0), epochs=t["epochs"], max_steps=t["max_steps"] or None,
        batch_size=t["batch_size"], lr=t["lr"], quantized_lr_scale=t["quantized_lr_scale"],
        weight_decay=t["weight_decay"], warmup_ratio=t["warmup_ratio"], max_length=t["max_length"],
        eval_batch_size=ctx.env["eval_batch_size"], max_grad_norm=t["max_grad_norm"] or None,
        **{k: q.get(k, v) for k, v in SENSITIVITY_DEFAULTS.items()})


class FinetuneQuantized(Stage):
    """Step 2 of the codebook protocol (``fewbits.protocols.codebook.finetune_codebooks``): codebooks at
    ``lr * quantized_lr_scale`` (P1: 5e-4 vs 5e-5), codes frozen; ``epochs = 0`` only evaluates. Records the
    protocol's whole record (metrics before and after, errors, the artifact's true size)."""

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
        from fewbits.protocols.codebook import finetune_codebooks

        model, tokenizer, task = ctx.state["model"], ctx.state["tokenizer"], ctx.state["task"]
        artifact = ctx.out_dir / "artifact"
        result = finetune_codebooks(model, task, codebook_config(ctx), ctx.state["quantized"], tokenizer=tokenizer,
                                    artifact_dir=artifact if ctx.is_main else None, train_dir=ctx.out_dir / "train",
                                    num_workers=ctx.env["num_workers"], progress=bool(ctx.env["progress"]))
        drop_checkpoints(ctx.out_dir / "train")
        if ctx.is_main and not ctx.env.get("keep_artifacts"):
            shutil.rmtree(artifact)
        ctx.state.update(model=model, tokenizer=tokenizer, task=task)
        return result.to_dict()
