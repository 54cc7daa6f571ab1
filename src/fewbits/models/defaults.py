"""Per-model training defaults: what the commands use for settings left out, by model family and protocol.

Family: a built-in model's name (``cnn1d``, ``resnet18``), else ``hf`` (Hugging Face text models).
``finetune``: full-precision fine-tuning (``fewbits finetune``, and the FP32 step of ``fewbits quantize``);
``qat``: the two QAT phases (``ste_epochs`` for the STE phase, ``epochs`` for the second).
"""

from __future__ import annotations

from typing import Any

TRAINING_DEFAULTS: dict[str, dict[str, dict[str, float | int]]] = {
    "finetune": {
        "hf": {"lr": 5e-5, "epochs": 3, "batch_size": 32},
        "cnn1d": {"lr": 3e-3, "epochs": 10, "batch_size": 64},
        "resnet18": {"lr": 1e-3, "epochs": 30, "batch_size": 128},
    },
    "qat": {
        "hf": {"lr": 1e-4, "ste_epochs": 3, "epochs": 2, "batch_size": 32},
        "cnn1d": {"lr": 1e-3, "ste_epochs": 10, "epochs": 10, "batch_size": 64},
        "resnet18": {"lr": 1e-3, "ste_epochs": 30, "epochs": 10, "batch_size": 128},
    },
}


def family(model: Any) -> str:
    """A model's family: the built-in name it was built under (``model.fewbits_spec``), or a name string, else ``hf``."""
    name = model if isinstance(model, str) else getattr(model, "fewbits_spec", {}).get("fewbits_model", "hf")
    return name if name in TRAINING_DEFAULTS["finetune"] else "hf"


def training_defaults(model: Any, protocol: str = "finetune") -> dict[str, float | int]:
    """The defaults of ``protocol`` for ``model`` (a model or a family name), e.g. ``{"lr": 3e-3, ...}``."""
    return dict(TRAINING_DEFAULTS[protocol][family(model)])
