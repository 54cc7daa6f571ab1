"""Every damaged, foreign or too-new artifact gives an ArtifactError naming the file and the problem."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import pytest
import torch
from _io_helpers import bert_model, bin_quantizer

import fewbits
from fewbits.errors import ArtifactError
from fewbits.io import MANIFEST_FILE, TENSORS_FILE, describe


def _manifest(path):
    return json.loads((path / MANIFEST_FILE).read_text())


def _write_manifest(path, manifest):
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def _rewrite(path, name, data):
    """Replace one file of the artifact and make the manifest's size and checksum agree with it."""
    (path / name).write_bytes(data)
    manifest = _manifest(path)
    manifest["files"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    _write_manifest(path, manifest)


def _rewrite_tensors(path, data):
    _rewrite(path, TENSORS_FILE, data)


def _rewrite_config(path, config):
    _rewrite(path, "config.json", json.dumps(config).encode())


def _expect(path, file_name, *fragments):
    for reader in (fewbits.load, describe):
        if reader is describe and file_name == "config.json":
            continue  # describe does not rebuild the base model
        with pytest.raises(ArtifactError) as info:
            reader(path)
        message = str(info.value)
        assert file_name in message, message
        for fragment in fragments:
            assert fragment in message, message


def test_truncated_tensors_file(artifact):
    data = (artifact / TENSORS_FILE).read_bytes()
    (artifact / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    _expect(artifact, TENSORS_FILE, "truncated")


def test_one_flipped_byte(artifact):
    data = bytearray((artifact / TENSORS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (artifact / TENSORS_FILE).write_bytes(bytes(data))
    _expect(artifact, TENSORS_FILE, "sha256")


def test_missing_files(artifact, tmp_path):
    (artifact / TENSORS_FILE).unlink()
    _expect(artifact, TENSORS_FILE, "missing")
    (artifact / MANIFEST_FILE).unlink()
    _expect(artifact, MANIFEST_FILE, "not a fewbits artifact")
    _expect(tmp_path / "nowhere", "nowhere", "no such artifact")


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.update(format_version=3), "newer"),
    (lambda m: m.update(format="something-else"), "not a fewbits manifest"),
    (lambda m: m["data"].pop("layers"), "'layers'"),
    (lambda m: m["data"]["layers"]["bert.pooler.dense"].update(bits=9), "'bits'"),
    (lambda m: m["data"]["layers"]["bert.pooler.dense"].update(n_groups=7), "'n_groups'"),
    (lambda m: m["data"]["layers"]["bert.pooler.dense"].update(shape=[32, "x"]), "'shape'"),
    (lambda m: m["files"][TENSORS_FILE].update(sha256="abc"), "sha256"),
    (lambda m: m["files"].update({"../elsewhere.safetensors": m["files"].pop(TENSORS_FILE)}), "'files'"),
    (lambda m: m["files"].pop("config.json"), "'files'"),
    (lambda m: m.update(method="no-such-method"), "no-such-method"),
    (lambda m: m.update(tokenizer_files=["../../etc/passwd"]), "tokenizer_files"),
    (lambda m: m["base"].update(kind="pickle"), "base.kind"),
])
def test_altered_manifest(artifact, edit, fragment):
    manifest = _manifest(artifact)
    edit(manifest)
    _write_manifest(artifact, manifest)
    _expect(artifact, MANIFEST_FILE, fragment)


def test_manifest_not_json(artifact):
    (artifact / MANIFEST_FILE).write_text("{not json")
    _expect(artifact, MANIFEST_FILE, "not valid JSON")


def test_manifest_bits_disagreeing_with_the_packed_codes(artifact):
    manifest = _manifest(artifact)
    manifest["data"]["layers"]["bert.pooler.dense"]["bits"] = 4  # the file holds 3-bit codes
    _write_manifest(artifact, manifest)
    _expect(artifact, TENSORS_FILE, "bert.pooler.dense")


def test_consistent_but_corrupt_safetensors_header(artifact):
    data = (artifact / TENSORS_FILE).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8: 8 + n].replace(b'"dtype":"F32"', b'"dtype":"F16"', 1)  # sizes no longer match
    _rewrite_tensors(artifact, data[:8] + header + data[8 + n:])
    _expect(artifact, TENSORS_FILE, "do not fit")
    _rewrite_tensors(artifact, struct.pack("<Q", 10**9) + data[8:])
    _expect(artifact, TENSORS_FILE, "truncated")
    _rewrite_tensors(artifact, data[:8] + b"\xff" * n + data[8 + n:])
    _expect(artifact, TENSORS_FILE, "corrupt safetensors header")


