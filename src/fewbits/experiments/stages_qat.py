"""P2's stages: STE training to a first minimum (shared), a second phase per regularizer, and flatness.

Protocol (Kadambi et al.): STE with W-bit weights and A-bit activations to theta*; then, from that same
checkpoint, more epochs with no regularizer (``ste``), ``msqe``, ``fisher`` (Adam's v_hat frozen at the end
of the STE phase, applied decoupled) or ``kd`` (the FP32 model as teacher at temperature T); then the
fitted-paraboloid Hessian trace of the loss surface along filter-normalized random directions.
"""

from __future__ import annotations

from typing import Any

from fewbits.errors import bad_param
from fewbits.experiments.base import Stage, StageContext
from fewbits.experiments.stages_common import (TRAIN_DEFAULTS, check_method_config, check_train, drop_checkpoints,
                                               load_task, seeded_model, train_config)

QAT_TRAIN_DEFAULTS = {**TRAIN_DEFAULTS, "lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "batch_size": 64,
                      "epochs": 10}


class STE(Stage):
    """STE quantization-aware training at ``wbits``/``abits`` from the fine-tuned FP32 model (``init =
    "finetune"``) or from scratch; saved with its checkpoint and Fisher estimate for every second phase."""

    kind = "ste"
    uses = {"model": None, "task": None, "seed": 0}
    defaults = {**QAT_TRAIN_DEFAULTS, "wbits": 2, "abits": 32, "init": "finetune", "per_channel": True,
                "symmetric": True, "keep_first_last": True, "bias_correction": True}
    saved = True

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        check_train(cls.kind, params)
        check_method_config(cls.kind, lambda: _qat_config(params))
        if params["init"] not in ("finetune", "scratch"):
            raise bad_param("ste.init", "'finetune' or 'scratch'", params["init"], cls.kind)
        if params["init"] == "finetune" and "finetune" not in config["pipeline"]:
            raise bad_param("pipeline", "a 'finetune' stage before 'ste' (or ste.init = 'scratch')",
                            config["pipeline"], cls.kind)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from fewbits.protocols.qat import ste_phase

        p = ctx.params
        task = load_task(ctx)
        if p["init"] == "finetune":
            source = ctx.outputs["finetune"].dir / "model"
            model, tokenizer = seeded_model(ctx, source, task, new_head=False)
        else:
            model, tokenizer = seeded_model(ctx, ctx.config["model"], task)
        return ste_phase(model, task, train_config(ctx, ctx.out_dir), _qat_config(p), tokenizer=tokenizer,
                         bias_correction=p["bias_correction"]).to_dict()


def _qat_config(params: dict[str, Any]) -> Any:
    """The stage's settings as the QAT method's QATConfig (validated there)."""
    from fewbits.methods.qat import QATConfig

    return QATConfig(wbits=params["wbits"], abits=params["abits"], per_channel=params["per_channel"],
                     symmetric=params["symmetric"], keep_first_last=params["keep_first_last"])


def load_ste(ctx: StageContext) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """``(model, tokenizer, task, spec, fisher)``: a fresh model with the shared STE checkpoint loaded."""
    from fewbits.protocols.qat import load_ste_checkpoint

    task = load_task(ctx)
    model, tokenizer = seeded_model(ctx, ctx.config["model"], task)
    spec, fisher = load_ste_checkpoint(model, ctx.outputs["ste"].dir)
    return model, tokenizer, task, spec, fisher


def _regularizer(params: dict[str, Any]) -> Any:
    """The stage's settings as the QAT method's RegularizerConfig (validated there)."""
    from fewbits.methods.qat import RegularizerConfig

    return RegularizerConfig(method=params["method"], lam=params["lam"], temperature=params["temperature"],
                             t2_scaling=params["t2_scaling"], fisher=params["fisher"],
                             fisher_normalize=params["fisher_normalize"])


