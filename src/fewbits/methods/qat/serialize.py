"""The QAT method's tensors in and out of the artifact container.

A QAT export stores Q(w) of every STE layer as packed codes + codebooks (the codebook method's
tensors, so the bytes are those of a codebook artifact) and, in its manifest section, the
QATConfig and every activation quantizer's bits, sign and learned step::

    {<the codebook section>, "config": {...QATConfig...},
     "activations": {"<layer>": {"bits": 4, "signed": true, "scale": 0.76, "initialized": true}}}

Reading registers the codebooks and the A-bit input quantizers, so the loaded model's outputs equal
those of the QAT model it was exported from (in eval mode).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fewbits._util.tensorfile import is_int
from fewbits.errors import ArtifactError, FewbitsValueError, bad_param
from fewbits.methods.base import Saved, Stored
from fewbits.methods.codebook import serialize as codebook_serialize
from fewbits.methods.qat.config import QATConfig
from fewbits.nn.activations import CHILD_NAME as ACTIVATION_CHILD
from fewbits.nn.activations import activation_quantizers, add_activation_quantizer
from fewbits.nn.codebook import Codebook
from fewbits.nn.ste import STEQuantize, latent_weight, ste_modules
from fewbits.nn.targets import register_weight_parametrization
from fewbits.quantize.base import MAX_BITS, QuantizedTensor
from fewbits.quantize.uniform import uniform


def ste_codebook(module: nn.Module, quantizer: STEQuantize) -> QuantizedTensor:
    """The layer's quantized weight Q(w) as codes + codebook (one row per channel, or per tensor).

    :func:`fewbits.quantize.uniform.uniform` on the latent weight: its codebook rebuilds exactly the
    values the STE forward pass uses.
    """
    w = latent_weight(module).detach().float()
    groups = "channel" if quantizer.per_channel and w.dim() >= 2 else None
    return uniform(w, quantizer.bits, symmetric=quantizer.symmetric, groups=groups)


def _plain_copy(model: nn.Module) -> nn.Module:
    """A new model of the same architecture, without QAT, holding ``model``'s other tensors (on the CPU).

    Built afresh rather than deep-copied: a deep copy of a parametrized module shares its injected
    class with the original, so removing a parametrization from the copy would break the original.
    The weights of STE layers are left as initialized (their codebooks replace them).
    """
    spec = getattr(model, "fewbits_spec", None)
    with torch.random.fork_rng(devices=[]):
        if isinstance(spec, dict) and "fewbits_model" in spec:
            copy = type(model)(**spec.get("args", {}))  # what fewbits.models.build_model made
            copy.fewbits_spec = {"fewbits_model": spec["fewbits_model"], "args": dict(spec.get("args", {}))}
        elif hasattr(model, "config") and hasattr(model, "save_pretrained"):
            copy = type(model)(model.config)
        else:
            raise bad_param("model", "a built-in model (fewbits.models.build_model) or a Hugging Face model",
                            type(model).__name__, "export_qat")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if ".parametrizations.weight." not in k and f".{ACTIVATION_CHILD}." not in k}
    missing, unexpected = copy.load_state_dict(state, strict=False)
    ste_weights = {f"{name}.weight" for name, _, _ in ste_modules(model)}
    if unexpected or set(missing) - ste_weights:
        raise FewbitsValueError(f"export_qat: the rebuilt model does not match (missing {sorted(missing)[:5]}, "
                                f"unexpected {sorted(unexpected)[:5]}); was the model changed after loading?")
    return copy


def write(model: nn.Module, *, config: QATConfig, codebook_dtype: str = "float32") -> Saved:
    """Q(w) of every STE layer as codes + codebooks on a plain copy of ``model``, plus the activation steps."""
    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper holds the model in .module
    activations = {name: {"bits": q.bits, "signed": bool(q.signed), "scale": float(q.scale.detach().abs()),
                          "initialized": bool(q.initialized)}
                   for name, q in activation_quantizers(model).items()}
    codebooks = {name: ste_codebook(module, quantizer) for name, module, quantizer in ste_modules(model)}
    copy = _plain_copy(model)
    modules = dict(copy.named_modules())
    for name, qt in codebooks.items():
        register_weight_parametrization(modules[name], Codebook(qt.codes.cpu(), qt.codebook.cpu(), qt.bits, qt.scheme),
                                        drop_original=True)
    saved = codebook_serialize.write(copy, codebook_dtype=codebook_dtype)
    return Saved(saved.tensors, {**saved.data, "config": config.to_dict(), "activations": activations}, copy)


def check(stored: Stored) -> None:
    """The codebook section's checks, plus the config and every activation entry."""
    codebook_serialize.check(stored)
    where = stored.path.parent / "fewbits.json"
    try:
        QATConfig.from_dict(stored.data.get("config", {}))
    except (FewbitsValueError, TypeError) as exc:
        raise ArtifactError(f"{where}: malformed manifest: 'config' is not a QAT config ({exc}).") from None
    activations = stored.data.get("activations")
    ok = isinstance(activations, dict) and all(
        isinstance(a, dict) and is_int(a.get("bits"), 1) and a["bits"] <= MAX_BITS and isinstance(a.get("signed"), bool)
        and isinstance(a.get("scale"), (int, float)) and isinstance(a.get("initialized"), bool)
        for a in activations.values())
    if not ok:
        raise ArtifactError(f"{where}: malformed manifest: 'activations' must map layers to bits, signed, scale and "
                            "initialized; save the model again.")


def add_activations(model: nn.Module, activations: dict[str, Any], where: str) -> None:
    """Register the stored A-bit input quantizers on ``model`` with their learned steps."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, state in activations.items():
            if name not in modules:
                raise ArtifactError(f"{where} names a layer {name!r} the model lacks.")
            quantizer = add_activation_quantizer(modules[name], int(state["bits"]))
            quantizer.scale.fill_(float(state["scale"]))
            quantizer.signed.fill_(bool(state["signed"]))
            quantizer.initialized.fill_(bool(state["initialized"]))


def fit(model: nn.Module, stored: Stored) -> None:
    """The codebook layers fit the base, and every activation quantizer names one of its layers (shapes only)."""
    codebook_serialize.fit(model, stored)
    modules = dict(model.named_modules())
    missing = sorted(name for name in stored.data["activations"] if name not in modules)
    if missing:
        raise ArtifactError(f"{stored.path.parent / 'fewbits.json'}: activation quantizers of layers {missing[:5]} "
                            "the base model lacks; save the model again.")


def read(model: nn.Module, stored: Stored) -> nn.Module:
    """The codebooks, then the activation quantizers."""
    model = codebook_serialize.read(model, stored)
    add_activations(model, stored.data["activations"], str(stored.path.parent / "fewbits.json"))
    return model
