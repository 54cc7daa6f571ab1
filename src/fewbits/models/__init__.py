"""Models: Hugging Face sequence classifiers (offline MiniLM default), ResNet-18 (CIFAR form), a 1-D CNN.

``load_model(name_or_dir, task)`` returns ``(model, tokenizer_or_None)``; ``save_model(model, dir)`` writes a
directory that ``load_model`` reads back. Built-in models are plain ``nn.Module``s whose ``forward(x)``
returns logits; Hugging Face models return outputs with ``.logits``; ``logits_of`` reads either.
Nothing is pickled: weights are safetensors, configs are JSON.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fewbits._util.fs import atomic_write
from fewbits.errors import FewbitsTypeError, FewbitsValueError, bad_param
from fewbits.nn.forward import forward_batch, logits_of
from fewbits.models.cnn1d import CNN1d
from fewbits.models.hf import MINILM_ALIASES, load_hf, meta_init_skipped, minilm_path, quiet_transformers, tiny_bert
from fewbits.models.resnet import ResNet18
from fewbits.models.resnet_small import ResNet8

if TYPE_CHECKING:
    from fewbits.data.base import Task

__all__ = ["BUILTIN_MODELS", "CNN1d", "ResNet8", "ResNet18", "build_model", "forward_batch", "load_model",
           "logits_of", "model_names", "rebuild", "save_model"]

# Built-in models by name; their constructor keyword arguments are what config.json stores as "args".
BUILTIN_MODELS: dict[str, type[nn.Module]] = {"resnet18": ResNet18, "resnet8": ResNet8, "cnn1d": CNN1d}

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# an artifact's manifest, and the folders of a run that hold one (fewbits quantize: artifact, fewbits qat: model)
ARTIFACT_MANIFEST, RUN_FOLDERS = "fewbits.json", ("artifact", "model")


def model_names() -> list[str]:
    """Every name ``load_model`` accepts besides directories and hub ids."""
    return [MINILM_ALIASES[0], "tiny-bert", *BUILTIN_MODELS]


def build_model(name: str, **args: Any) -> nn.Module:
    """A freshly initialized built-in model (torch's global RNG draws the weights), e.g. ``build_model("cnn1d")``.

    The name and ``args`` are recorded on the model (``model.fewbits_spec``) so that ``save_model`` can
    write them and ``load_model`` can rebuild the same architecture.
    """
    if name not in BUILTIN_MODELS:
        raise bad_param("name", f"one of {sorted(BUILTIN_MODELS)}", name, "build_model")
    cls = BUILTIN_MODELS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise bad_param("args", f"keyword arguments of {name} among {sorted(accepted)}", unknown, "build_model")
    model = cls(**args)
    model.fewbits_spec = {"fewbits_model": name, "args": dict(args)}
    return model


def save_model(model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Save ``model`` (and its tokenizer) into ``directory`` so that ``load_model(directory)`` rebuilds it.

    Hugging Face models use ``save_pretrained`` (safetensors); built-ins write ``config.json``
    (``{"fewbits_model": name, "args": {...}}``) and ``model.safetensors``. Returns the directory.
    """
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper holds the model in .module
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        with quiet_transformers():
            model.save_pretrained(out)
    elif hasattr(model, "fewbits_spec"):
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        atomic_write(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(model.fewbits_spec, indent=2)))
    else:
        raise FewbitsTypeError(
            f"The 'model' parameter of save_model must be a Hugging Face model or a built-in model made by "
            f"build_model/load_model ({sorted(BUILTIN_MODELS)}). Got {type(model).__name__} instead.")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _load_builtin_dir(directory: Path, spec: dict[str, Any], num_labels: int | None) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name, args = spec.get("fewbits_model"), spec.get("args", {})
    if name not in BUILTIN_MODELS or not isinstance(args, dict):
        raise FewbitsValueError(f"{directory / CONFIG_FILE} names an unknown built-in model {name!r} "
                                f"(known: {sorted(BUILTIN_MODELS)}); re-save the model with save_model.")
    model = build_model(name, **args)
    if num_labels is not None and model.fc.out_features != num_labels:
        raise FewbitsValueError(f"The model in {directory} has {model.fc.out_features} classes but the task has "
                                f"{num_labels}; give a model fine-tuned on this task.")
    try:
        state = load_file(directory / WEIGHTS_FILE)
        model.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise FewbitsValueError(f"Could not read the weights of {directory}: {str(exc).splitlines()[0]}. "
                                f"Re-save the model with save_model or fewbits finetune.") from exc
    return model


