"""P3's control: train only the task head over the frozen shared base (no mask), and the size of a LoRA adapter.

A mask that beats this control learned something in the weights' structure; one that only matches it did
no more than a linear probe of the frozen features. The stage also records, for scale, the parameters a
rank-``lora_rank`` LoRA adapter (Hu et al., 2021) would add on the same fully connected layers a mask covers,
and its bits per masked weight at 16 bits per parameter.
"""

from __future__ import annotations

from typing import Any

from fewbits.errors import bad_param
from fewbits.experiments.base import Stage, StageContext
from fewbits.experiments.stages_common import (TRAIN_DEFAULTS, check_train, drop_checkpoints, evaluate_all,
                                               load_task, train_config, train_record)
from fewbits.experiments.stages_mask import BASE_DIR

LORA_PARAM_BITS = 16  # adapters are stored in fp16/bf16


def lora_size(model: Any, rank: int) -> dict[str, float]:
    """Parameters of a rank-``rank`` LoRA on every fully connected layer a mask would cover, against the weights
    the mask covers (embeddings included), and the adapter's bits per masked weight."""
    from fewbits.nn.targets import select_targets

    masked, params = 0, 0
    for name in select_targets(model, owner="lora_size"):
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        masked += weight.numel()
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            params += rank * (module.in_features + module.out_features)
    return {"rank": rank, "params": params, "masked_weights": masked,
            "bits_per_masked_weight": params * LORA_PARAM_BITS / masked if masked else 0.0}


class Head(Stage):
    """Train only the head over the frozen shared base (the ``base`` stage's); records the metrics, the label
    prior's metrics and the size of a LoRA adapter on the same layers."""

    kind = "head"
    uses = {"task": None, "seed": 0}
    defaults = {**TRAIN_DEFAULTS, "lora_rank": 8}

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        check_train(cls.kind, params)
        if "base" not in config["pipeline"]:
            raise bad_param("pipeline", "a 'base' stage before 'head'", config["pipeline"], cls.kind)
        if params["lora_rank"] < 1:
            raise bad_param("head.lora_rank", "an int >= 1", params["lora_rank"], cls.kind)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from fewbits.nn.targets import head_names
        from fewbits.protocols.common import prior_metrics
        from fewbits.protocols.mask import load_base
        from fewbits.train import train

        task = load_task(ctx)
        base = load_base(ctx.outputs["base"].dir / BASE_DIR, task, seed=ctx.config.get("seed", 0))
        model = base.model
        lora = lora_size(model, ctx.params["lora_rank"])
        head = {id(p) for h in head_names(model) for p in model.get_submodule(h).parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
        out = ctx.out_dir / "train"
        result = train(model, task, train_config(ctx, out), tokenizer=base.tokenizer)
        drop_checkpoints(out)
        ctx.state.update(model=model, tokenizer=base.tokenizer, task=task)
        return {**train_record(result, task), **evaluate_all(model, task, base.tokenizer, ctx, result.metrics),
                "prior_metrics": prior_metrics(task), "trained_params": sum(p.numel() for p in model.parameters()
                                                                            if p.requires_grad),
                "sizes": {"lora": lora}}
