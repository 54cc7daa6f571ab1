"""Core ML export: an ML program whose palettized weights are the artifact's codes and codebooks.

The model is decoded, exported with ``torch.export`` and converted by coremltools (float32 compute, iOS 18
ops); then every constant weight equal to a codebook layer's decoded weight becomes a
``constexpr_lut_to_dense`` whose indices are the layer's codes and whose lookup tables are its codebook
rows, the form Apple devices decompress on the fly. Codebook groups (contiguous chunks of the row-major
weight) become Core ML blocks: ``group_size = m * prod(shape[a+1:])`` with ``m`` dividing ``shape[a]``
gives blocks of ``m`` along axis ``a`` (whole rows, or runs within a row). Core ML palettizes with 1, 2,
3, 4, 6 or 8 bits: 5- and 7-bit codebooks are stored in 6- and 8-bit tables whose extra entries are zero
and never indexed. Inputs have a fixed shape: batch 1 and, for text, ``SEQUENCE`` tokens (pad, with
``attention_mask`` 0; the traced model builds the additive mask itself, as coremltools 9 cannot convert
transformers' mask code). Conversion
runs anywhere; predicting needs macOS.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fewbits.errors import FewbitsValueError
from fewbits.nn.forward import logits_of
from fewbits.nn.codebook import Codebook
from fewbits.methods.codebook.apply import codebook_modules, decompress

COREML_BITS = (1, 2, 3, 4, 6, 8)
SEQUENCE = 128  # tokens per input of an exported text model (pad with attention_mask 0); batch 1


class _Logits(nn.Module):
    """The model with positional inputs and its logits as the one output (what converters trace); text models
    take ``input_ids`` and a 0/1 ``attention_mask``."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.names == ["x"]:
            return logits_of(self.model(inputs[0]))
        ids, mask = inputs
        # an additive (batch, 1, 1, tokens) mask is used as given, skipping transformers' mask code
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        extra = {}  # explicit positions and token types: their defaults slice buffers by a traced int
        accepted = inspect.signature(self.model.forward).parameters
        if "position_ids" in accepted:
            extra["position_ids"] = torch.arange(ids.shape[1]).expand_as(ids)
        if "token_type_ids" in accepted:
            extra["token_type_ids"] = torch.zeros_like(ids)
        return logits_of(self.model(input_ids=ids, attention_mask=additive, **extra))


def block_shape(shape: tuple[int, ...], group_size: int) -> tuple[int, ...] | None:
    """The Core ML block (a size per axis) that one codebook group of ``group_size`` values covers, if any."""
    for axis in range(len(shape) - 1, -1, -1):
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        if group_size % inner == 0 and shape[axis] % (group_size // inner) == 0:
            return (1,) * axis + (group_size // inner,) + tuple(shape[axis + 1:])
    return None


def lut_and_indices(cb: Codebook, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Core ML's (iOS 18) lookup table ``(*blocks per axis, 2**nbits, 1)`` and indices for one codebook layer."""
    shape = tuple(cb.shape)
    block = block_shape(shape, cb.group_size)
    if block is None:
        raise FewbitsValueError(f"Layer {name!r}: groups of {cb.group_size} values do not tile its {list(shape)} "
                                "weight into Core ML blocks; compress with groups of whole rows (groups='channel').")
    nbits = next(b for b in COREML_BITS if b >= cb.bits)
    counts = tuple(s // b for s, b in zip(shape, block, strict=True))
    book = cb.codebook.detach().float().numpy()
    table = np.zeros((book.shape[0], 1 << nbits), np.float32)
    table[:, : book.shape[1]] = book
    return table.reshape(*counts, 1 << nbits, 1), cb.codes.numpy().astype(np.uint8)


def _key(array: np.ndarray) -> tuple:
    return array.shape, hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _palettize(prog, tables: dict[tuple, tuple[np.ndarray, np.ndarray]]) -> int:
    """Replace each float constant equal to a codebook weight by ``constexpr_lut_to_dense``; returns how many."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend._utils import _construct_constexpr_lut_op
    from coremltools.converters.mil.mil.scope import ScopeInfo

    done = 0
    for func in prog.functions.values():
        with func:
            for op in list(func.operations):
                val = op.outputs[0].val if op.op_type == "const" else None
                if not isinstance(val, np.ndarray) or val.dtype != np.float32 or _key(val) not in tables:
                    continue
                lut, indices = tables[_key(val)]
                with mb.scope(*[ScopeInfo(source=k, data=v) for k, v in op.scopes.items()]):  # the const's scopes
                    new = _construct_constexpr_lut_op(indices, lut, name=f"{op.name}_palettized", before_op=op)
                op.enclosing_block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new,
                                                                no_check_var_types=True)
                op.enclosing_block.remove_ops([op])
                done += 1
    return done


def fixed_inputs(model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str]) -> tuple[torch.Tensor, ...]:
    """Inputs of one example: text padded to ``SEQUENCE`` tokens (at most the model's positions)."""
    if names == ["x"]:
        return tuple(x[:1] for x in example)
    length = min(SEQUENCE, getattr(model.config, "max_position_embeddings", SEQUENCE))
    ids = torch.arange(length).remainder(model.config.vocab_size).unsqueeze(0)
    return ids, torch.ones_like(ids)


def export_coreml(model: nn.Module, out: Path, example: tuple[torch.Tensor, ...], names: list[str]) -> Path:
    """Write ``model`` (training representation) as a Core ML ``.mlpackage`` at ``out`` with palettized weights."""
    import coremltools as ct

    tables = {_key(cb().detach().float().numpy()): lut_and_indices(cb, name)
              for name, (_, cb) in codebook_modules(model).items()}

    wrapper = _Logits(decompress(copy.deepcopy(model)).eval(), names).eval()
    inputs = fixed_inputs(model, example, names)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, inputs, strict=False)
    options = {"minimum_deployment_target": ct.target.iOS18, "compute_precision": ct.precision.FLOAT32}
    types = [ct.TensorType(name=n, shape=tuple(x.shape), dtype=np.int32 if not x.is_floating_point() else np.float32)
             for n, x in zip(names, inputs, strict=True)]
    prog = ct.convert(traced, inputs=types, outputs=[ct.TensorType(name="logits")], convert_to="milinternal", **options)
    _palettize(prog, tables)
    mlmodel = ct.convert(prog, convert_to="mlprogram", **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(out))
    return out
