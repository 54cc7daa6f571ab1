"""Exports: each format's round trip, what it keeps of the compression, and one-line errors on bad input."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _export_helpers import make_artifact, token_batch

import fewbits
from fewbits.cli import main
from fewbits.errors import ArtifactError, FewbitsValueError, MissingDependencyError
from fewbits.export import export
from fewbits.export.coreml import block_shape
from fewbits.export.int8 import channel_positions, channel_scales, quantize_channels
from fewbits.methods.codebook import codebook_modules
from fewbits.nn import Codebook
from fewbits.runtime import to_training



def _logits(directory: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model = to_training(fewbits.load(directory))
    with torch.no_grad():
        return model(**batch).logits


def test_hf_export_loads_with_from_pretrained_with_identical_outputs(artifact: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = export(artifact, "hf", tmp_path / "hf")
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = token_batch()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, _logits(artifact, batch))
    assert AutoTokenizer.from_pretrained(out)("a b").input_ids[0] == 2  # the tokenizer came along: [CLS]


def test_onnx_export_runs_in_onnxruntime_with_int8_weights(artifact: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = export(artifact, "onnx", tmp_path / "model.onnx")
    graph = onnx.load(out).graph
    assert [node.op_type for node in graph.node].count("MatMulInteger") == 13  # 2 layers x 6 Linear + the pooler
    model = to_training(fewbits.load(artifact))
    weights = {id(cb): cb.codes.numel() for _, cb in codebook_modules(model).values()}
    int8 = {i.name: math.prod(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert sum(n for name, n in int8.items() if not name.endswith("_zero_point")) == sum(weights.values())
    zero_points = {node.input[3] for node in graph.node if node.op_type == "MatMulInteger"}
    assert [list(i.dims) for i in graph.initializer if i.name in zero_points] == [[]]  # one scalar, shared
    floats = sum(math.prod(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    assert floats < sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())  # no FP32 copy
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = token_batch()
    got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    expected = _logits(artifact, batch).numpy()
    assert np.abs(got - expected).max() < 2e-3  # int8 activations per tensor, as onnxruntime's own dynamic int8
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()


def test_int8_mapping_is_exact_where_the_codebook_allows() -> None:
    book = torch.tensor([[-0.5, -0.25, 0.25, 0.75]])  # multiples of 0.25 / 3: exact in int8 with one scale
    codes = torch.tensor([[0, 1, 2, 3], [3, 3, 2, 2]], dtype=torch.uint8)
    cb = Codebook(codes, book, 2)
    scale = channel_scales(cb, channel_positions((2, 4)))
    weight = cb().detach()
    assert torch.allclose(quantize_channels(weight, scale).float() * scale[:, None], weight, rtol=0, atol=1e-7)
    columns = channel_scales(cb, channel_positions((2, 4), transposed=True))
    assert columns.shape == (4,)


def test_coreml_lookup_tables_and_indices_are_the_codebooks_and_codes(tmp_path: Path) -> None:
    ct = pytest.importorskip("coremltools")
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    artifact = make_artifact(tmp_path / "artifact", bits=5, group_size=16)  # 5 bits: in 6-bit tables; half rows
    out = export(artifact, "coreml", tmp_path / "model.mlpackage")
    spec = ct.utils.load_spec(str(out))
    prog = milproto_load(spec, specification_version=spec.specificationVersion,
                         file_weights_dir=str(out / "Data" / "com.apple.CoreML" / "weights"))
    ops = {op.name: op for op in prog.functions["main"].operations if op.op_type == "constexpr_lut_to_dense"}
    layers = codebook_modules(to_training(fewbits.load(artifact)))
    exported = {name for name in layers if "position" not in name and "token_type" not in name}
    assert {f"model_{n.replace('.', '_')}_weight_palettized" for n in exported} == set(ops)
    for name in exported:
        cb = layers[name][1]
        op = ops[f"model_{name.replace('.', '_')}_weight_palettized"]
        lut, indices = op.lut.val, op.indices.val
        assert lut.shape[-2:] == (64, 1) and lut.dtype == np.float32
        assert np.array_equal(lut.reshape(cb.n_groups, 64)[:, :32], cb.codebook.detach().numpy())
        assert not lut.reshape(cb.n_groups, 64)[:, 32:].any()
        assert np.array_equal(indices, cb.codes.numpy())


def test_coreml_file_holds_packed_indices(artifact: Path, tmp_path: Path) -> None:
    """Weights file <= packed codes + tables + float32 of everything else (+ 64-byte blob alignment)."""
    pytest.importorskip("coremltools")
    out = export(artifact, "coreml", tmp_path / "model.mlpackage")
    model = to_training(fewbits.load(artifact))
    layers = {id(cb): cb for _, cb in codebook_modules(model).values()}
    packed = sum(math.ceil(cb.codes.numel() * cb.bits / 8) + cb.codebook.numel() * 4 for cb in layers.values())
    plain = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    blobs = 64 * len(model.state_dict()) * 2
    size = (out / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size
    assert size <= packed + plain + blobs
    assert size < 0.6 * (sum(cb.codes.numel() * 4 for cb in layers.values()) + plain)  # measured 0.52 of FP32


def test_coreml_refuses_groups_that_are_not_blocks(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    artifact = make_artifact(tmp_path / "artifact", bits=2, groups=2)  # 70.5 rows of the 141-row embedding
    with pytest.raises(FewbitsValueError, match="do not tile its \\[141, 32\\] weight into Core ML blocks"):
        export(artifact, "coreml", tmp_path / "model.mlpackage")


def test_coreml_blocks_follow_the_groups() -> None:
    assert block_shape((6, 4), 24) == (6, 4)
    assert block_shape((6, 4), 8) == (2, 4)
    assert block_shape((6, 4), 2) == (1, 2)
    assert block_shape((6, 4, 3), 6) == (1, 2, 3)
    assert block_shape((6, 4), 3) is None


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "v1"


def test_export_refuses_bad_inputs(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(FewbitsValueError, match="'to' parameter of export must be one of"):
        export(artifact, "tflite", tmp_path / "x")
    with pytest.raises(ArtifactError, match="fewbits.json"):
        export(tmp_path, "hf", tmp_path / "out")
    with pytest.raises(FewbitsValueError, match="is a qat artifact, whose activation quantizers no export"):
        export(FIXTURES / "qat", "onnx", tmp_path / "m.onnx")
    with pytest.raises(FewbitsValueError, match="is a task mask, not a compressed model"):
        export(FIXTURES / "mask", "hf", tmp_path / "out")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FewbitsValueError, match="'out' parameter"):
        export(artifact, "hf", tmp_path / "file.txt")


def test_missing_optional_dependency_is_one_line(artifact: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "coremltools", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'fewbits\[coreml\]'"):
        export(artifact, "coreml", tmp_path / "m.mlpackage")
    assert main(["export", str(artifact), "--to", "coreml", "--out", str(tmp_path / "m.mlpackage")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fewbits export: error: Export to coreml needs") and "\n" not in err


def test_cli_export_hf(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(artifact), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'hf'} (")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_cli_offers_every_format() -> None:
    from fewbits.commands import export as command
    from fewbits.export import FORMATS

    assert command.FORMATS == FORMATS
