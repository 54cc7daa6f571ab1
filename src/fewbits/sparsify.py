"""Fine-tuning by sparsification (P3): one frozen base shared by all tasks, one binary mask and head per task.

The protocol, base -> mask per task:

1. :func:`load_base`: the base model (a ``fewbits.save`` artifact, FP32 or quantized; a plain model
   directory; or ``minilm``) and its checksum; the task head is created fresh from ``seed``.
2. :func:`prepare`: a :class:`~fewbits.nn.mask.Mask` on every target weight (on top of any
   codebook); every parameter is frozen except the scores and the head.
3. :func:`train_mask`: the scores train at ``score_lr`` without weight decay (decay would pull
   every score towards the threshold and flip weights for no reason), the head at the usual rate;
   the kept fraction is recorded at the start and after every epoch (it is the first thing to
   watch: too high a score rate removes weights wholesale and the model falls to the label prior).
4. :func:`save_mask`: only the masks (bit-packed or entropy-coded, whichever is smaller) and the
   head, tied to the base by its checksum; :func:`load_mask` rebuilds the trained model bit for
   bit and refuses a mask trained on another base.

Example::

    base = load_base("minilm", task, seed=0)
    result = train_mask(base.model, task, MaskConfig(), TrainConfig(epochs=2), tokenizer=base.tokenizer)
    save_mask(base.model, "out/vader-mask", base, task=task)
    model, tokenizer = load_mask("minilm", "out/vader-mask")
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fewbits.errors import ArtifactError, FewbitsValueError, bad_param
from fewbits.io.mask_codec import read_mask_artifact, write_mask_artifact
from fewbits.nn.mask import apply_mask, kept_fraction, mask_modules, masks, set_masks
from fewbits.nn.targets import Patterns, head_names, select_targets

if TYPE_CHECKING:
    from fewbits.data.base import Task
    from fewbits.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class MaskConfig:
    """How a mask is learned (plain data). ``margin / score_lr`` is the number of Adam steps of
    consistent evidence a weight needs before it changes state; see :mod:`fewbits.nn.mask`."""

    score_lr: float = 3e-4  # Adam rate of the scores (the sensitive knob: watch the kept fraction)
    margin: float = 1e-2  # initial |score|: kept at +margin, removed at -margin, threshold 0
    init_sparsity: float = 0.0  # fraction of each layer removed at the start (smallest |w| first)
    sparsity: float | None = None  # exact fraction removed per layer at every step (top-k of scores)
    head_lr: float | None = None  # rate of the dense head (None: the TrainConfig's lr)
    targets: Patterns = None  # layers to mask (None: Embeddings and fully connected layers, not the head)
    exclude: Patterns = None  # layers never masked

    def check(self) -> MaskConfig:
        """Validate every field (the template error names the bad one); returns self."""
        for name in ("score_lr", "margin") + (("head_lr",) if self.head_lr is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise bad_param(name, "a finite number > 0", value, "MaskConfig")
        for name in ("init_sparsity",) + (("sparsity",) if self.sparsity is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise bad_param(name, "a number in [0, 1)", value, "MaskConfig")
        return self


@dataclass
class Base:
    """A loaded base: the model (with a fresh task head), its tokenizer, the checksum of its weights, its source."""

    model: nn.Module
    tokenizer: Any
    sha256: str
    source: str


@dataclass
class MaskResult:
    """What :func:`train_mask` did: the training result, the masked layers and the kept fraction per epoch.

    ``kept[0]`` is the kept fraction at the start, ``kept[e]`` after epoch ``e``.
    """

    train: TrainResult
    layers: list[str]
    kept: list[float] = field(default_factory=list)


def _fewbits_manifest(directory: Path) -> dict | None:
    """The manifest of a ``fewbits.save`` artifact in ``directory``, else None."""
    from fewbits.io.format import FORMAT, MANIFEST_FILE, read_manifest

    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        kind = None
    return read_manifest(directory) if kind == FORMAT else None


def _resolve(base: str | os.PathLike) -> Path:
    """The directory of a base: itself, or the offline MiniLM's for ``minilm``."""
    from fewbits.models.hf import MINILM_ALIASES, minilm_path

    path = Path(base).expanduser()
    if not path.exists() and str(base).lower() in MINILM_ALIASES:
        return minilm_path()
    if not path.is_dir():
        raise bad_param("base", "a base directory (fewbits.save artifact or model directory) or 'minilm'",
                        str(base), "fewbits mask")
    return path