def load_model(name_or_dir: str | os.PathLike = "minilm", task: Task | None = None, *,
               num_labels: int | None = None, new_head: bool = True, **kw: Any) -> tuple[nn.Module, Any]:
    """Load a model by name, directory or hub id; returns ``(model, tokenizer)`` (tokenizer None for built-ins).

    Names: ``minilm`` (all-MiniLM-L6-v2, offline), ``tiny-bert`` (2-layer BERT, hidden 32, for tests),
    ``resnet18``, ``resnet8`` (a small residual CNN for 28x28 grey images), ``cnn1d``. A directory written by
    ``save_model`` (or any Hugging Face model directory) is read back (a fewbits artifact is refused:
    ``fewbits.loading.load_any`` reads both); any other string is tried as a Hugging Face hub id. The
    classification head gets ``num_labels`` (default: the task's; 1 means regression). ``new_head=False``
    refuses a model whose head is missing or of another size, or freshly initialized (for evaluation); ``kw``
    go to the built-in constructor.

    Example: ``model, tokenizer = load_model("minilm", load_task("vader"))``.
    """
    if num_labels is None and task is not None:
        num_labels = task.num_labels
    label_names = getattr(task, "label_names", None)
    name = str(name_or_dir)
    path = Path(name).expanduser()
    model, tokenizer = _load(name, path, num_labels, label_names, new_head, kw)
    if task is not None and (task.kind == "text") != (tokenizer is not None):
        wanted = "a text model (minilm, tiny-bert, a Hugging Face model)" if task.kind == "text" else \
            "a built-in model for images or signals (resnet18, cnn1d)"
        raise FewbitsValueError(f"Model {name!r} does not fit task {task.name!r}, whose inputs are "
                                f"{task.kind}s; give {wanted}.")
    return model, tokenizer


def _load(name: str, path: Path, num_labels: int | None, label_names: list[str] | None, new_head: bool,
          kw: dict[str, Any]) -> tuple[nn.Module, Any]:
    if name.lower() in MINILM_ALIASES and not path.exists():
        _no_kwargs(kw, name)
        return load_hf(minilm_path(), num_labels=num_labels, label_names=label_names, local=True, new_head=new_head,
                       shown=name)
    if name in ("tiny-bert", *BUILTIN_MODELS) and not path.exists() and not new_head:
        raise FewbitsValueError(f"Model {name!r} is freshly initialized, so it has no trained classification head; "
                                f"fine-tune it first (fewbits finetune --model {name} --out DIR) and give DIR.")
    if name == "tiny-bert" and not path.exists():
        return tiny_bert(num_labels if num_labels is not None else 2, label_names, **kw)
    if name in BUILTIN_MODELS and not path.exists():
        if num_labels is not None:
            kw.setdefault("num_classes", num_labels)
        return build_model(name, **kw), None
    if path.exists():
        if not path.is_dir():
            raise FewbitsValueError(f"Model {name!r} is a file, not a model directory; give the directory that "
                                    f"holds config.json (written by fewbits finetune or save_model).")
        if (path / ARTIFACT_MANIFEST).is_file() or any((path / d / ARTIFACT_MANIFEST).is_file() for d in RUN_FOLDERS):
            raise FewbitsValueError(f"{name!r} is a fewbits artifact (or the run folder of one), not a plain model; "
                                    "load it with fewbits.load or fewbits.loading.load_any.")
        config = path / CONFIG_FILE
        if not config.is_file():
            raise FewbitsValueError(f"Directory {name!r} holds no model (no {CONFIG_FILE}); give a directory written "
                                    f"by fewbits finetune or save_model, or one of {model_names()}.")
        try:
            spec = json.loads(config.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FewbitsValueError(f"{config} is not valid JSON ({exc}); re-save the model.") from exc
        if isinstance(spec, dict) and "fewbits_model" in spec:
            _no_kwargs(kw, name)
            return _load_builtin_dir(path, spec, num_labels), None
        _no_kwargs(kw, name)
        return load_hf(path, num_labels=num_labels, label_names=label_names, local=True, new_head=new_head)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        raise FewbitsValueError(f"Model directory {name!r} does not exist; give an existing directory, a hub id "
                                f"or one of {model_names()}.")
    _no_kwargs(kw, name)
    return load_hf(name, num_labels=num_labels, label_names=label_names, local=False, new_head=new_head)


def _no_kwargs(kw: dict[str, Any], name: str) -> None:
    if kw:
        raise bad_param("kw", f"empty for {name!r} (only tiny-bert and built-in models take arguments)",
                        sorted(kw), "load_model")


def rebuild(recipe: Mapping[str, Any], config: Callable[[], dict[str, Any]], *, empty: bool = False) -> nn.Module:
    """A freshly initialized model from an artifact's base recipe (the global RNG is left untouched); with
    ``empty`` its skeleton only: parameters on the meta device (never initialised: the artifact fills
    them), buffers real.

    ``recipe``: ``{"kind": "builtin", "name", "args"}`` or ``{"kind": "transformers", "class"}`` whose
    config dict ``config()`` returns. Raises FewbitsValueError naming what cannot be built.
    """
    from accelerate import init_empty_weights

    skeleton = init_empty_weights(include_buffers=False) if empty else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), skeleton:
        if recipe["kind"] == "builtin":
            if recipe["name"] not in BUILTIN_MODELS:
                raise FewbitsValueError(f"unknown built-in model {recipe['name']!r} (known: {sorted(BUILTIN_MODELS)}); "
                                        "upgrade fewbits.")
            try:
                return build_model(recipe["name"], **recipe["args"])
            except (FewbitsValueError, TypeError) as exc:
                raise FewbitsValueError(f"cannot build {recipe['name']!r} with {recipe['args']}: {exc}") from exc
        import transformers  # deferred: only Hugging Face bases need it

        cls = getattr(transformers, recipe["class"], None)
        if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
            raise FewbitsValueError(f"{recipe['class']!r} is not a transformers model class of transformers "
                                    f"{transformers.__version__}.")
        with quiet_transformers(), meta_init_skipped():
            return cls(cls.config_class.from_dict(config()))