class Regularize(Stage):
    """P2's second phase from the shared STE checkpoint with ``method`` (ste, msqe, fisher, kd); records the
    metrics and the exported W-bit artifact's size."""

    kind = "regularize"
    defaults = {**QAT_TRAIN_DEFAULTS, "method": "ste", "lam": 1.0, "temperature": 4.0, "t2_scaling": True,
                "fisher": "adam", "fisher_normalize": False}

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        check_train(cls.kind, params)
        check_method_config(cls.kind, lambda: _regularizer(params))
        if "ste" not in config["pipeline"] or (params["method"] == "kd" and "finetune" not in config["pipeline"]):
            raise bad_param("pipeline", "an 'ste' stage before 'regularize' (and 'finetune' for the kd teacher)",
                            config["pipeline"], cls.kind)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import shutil

        from fewbits.models import load_model
        from fewbits.protocols.qat import second_phase

        p = ctx.params
        task = load_task(ctx)
        model, tokenizer = seeded_model(ctx, ctx.config["model"], task)
        teacher = None
        if p["method"] == "kd":
            teacher, _ = load_model(ctx.outputs["finetune"].dir / "model", task, new_head=False)
        out, artifact = ctx.out_dir / "train", ctx.out_dir / "artifact"
        record = second_phase(model, task, train_config(ctx, out), ctx.outputs["ste"].dir, _regularizer(p),
                              teacher=teacher, tokenizer=tokenizer, export_dir=artifact if ctx.is_main else None)
        drop_checkpoints(out)
        if ctx.is_main and not ctx.env.get("keep_artifacts"):
            shutil.rmtree(artifact)
        ctx.state.update(model=model, tokenizer=tokenizer, task=task)
        return record.to_dict()


class Landscape(Stage):
    """Flatness of the final model: a paraboloid fitted to the loss over a ``grid`` x ``grid`` square along each
    of ``pairs`` filter-normalized random direction pairs (normalized against the shared STE model when
    ``reference = "ste"``, so every method of one STE checkpoint is probed along the same directions), over
    the first ``eval_size`` evaluation examples; optionally Hutchinson's estimate of the full Hessian trace."""

    kind = "landscape"
    defaults = {"pairs": 10, "grid": 11, "span": 1.0, "eval_size": 500, "batch_size": 256, "radius": 0.0,
                "max_loss": 0.0, "directions_seed": 0, "reference": "ste", "hutchinson_probes": 0, "max_length": 128}

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        for name in ("pairs", "batch_size", "eval_size"):
            if params[name] < 1:
                raise bad_param(f"landscape.{name}", "an int >= 1", params[name], cls.kind)
        if params["grid"] < 3:
            raise bad_param("landscape.grid", "an int >= 3", params["grid"], cls.kind)
        if params["reference"] not in ("ste", "self"):
            raise bad_param("landscape.reference", "'ste' or 'self'", params["reference"], cls.kind)
        if params["reference"] == "ste" and "ste" not in config["pipeline"]:
            raise bad_param("landscape.reference", "'self' without an 'ste' stage", "ste", cls.kind)
        if params["hutchinson_probes"] == 1 or params["hutchinson_probes"] < 0:
            raise bad_param("landscape.hutchinson_probes", "0 (skip) or an int >= 2", params["hutchinson_probes"],
                            cls.kind)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from fewbits.analysis import direction_pairs, evaluate, hutchinson_trace, landscape
        from fewbits.data import make_collate

        p = ctx.params
        model, tokenizer, task = ctx.state["model"], ctx.state["tokenizer"], ctx.state["task"]
        if p["reference"] == "ste":  # one slot, not one per STE checkpoint: directions are model-sized
            key = (ctx.outputs["ste"].key, p["pairs"], p["directions_seed"])
            held = ctx.cache.get("landscape_directions")
            if held is None or held[0] != key:
                held = (key, direction_pairs(load_ste(ctx)[0], p["pairs"], p["directions_seed"]))
                ctx.cache["landscape_directions"] = held
            directions = held[1]
        else:
            directions = direction_pairs(model, p["pairs"], p["directions_seed"])
        examples = task.splits[task.eval_split]
        n = min(p["eval_size"], len(examples))
        collate = make_collate(task, tokenizer, max_length=p["max_length"])
        batches = [collate([examples[i] for i in range(s, min(s + p["batch_size"], n))])
                   for s in range(0, n, p["batch_size"])]
        centre = evaluate(model, batches)
        found = landscape(model, batches, directions=directions, grid=p["grid"], span=p["span"],
                          radius=p["radius"] or None, max_loss=p["max_loss"] or None)
        record: dict[str, Any] = {
            "examples": n, "centre": {"loss": centre.loss, "accuracy": centre.accuracy},
            "hessian": {"trace": found.summary["trace"], "determinant": found.summary["determinant"],
                        "r2": found.summary["r2"], "dropped": found.summary["dropped"],
                        "traces": [f.trace for f in found.fits], "exact_trace": found.summary["exact_trace"],
                        "exact_traces": [float(h[0, 0] + h[1, 1]) for h in found.exact]}}
        if p["hutchinson_probes"]:
            estimate = hutchinson_trace(model, batches, max_probes=p["hutchinson_probes"],
                                        min_probes=min(10, p["hutchinson_probes"]), seed=p["directions_seed"])
            record["hutchinson"] = {"trace": estimate.trace, "standard_error": estimate.standard_error,
                                    "probes": estimate.probes}
        return record
