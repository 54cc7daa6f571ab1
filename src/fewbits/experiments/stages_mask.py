"""P3's stages: one shared base per bit width, then a binary mask (and head) per task and seed.

Protocol (Radiya-Dixit & Wang; Wang): fine-tune the *structure* of a pretrained model (which weights to keep)
instead of its values; the frozen weights may be quantized to 8/4/2/1 bits first, so one low-precision copy
serves every task. Compared against plain fine-tuning of the weights (the ``finetune`` stage alone).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fewbits.errors import bad_param
from fewbits.experiments.base import Stage, StageContext
from fewbits.experiments.stages_common import (TRAIN_DEFAULTS, check_method_config, check_train, drop_checkpoints,
                                               load_task, train_config)

BASE_DIR = "base"


def _bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


class Base(Stage):
    """The pretrained model, its weights quantized to ``bits`` with ``scheme`` (32: kept as is), saved once and
    shared by every task and seed (the quantizer's own ``seed`` is a parameter, not the run's)."""

    kind = "base"
    uses = {"model": None}
    defaults = {"scheme": "kmeans", "bits": 32, "seed": 0}
    saved = True

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        from fewbits.methods.codebook import CodebookConfig

        check_method_config(cls.kind, lambda: CodebookConfig(scheme=params["scheme"]))  # whatever the bits
        if params["bits"] != 32:  # 32: the full-precision base, saved as it is
            check_method_config(cls.kind, lambda: CodebookConfig(scheme=params["scheme"], bits=params["bits"]))

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import fewbits
        from fewbits.models import load_model, save_model

        p = ctx.params
        model, tokenizer = load_model(ctx.config["model"], num_labels=2)
        record: dict[str, Any] = {"bits": p["bits"]}
        directory = ctx.out_dir / BASE_DIR
        if p["bits"] == 32:
            if ctx.is_main:
                save_model(model, directory, tokenizer=tokenizer)
        else:
            reports = fewbits.compress(model, p["scheme"], p["bits"], seed=p["seed"])
            squared = sum(r.squared_error for r in reports)
            energy = sum(r.squared_error / r.relative_error for r in reports if r.relative_error > 0)
            record["relative_error"] = squared / energy if energy > 0 else 0.0
            if ctx.is_main:
                fewbits.save(model, directory, tokenizer=tokenizer)
        if ctx.is_main:
            record["sizes"] = {"base_bytes": _bytes(directory)}
        return record


def _mask_config(params: dict[str, Any]) -> Any:
    """The stage's settings as the mask method's MaskConfig (validated there; 0 means None for the optional ones)."""
    from fewbits.methods.mask import MaskConfig

    return MaskConfig(score_lr=params["score_lr"], margin=params["margin"], init_sparsity=params["init_sparsity"],
                      sparsity=params["sparsity"] or None, head_lr=params["head_lr"] or None)


class Mask(Stage):
    """Learn the task's mask over the frozen shared base (scores at ``score_lr``, head at ``head_lr`` or the
    training lr): the mask protocol (``fewbits.protocols.mask.run_mask``) and its record."""

    kind = "mask"
    uses = {"task": None, "seed": 0}
    # sparsity 0: free (the scores decide); > 0: that exact fraction removed per layer. head_lr 0: the training lr.
    defaults = {**TRAIN_DEFAULTS, "score_lr": 3e-4, "margin": 1e-2, "init_sparsity": 0.0, "sparsity": 0.0,
                "head_lr": 0.0}

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        check_train(cls.kind, params)
        if "base" not in config["pipeline"]:
            raise bad_param("pipeline", "a 'base' stage before 'mask'", config["pipeline"], cls.kind)
        check_method_config(cls.kind, lambda: _mask_config(params))

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from fewbits.protocols.mask import load_base, run_mask

        task = load_task(ctx)
        base = load_base(ctx.outputs["base"].dir / BASE_DIR, task, seed=ctx.config.get("seed", 0))
        out, directory = ctx.out_dir / "train", ctx.out_dir / "mask"
        record = run_mask(base, task, _mask_config(ctx.params), train_config(ctx, out),
                          out_dir=directory if ctx.is_main else None)
        drop_checkpoints(out)
        if ctx.is_main and not ctx.env.get("keep_artifacts"):
            shutil.rmtree(directory)
        ctx.state.update(model=base.model, tokenizer=base.tokenizer, task=task)
        return record.to_dict()