def base_checksum(base: str | os.PathLike) -> str:
    """sha256 identifying a base's weights: a fewbits artifact's recorded tensor checksum, else the
    sha256 over the directory's weight files (``*.safetensors``, ``*.bin``, names and bytes, in name order)."""
    directory = _resolve(base)
    manifest = _fewbits_manifest(directory)
    if manifest is not None:
        return manifest["tensors"]["sha256"]
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ArtifactError(f"{directory}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) and no fewbits.json; "
                            "give a fewbits.save artifact or a model directory.")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def new_head(model: nn.Module, num_labels: int, label_names: list[str] | None = None, seed: int = 0) -> list[str]:
    """Give ``model`` a freshly initialised task head with ``num_labels`` outputs; returns the head's module names.

    The head's Linear layers that produce the logits are rebuilt at the new size, every head
    layer is re-initialised (Hugging Face: the model's own ``_init_weights``) from ``seed``
    without touching the global RNG, and a Hugging Face config gets the new labels.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise bad_param("num_labels", "a positive int", num_labels, "new_head")
    heads = head_names(model)
    if not heads:
        raise FewbitsValueError(f"new_head: {type(model).__name__} has no task head (a bare base model); load it "
                                "as a sequence classifier (fewbits.models.load_model).")
    modules = dict(model.named_modules())
    config = getattr(model, "config", None)
    old = getattr(config, "num_labels", None) if config is not None else modules[heads[-1]].weight.shape[0]
    init = getattr(model, "_init_weights", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in heads:
            module = modules[name]
            if isinstance(module, nn.Linear):
                out = num_labels if module.out_features == old else module.out_features
                fresh = nn.Linear(module.in_features, out, bias=module.bias is not None,
                                  device=module.weight.device, dtype=module.weight.dtype)
                if callable(init):
                    init(fresh)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, fresh)
            elif callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            else:
                raise FewbitsValueError(f"new_head: cannot re-initialise the head layer {name!r} "
                                        f"({type(module).__name__}).")
    if config is not None and hasattr(config, "num_labels"):
        config.num_labels = num_labels
        config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
        if label_names and len(label_names) == num_labels:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {n: i for i, n in enumerate(label_names)}
    return heads


def load_base(base: str | os.PathLike, task: Task | None = None, *, num_labels: int | None = None,
              label_names: list[str] | None = None, seed: int = 0) -> Base:
    """Load a base for mask training or mask loading, with a fresh head of the task's size.

    ``base``: a ``fewbits.save`` directory (FP32 or quantized: its codebooks arrive frozen once a
    mask is applied), a model directory (``save_model``, ``save_pretrained``), or ``minilm``.
    """
    from fewbits.io import load, load_tokenizer
    from fewbits.models import load_model

    if task is not None:
        num_labels = task.num_labels if num_labels is None else num_labels
        label_names = label_names or task.label_names
    if num_labels is None:
        raise bad_param("num_labels", "given (or a task)", None, "load_base")
    directory = _resolve(base)
    sha = base_checksum(directory)
    manifest = _fewbits_manifest(directory)
    if manifest is not None:
        model = load(directory)
        tokenizer = load_tokenizer(directory) if manifest["tokenizer_files"] else None
    else:
        model, tokenizer = load_model(directory, num_labels=num_labels, new_head=True)
    new_head(model, num_labels, label_names, seed)
    return Base(model.train(), tokenizer, sha, str(base))


def _head_keys(model: nn.Module) -> list[str]:
    heads = head_names(model)
    return [k for k in model.state_dict() if any(k.startswith(h + ".") for h in heads)]


def prepare(model: nn.Module, config: MaskConfig) -> list[str]:
    """Mask the target weights and freeze everything but the scores and the head; returns the masked layers."""
    config.check()
    heads = head_names(model)
    selected = select_targets(model, config.targets, config.exclude, owner="fewbits mask")
    in_head = [n for n in selected if any(n == h or n.startswith(h + ".") for h in heads)]
    if in_head:
        raise FewbitsValueError(f"fewbits mask: {in_head} belong to the task head, which trains dense; "
                                "remove them from 'targets'.")
    names = apply_mask(model, targets=selected, margin=config.margin, init_sparsity=config.init_sparsity,
                       sparsity=config.sparsity)
    scores = {id(m.scores) for _, m in mask_modules(model).values()}
    head_params = {id(p) for h in heads for p in model.get_submodule(h).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in scores or id(p) in head_params)
    return names


def train_mask(model: nn.Module, task: Task, config: MaskConfig, train_config: TrainConfig, *,
               tokenizer: Any = None, collate: Callable | None = None,
               on_epoch: Callable[[int, float], None] | None = None) -> MaskResult:
    """Learn a mask (and the head) for ``task`` over the frozen weights of ``model``, in place.

    ``model`` is prepared here unless it already carries masks. ``on_epoch(epoch, kept)`` is
    called after every epoch with the kept fraction (it is also logged).
    """
    from fewbits.train import train

    layers = list(mask_modules(model)) if mask_modules(model) else prepare(model, config)
    config.check()
    scores = list({id(m.scores): m.scores for _, m in mask_modules(model).values()}.values())
    groups: list[dict[str, Any]] = [{"name": "scores", "params": scores, "lr": config.score_lr, "weight_decay": 0.0}]
    if config.head_lr is not None:
        head = [p for h in head_names(model) for p in model.get_submodule(h).parameters() if p.requires_grad]
        groups.append({"name": "head", "params": head, "lr": config.head_lr})
    steps_per_epoch = len(task.splits["train"]) // train_config.batch_size
    total = train_config.epochs * steps_per_epoch
    if train_config.max_steps is not None:
        total = min(total, train_config.max_steps)
    kept = [kept_fraction(model)]
    log.info("mask: %d layers, kept fraction %.4f at the start", len(layers), kept[0])

    def record(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        if steps_per_epoch and (step % steps_per_epoch == 0 or step == total):
            kept.append(kept_fraction(model))
            epoch = math.ceil(step / steps_per_epoch)
            log.info("mask: epoch %d, kept fraction %.4f", epoch, kept[-1])
            if on_epoch is not None:
                on_epoch(epoch, kept[-1])

    result = train(model, task, train_config, tokenizer=tokenizer, param_groups=groups, after_step=[record],
                   collate=collate)
    return MaskResult(result, layers, kept)


def save_mask(model: nn.Module, directory: str | os.PathLike, base: Base, *, task: Task | None = None,
              info: dict[str, Any] | None = None) -> Path:
    """Write the task artifact: the masks and the head of ``model``, tied to ``base`` by its checksum."""
    found = mask_modules(model)
    if not found:
        raise bad_param("model", "a model carrying masks (fewbits.sparsify.prepare)", type(model).__name__, "save_mask")
    current = masks(model)
    tied: dict[str, list[str]] = {name: [] for name in current}
    owner = {id(m): name for name, (_, m) in found.items() if name in current}
    for name, (_, m) in found.items():
        if name not in current:
            tied[owner[id(m)]].append(name)
    head = {k: v for k, v in model.state_dict().items() if k in set(_head_keys(model))}
    config = getattr(model, "config", None)
    task_info = {"name": task.name if task is not None else None,
                 "num_labels": int(getattr(config, "num_labels", 0) or next(iter(head.values())).shape[0]),
                 "label_names": task.label_names if task is not None else None}
    return write_mask_artifact(directory, current, head, base_sha256=base.sha256, base_source=base.source, tied=tied,
                               info={"task": task_info, **(info or {})})


def load_mask(base: str | os.PathLike, mask_dir: str | os.PathLike) -> tuple[nn.Module, Any]:
    """Rebuild a trained task model from its base and its task artifact; returns ``(model, tokenizer)`` in eval mode.

    Outputs are bit-identical to the model that was saved. Raises ArtifactError when the mask was
    trained on another base (checksums differ) or does not fit it.
    """
    artifact = read_mask_artifact(mask_dir)
    expected, actual = artifact.manifest["base"]["sha256"], base_checksum(base)
    if expected != actual:
        source = artifact.manifest["base"].get("source") or "unknown"
        raise ArtifactError(f"{mask_dir}: this mask was trained on another base (sha256 {expected[:12]}..., loaded "
                            f"from {source}), not on {base} (sha256 {actual[:12]}...); give the base it was "
                            "trained on.")
    task_info = artifact.manifest["info"].get("task", {})
    num_labels = task_info.get("num_labels") if isinstance(task_info, dict) else None
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ArtifactError(f"{mask_dir}: the manifest does not say how many labels the head has; train it again.")
    loaded = load_base(base, num_labels=num_labels, label_names=task_info.get("label_names"))
    model = loaded.model
    state = model.state_dict()
    keys = _head_keys(model)
    if set(keys) != set(artifact.head) or any(state[k].shape != artifact.head[k].shape for k in keys):
        raise ArtifactError(f"{mask_dir}: the stored head {sorted(artifact.head)} does not fit the base's head "
                            f"{sorted(keys)}; the mask was trained for another architecture.")
    with torch.no_grad():
        for k in keys:
            state[k].copy_(artifact.head[k])
    try:
        names = set_masks(model, artifact.masks)
    except FewbitsValueError as exc:
        raise ArtifactError(f"{mask_dir}: {exc}") from exc
    expected_names = {n for name, tied in artifact.tied.items() for n in [name, *tied]}
    if set(names) != expected_names:
        raise ArtifactError(f"{mask_dir}: the masks cover {sorted(expected_names ^ set(names))[:5]} differently "
                            "from this base (tied weights differ); give the base it was trained on.")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), loaded.tokenizer


def mask_settings(config: MaskConfig, train_config: TrainConfig) -> dict[str, Any]:
    """JSON-safe record of the settings a mask was trained with (stored in the artifact's info)."""
    plain = (int, float, str, bool, list, type(None))
    return {"mask": {k: v for k, v in asdict(config).items() if isinstance(v, plain)},
            "train": {k: v for k, v in asdict(train_config).items() if isinstance(v, plain)}}
