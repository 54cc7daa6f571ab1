"""ONNX export that keeps the compression: int8 weights per output channel and onnxruntime's integer matmul.

The compressed model is decoded to plain weights and exported by torch's exporter (torch.export, under
``torch.no_grad``); then every MatMul (or Gemm) whose weight is a codebook layer becomes
``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` (the pattern onnxruntime fuses into its
dynamic-quantization matmul), with the layer's codebook values mapped to int8 by
:mod:`fewbits.export.int8`; every Gather over a compressed embedding reads int8 rows and multiplies
them by the row's scale. Convolution weights, norms, biases and the uncompressed head stay float32.
The weights share one scalar zero point (0): with a per-column vector of zeros onnxruntime ran
MiniLM 1.15-1.35x slower at batch 1 (same outputs). The weights are found by their values (the
decoded weight, or its transpose), not by names, which exporters rename. Activations are quantized
to uint8 per tensor at run time, as onnxruntime's own dynamic int8 does.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewbits.export.int8 import channel_positions, channel_scales, quantize_channels
from fewbits.methods.codebook.apply import codebook_modules, decompress
from fewbits.nn.targets import _is_hf_conv1d


ZERO_POINT = "fewbits_int8_zero_point"  # the weights' one zero point (symmetric int8), shared by every layer


def _key(array: np.ndarray) -> tuple:
    return array.shape, hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _int8_weights(model: nn.Module) -> tuple[dict[tuple, tuple[np.ndarray, np.ndarray]], dict[tuple, tuple]]:
    """By content key of a weight as an ONNX MatMul reads it ``(in, out)``: (int8 ``(in, out)``, scales ``(out,)``);
    and by content key of an embedding table: (int8 ``(rows, dim)``, scales ``(rows, 1)``)."""
    matmuls: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    gathers: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for _, (module, cb) in codebook_modules(model).items():
        with torch.no_grad():
            weight = cb().detach().float()
        if isinstance(module, nn.Embedding):
            scale = channel_scales(cb, channel_positions(tuple(weight.shape)))
            gathers[_key(weight.numpy())] = (quantize_channels(weight, scale).numpy(), scale[:, None].numpy())
        elif isinstance(module, nn.Linear) or _is_hf_conv1d(module):
            as_rows = weight if isinstance(module, nn.Linear) else weight.T  # (out, in)
            scale = channel_scales(cb, channel_positions(tuple(weight.shape), transposed=not isinstance(module, nn.Linear)))
            q = quantize_channels(as_rows, scale).numpy()
            entry = (np.ascontiguousarray(q.T), scale.numpy())
            matmuls[_key(as_rows.T.numpy())] = entry
            matmuls[("gemm_transposed", *_key(as_rows.numpy()))] = entry
    return matmuls, gathers


class _Rewriter:
    """Replaces float MatMul/Gemm/Gather nodes over compressed weights by their int8 forms, in one graph."""

    def __init__(self, graph: Any, matmuls: dict, gathers: dict) -> None:
        from onnx import numpy_helper

        self.graph, self.matmuls, self.gathers = graph, matmuls, gathers
        self.inits = {i.name: i for i in graph.initializer}
        self.arrays: dict[str, np.ndarray] = {}
        self.to_array = numpy_helper.to_array
        self.quantized_inputs: dict[str, tuple[str, str, str]] = {}
        self.new_inits: dict[str, np.ndarray] = {}
        self.count = 0

    def _array(self, name: str) -> np.ndarray | None:
        if name not in self.inits:
            return None
        if name not in self.arrays:
            self.arrays[name] = self.to_array(self.inits[name])
        return self.arrays[name]

    def _init(self, name: str, value: np.ndarray) -> str:
        self.new_inits[name] = value
        return name

    def _dynamic_quantize(self, x: str, nodes: list) -> tuple[str, str, str]:
        from onnx import helper

        if x not in self.quantized_inputs:
            outs = (f"{x}_quantized", f"{x}_scale", f"{x}_zero_point")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(outs), name=f"{x}_DynamicQuantizeLinear"))
            self.quantized_inputs[x] = outs
        return self.quantized_inputs[x]

    def _matmul(self, x: str, q: np.ndarray, scale: np.ndarray, out: str, nodes: list) -> None:
        from onnx import TensorProto, helper

        name = f"fewbits_int8_{self.count}"
        self.count += 1
        xq, xs, xz = self._dynamic_quantize(x, nodes)
        w, ws = self._init(f"{name}_weight", q), self._init(f"{name}_scale", scale.astype(np.float32))
        wz = self._init(ZERO_POINT, np.zeros((), np.int8))
        nodes += [helper.make_node("Mul", [xs, ws], [f"{name}_scales"], name=f"{name}_scales_mul"),
                  helper.make_node("MatMulInteger", [xq, w, xz, wz], [f"{name}_int32"], name=f"{name}_MatMulInteger"),
                  helper.make_node("Cast", [f"{name}_int32"], [f"{name}_float"], to=TensorProto.FLOAT, name=f"{name}_cast"),
                  helper.make_node("Mul", [f"{name}_float", f"{name}_scales"], [out], name=f"{name}_rescale")]

    def _gemm(self, node: Any, nodes: list) -> bool:
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = self._array(node.input[1])
        if weight is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return False
        key = ("gemm_transposed", *_key(weight)) if attrs.get("transB", 0) else _key(weight)
        if key not in self.matmuls:
            return False
        product = f"{node.output[0]}_product" if len(node.input) > 2 else node.output[0]
        self._matmul(node.input[0], *self.matmuls[key], product, nodes)
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        return True

    def _gather(self, node: Any, nodes: list) -> bool:
        from onnx import TensorProto, helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        table = self._array(node.input[0])
        if table is None or attrs.get("axis", 0) != 0 or _key(table) not in self.gathers:
            return False
        q, scale = self.gathers[_key(table)]
        name = f"fewbits_int8_{self.count}"
        self.count += 1
        w, ws = self._init(f"{name}_table", q), self._init(f"{name}_row_scale", scale.astype(np.float32))
        nodes += [helper.make_node("Gather", [w, node.input[1]], [f"{name}_rows"], axis=0, name=f"{name}_gather"),
                  helper.make_node("Cast", [f"{name}_rows"], [f"{name}_float"], to=TensorProto.FLOAT, name=f"{name}_cast"),
                  helper.make_node("Gather", [ws, node.input[1]], [f"{name}_scales"], axis=0, name=f"{name}_scales"),
                  helper.make_node("Mul", [f"{name}_float", f"{name}_scales"], [node.output[0]], name=f"{name}_rescale")]
        return True

    def run(self) -> int:
        """Rewrite the graph in place; returns how many weights now read int8."""
        from onnx import numpy_helper

        nodes: list = []
        for node in self.graph.node:
            done = False
            if node.op_type == "MatMul":
                weight = self._array(node.input[1])
                if weight is not None and _key(weight) in self.matmuls:
                    self._matmul(node.input[0], *self.matmuls[_key(weight)], node.output[0], nodes)
                    done = True
            elif node.op_type == "Gemm":
                done = self._gemm(node, nodes)
            elif node.op_type == "Gather":
                done = self._gather(node, nodes)
            if not done:
                nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        kept = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        self.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in self.new_inits.items())
        return self.count


def export_onnx(model: nn.Module, out: Path, example: tuple[torch.Tensor, ...], input_names: list[str],
                dynamic: list[dict[int, str]]) -> Path:
    """Write ``model`` (training representation) to the file ``out`` as ONNX with int8 compressed weights."""
    import onnx

    matmuls, gathers = _int8_weights(model)
    plain = decompress(copy.deepcopy(model)).eval()
    shapes = tuple({axis: torch.export.Dim(name) for axis, name in dims.items()} for dims in dynamic)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(plain, example, path, dynamo=True, input_names=input_names, output_names=["logits"],
                          dynamic_shapes=shapes, verbose=False)
        graph_model = onnx.load(path, load_external_data=True)
    _Rewriter(graph_model.graph, matmuls, gathers).run()
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph_model, out)
    return out