def test_artifact_for_another_base_model(artifact):
    config = json.loads((artifact / "config.json").read_text())
    config["hidden_size"], config["intermediate_size"] = 64, 128
    _rewrite_config(artifact, config)
    _expect(artifact, "config.json", "shape", "another base model")


def test_config_with_fewer_layers(artifact):
    config = json.loads((artifact / "config.json").read_text())
    config["num_hidden_layers"] = 1
    _rewrite_config(artifact, config)
    _expect(artifact, "config.json", "encoder.layer.1")


@pytest.mark.parametrize("damage", [lambda p: p.write_text("{oops"), lambda p: p.unlink()])
def test_broken_config(artifact, damage):
    damage(artifact / "config.json")
    _expect(artifact, "config.json")


def test_broken_config_with_a_matching_checksum(artifact):
    _rewrite(artifact, "config.json", b"{oops")
    with pytest.raises(ArtifactError, match="config.json"):
        fewbits.load(artifact)


def test_every_file_is_checksummed_config_and_tokenizer_included(artifact):
    config = json.loads((artifact / "config.json").read_text())
    config["num_hidden_layers"] = 1  # valid JSON, same size class: only the checksum can tell
    (artifact / "config.json").write_text(json.dumps(config))
    _expect(artifact, "config.json")
    assert set(_manifest(artifact)["files"]) == {TENSORS_FILE, "config.json"}


def test_unknown_transformers_class(artifact):
    manifest = _manifest(artifact)
    manifest["base"]["class"] = "NoSuchModelForAnything"
    _write_manifest(artifact, manifest)
    with pytest.raises(ArtifactError, match="NoSuchModelForAnything"):
        fewbits.load(artifact)


def test_loading_into_a_model_of_another_size(tmp_path):
    from _io_helpers import PlainNet
    from torch import nn

    model = PlainNet()
    fewbits.compress(model, bin_quantizer, 2, targets=["body"])
    fewbits.save(model, tmp_path / "p")
    other = PlainNet()
    other.body = nn.Linear(8, 12)
    with pytest.raises(ArtifactError, match="'body'"):
        fewbits.load(tmp_path / "p", model=other)
    assert isinstance(other.body.weight, nn.Parameter) and other.body.weight.shape == (12, 8)  # untouched


def test_failed_load_never_half_fills_a_given_model(tmp_path):
    from _io_helpers import PlainNet

    model = PlainNet()
    fewbits.compress(model, bin_quantizer, 2, targets=["body"])
    fewbits.save(model, tmp_path / "p")
    shutil.copytree(tmp_path / "p", tmp_path / "q")
    data = (tmp_path / "q" / TENSORS_FILE).read_bytes()
    (tmp_path / "q" / TENSORS_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    fresh = PlainNet()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ArtifactError):
        fewbits.load(tmp_path / "q", model=fresh)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_stored_uncompressed_tensor_of_another_dtype(tmp_path):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    model = bert_model()
    fewbits.save(model, tmp_path / "a")
    tensors = st_load((tmp_path / "a" / TENSORS_FILE).read_bytes())
    tensors["state.classifier.bias"] = tensors["state.classifier.bias"].double()
    _rewrite_tensors(tmp_path / "a", st_save(tensors))
    _expect(tmp_path / "a", "config.json", "classifier.bias", "float64")
