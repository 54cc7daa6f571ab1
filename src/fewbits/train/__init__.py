"""Training: one loop (:func:`train`), evaluation with the task's metrics (:func:`evaluate`), checkpoints.

Example::

    task = load_task("vader")
    model, tokenizer = load_model("minilm", task)
    result = train(model, task, TrainConfig(epochs=2, out_dir="runs/vader"), tokenizer=tokenizer)
    print(result.metrics)  # e.g. {'accuracy': 0.95}
"""

from __future__ import annotations

from fewbits.train.checkpoint import latest_checkpoint, load_trainer_state, load_weights
from fewbits.train.loop import TrainConfig, TrainResult, evaluate, task_loss, train

__all__ = ["TrainConfig", "TrainResult", "evaluate", "latest_checkpoint", "load_trainer_state", "load_weights",
           "task_loss", "train"]
