"""What every training stage shares (TrainConfig from parameters, task loading, evaluation),
and the ``finetune`` stage that starts every pipeline."""

from __future__ import annotations

import shutil
from typing import Any

from fewbits.errors import bad_param
from fewbits.experiments.base import Stage, StageContext

# Parameters of every training stage (the fields of fewbits.train.TrainConfig that change the numbers).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 3,  # passes over the training split
    "batch_size": 32,  # examples per optimizer step
    "lr": 5e-5,  # peak learning rate (linear warm-up, then linear decay)
    "weight_decay": 0.01,  # AdamW decay on weight matrices
    "warmup_ratio": 0.1,  # fraction of the steps spent warming up
    "max_grad_norm": 1.0,  # gradient-norm clip (0: none)
    "max_steps": 0,  # stop after this many steps (0: run every epoch)
    "max_length": 128,  # tokens per text input
}


def check_train(kind: str, params: dict[str, Any]) -> None:
    """Validate the training parameters of a stage (the same rules as TrainConfig, named after the stage)."""
    for name in ("batch_size", "max_length"):
        if params[name] < 1:
            raise bad_param(f"{kind}.{name}", "an int >= 1", params[name], kind)
    for name in ("epochs", "max_steps"):
        if params[name] < 0:
            raise bad_param(f"{kind}.{name}", "an int >= 0", params[name], kind)
    if not params["lr"] > 0:
        raise bad_param(f"{kind}.lr", "a number > 0", params["lr"], kind)
    if not 0 <= params["warmup_ratio"] < 1:
        raise bad_param(f"{kind}.warmup_ratio", "a number in [0, 1)", params["warmup_ratio"], kind)
    for name in ("weight_decay", "max_grad_norm"):
        if params[name] < 0:
            raise bad_param(f"{kind}.{name}", "a number >= 0", params[name], kind)


def check_method_config(kind: str, make: Any) -> Any:
    """Build a method's config with ``make()`` so that its own validation (one place) checks the stage's
    settings; its error is re-raised naming the stage."""
    from fewbits.errors import FewbitsError

    try:
        return make()
    except FewbitsError as exc:
        raise type(exc)(f"Stage {kind!r}: {exc}") from None


def train_config(ctx: StageContext, out_dir: Any, **override: Any) -> Any:
    """The TrainConfig of a stage: its parameters, the run's seed, the environment; resumable in ``out_dir``."""
    from fewbits.train import TrainConfig

    p = {**ctx.params, **override}
    return TrainConfig(epochs=max(1, p["epochs"]), batch_size=p["batch_size"], lr=p["lr"],
                       weight_decay=p["weight_decay"], warmup_ratio=p["warmup_ratio"],
                       max_grad_norm=p["max_grad_norm"] or None, seed=ctx.config.get("seed", 0),
                       max_length=p["max_length"], max_steps=p["max_steps"] or None, out_dir=out_dir,
                       resume=True, eval_batch_size=ctx.env["eval_batch_size"], num_workers=ctx.env["num_workers"],
                       progress=bool(ctx.env["progress"]))


def load_task(ctx: StageContext) -> Any:
    """The run's task, loaded once per sweep process."""
    from fewbits.data import load_task as load

    name, data_dir = ctx.config["task"], ctx.data_dir
    return ctx.cached(("task", name, data_dir), lambda: load(name, data_dir))


def seeded_model(ctx: StageContext, source: Any, task: Any, **kw: Any) -> tuple[Any, Any]:
    """``load_model(source, task)`` after seeding torch with the run's seed (a new head is drawn from it)."""
    import torch

    from fewbits.models import load_model

    torch.manual_seed(ctx.config.get("seed", 0))
    return load_model(source, task, **kw)


def evaluate_all(model: Any, task: Any, tokenizer: Any, ctx: StageContext,
                 metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """Metrics on the task's evaluation split (``metrics`` when the caller has them for this very model, e.g.
    from the training loop's last evaluation), plus ``metrics_<split>`` for its other dev splits (MNLI-mm)."""
    from fewbits.train import evaluate

    kw = {"tokenizer": tokenizer, "batch_size": ctx.env["eval_batch_size"],
          "max_length": ctx.params.get("max_length", 128)}
    record: dict[str, Any] = {"split": task.eval_split, "main_metric": task.main_metric,
                              "metrics": metrics if metrics else evaluate(model, task, **kw)}
    for split in task.splits:
        if split.startswith("dev") and split != task.eval_split:
            record[f"metrics_{split}"] = evaluate(model, task, split, **kw)
    return record


def drop_checkpoints(out_dir: Any) -> None:
    """Delete a finished training's checkpoints (its metrics.jsonl stays): a run folder keeps records, not weights."""
    from fewbits.train.checkpoint import checkpoint_root

    shutil.rmtree(checkpoint_root(out_dir), ignore_errors=True)


def train_record(result: Any, task: Any) -> dict[str, Any]:
    """What a stage keeps of a TrainResult (its metrics are the last evaluation's, on the task's eval split)."""
    return {"metrics": result.metrics, "main_metric": task.main_metric, "split": task.eval_split,
            "best_metric": result.best_metric, "best_step": result.best_step, "steps": result.step,
            "train_examples_per_s": result.train_examples_per_s}


class Finetune(Stage):
    """Fine-tune (or train from scratch: built-in models) the full-precision model; saved for reuse.

    ``epochs = 0`` keeps the loaded model as is (only evaluated). Hands ``model``/``tokenizer``/``task`` on.
    """

    kind = "finetune"
    uses = {"model": None, "task": None, "seed": 0}
    defaults = dict(TRAIN_DEFAULTS)
    saved = True

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        check_train(cls.kind, params)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from fewbits.models import save_model
        from fewbits.protocols.common import prior_metrics
        from fewbits.train import train

        task = load_task(ctx)
        model, tokenizer = seeded_model(ctx, ctx.config["model"], task)
        record: dict[str, Any] = {"prior_metrics": prior_metrics(task)}
        if ctx.params["epochs"] > 0:
            result = train(model, task, train_config(ctx, ctx.out_dir / "train"), tokenizer=tokenizer)
            record.update(train_record(result, task))
        record.update(evaluate_all(model, task, tokenizer, ctx, record.get("metrics")))
        if ctx.is_main:
            save_model(model, ctx.out_dir / "model", tokenizer=tokenizer)
            drop_checkpoints(ctx.out_dir / "train")
        ctx.state.update(model=model, tokenizer=tokenizer, task=task)
        return record


def finetuned(ctx: StageContext) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, task)`` handed on by the previous stage, else loaded from the ``finetune`` folder."""
    if "model" in ctx.state:
        return ctx.state["model"], ctx.state["tokenizer"], ctx.state["task"]
    task = load_task(ctx)
    model, tokenizer = seeded_model(ctx, ctx.outputs["finetune"].dir / "model", task, new_head=False)
    return model, tokenizer, task

