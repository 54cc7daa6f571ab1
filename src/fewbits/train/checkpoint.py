"""Checkpoints and the metrics log of a training run, written so that a kill at any moment loses nothing.

Layout under ``out_dir``::

    checkpoints/step-00000120/model.safetensors   the model's state (safetensors, shared tensors handled)
    checkpoints/step-00000120/trainer_state.pt    optimizer, scheduler, step, RNG states (weights_only-safe)
    checkpoints/checkpoints.json                  {"last": "step-00000120", "best": "step-00000080", ...}
    metrics.jsonl                                 one JSON object per line: train and eval records

A checkpoint directory is written under a temporary name and renamed when complete; only then does
``checkpoints.json`` (itself replaced atomically) point to it. A reader therefore always finds either the
previous or the new checkpoint, never a half-written one. Directories no pointer names are deleted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewbits._util.fs import write_text_atomic
from fewbits.errors import FewbitsValueError

POINTER, MODEL_FILE, STATE_FILE, LOG_FILE = "checkpoints.json", "model.safetensors", "trainer_state.pt", "metrics.jsonl"


# --- RNG states, as tensors and plain numbers so that torch.load(weights_only=True) reads them -------------

def rng_state() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's global generators (CUDA too when present)."""
    version, keys, gauss = random.getstate()
    name, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["keys"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- checkpoints --------------------------------------------------------------------------------------------

def checkpoint_root(out_dir: str | os.PathLike) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(out_dir) / "checkpoints"


def read_pointer(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The content of ``checkpoints.json`` ({} when the run has no checkpoint yet)."""
    path = checkpoint_root(out_dir) / POINTER
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # cannot happen through write_text_atomic; a hand-edited file can
        raise FewbitsValueError(f"{path} is not valid JSON ({exc}); delete {checkpoint_root(out_dir)} "
                                f"to start the run over.") from exc


def save_checkpoint(out_dir: str | os.PathLike, step: int, model: nn.Module, state: dict[str, Any],
                    *, best: bool) -> Path:
    """Write the checkpoint of ``step`` (model weights + trainer ``state``), then point 'last' (and 'best') to it."""
    from safetensors.torch import save_model

    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)}, force_contiguous=True)
    torch.save(state, tmp / STATE_FILE)
    final = root / name
    if final.exists():  # left by a run killed between the rename and the pointer update: never pointed to
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer = read_pointer(out_dir)
    pointer["last"] = name
    if best or "best" not in pointer:
        pointer["best"] = name
    write_text_atomic(root / POINTER, json.dumps(pointer, indent=2))
    for stale in root.iterdir():  # unreferenced checkpoints and temporary folders of killed writes
        if stale.is_dir() and stale.name not in (pointer["last"], pointer["best"]):
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | os.PathLike, which: str = "last") -> Path | None:
    """The directory of the 'last' (or 'best') checkpoint of a run, or None when there is none."""
    name = read_pointer(out_dir).get(which)
    return checkpoint_root(out_dir) / name if name else None


def load_weights(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load a checkpoint's weights into ``model`` in place (strict: every tensor must match)."""
    from safetensors.torch import load_model

    path = Path(checkpoint) / MODEL_FILE
    if not path.is_file():
        raise FewbitsValueError(f"No {MODEL_FILE} in checkpoint {str(checkpoint)!r}; give a folder under "
                                f"<out_dir>/checkpoints/.")
    try:
        load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
    except RuntimeError as exc:
        raise FewbitsValueError(f"Checkpoint {str(checkpoint)!r} does not fit this model "
                                f"({str(exc).splitlines()[0]}); load it into the model it was trained from.") from exc


def load_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The trainer state of a checkpoint, read with ``weights_only=True`` (no pickled code runs)."""
    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)


# --- metrics log --------------------------------------------------------------------------------------------

class MetricsLog:
    """Appends one JSON line per record to ``metrics.jsonl``; on resume, drops records after the checkpoint."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / LOG_FILE

    def records(self) -> list[dict[str, Any]]:
        """Every complete record in the log (a line cut short by a kill is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def restart(self, keep_until_step: int | None) -> None:
        """Keep the records up to ``keep_until_step`` (None: none) and rewrite the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [] if keep_until_step is None else [r for r in self.records() if r.get("step", 0) <= keep_until_step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        """Append one record with a single ``write`` on an O_APPEND file."""
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
