"""A toy signal task and a tiny MLP, shared by the training tests and run as a script by the ones that need
their own processes (SIGKILL + resume, 2-process DDP under torchrun).

As a script: ``python train_toy.py OUT_DIR [--resume] [--dropout P] [--sleep S] [--save-every N]`` trains on the
toy task and writes ``OUT_DIR/final.safetensors`` (the final parameters) and ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fewbits.data.base import SignalExample, Task, TextExample


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((predictions == labels).mean())}


def signal_task(n_train: int = 192, n_dev: int = 96, length: int = 16, classes: int = 3, noise: float = 1.0,
                seed: int = 0, unlabeled_test: bool = False) -> Task:
    """Noisy copies of one random template per class: learnable, but not in one step."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(classes, length)).astype(np.float32)

    def draw(n: int, labeled: bool = True) -> list[SignalExample]:
        ys = rng.integers(0, classes, size=n)
        xs = templates[ys] + noise * rng.normal(size=(n, length)).astype(np.float32)
        return [SignalExample(signal=x.astype(np.float32), label=int(y) if labeled else None) for x, y in zip(xs, ys)]

    splits = {"train": draw(n_train), "dev": draw(n_dev)}
    if unlabeled_test:
        splits["test"] = draw(16, labeled=False)
    return Task(name="toy", kind="signal", num_labels=classes, splits=splits, metric_fn=accuracy,
                main_metric="accuracy")


def text_task(n_train: int = 64, n_dev: int = 32, seed: int = 0) -> Task:
    """Words made of a-e are class 0, words made of v-z class 1 (tiny-bert's tokenizer splits them into letters)."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> list[TextExample]:
        out = []
        for _ in range(n):
            label = int(rng.integers(0, 2))
            letters = "abcde" if label == 0 else "vwxyz"
            out.append(TextExample("".join(rng.choice(list(letters), size=4)), None, label))
        return out

    return Task(name="toy-text", kind="text", num_labels=2, splits={"train": draw(n_train), "dev": draw(n_dev)},
                metric_fn=accuracy, main_metric="accuracy")


class TinyNet(nn.Module):
    """(N, 1, L) or (N, L) signals -> (N, classes) logits through one hidden layer (with optional dropout)."""

    def __init__(self, length: int = 16, classes: int = 3, hidden: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(length, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x.flatten(1)))))


def make_model(dropout: float = 0.0, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(dropout=dropout)


def main(argv: list[str]) -> None:
    from safetensors.torch import save_file

    from fewbits.train import TrainConfig, train

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--save-every", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = make_model(args.dropout)
    config = TrainConfig(epochs=args.epochs, batch_size=16, lr=1e-2, seed=3, out_dir=args.out, resume=args.resume,
                         save_every=args.save_every, log_every=5, progress=False)
    hooks = [lambda m, o, s: time.sleep(args.sleep)] if args.sleep else []
    result = train(model, signal_task(), config, after_step=hooks)
    if not (torch.distributed.is_initialized() and torch.distributed.get_rank()):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(args.out) / "final.safetensors"))
        (Path(args.out) / "result.json").write_text(json.dumps({"step": result.step, "metrics": result.metrics}))


if __name__ == "__main__":
    main(sys.argv[1:])
