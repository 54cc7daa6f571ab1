"""A folder of attack files, as safetensors keeps: every artifact kind, every file in it, damaged every way.

Each case must give a one-line ArtifactError naming the file (and ``fewbits info`` the same line with exit
2), open nothing outside the folder, and allocate memory bounded by the files' size (``_attack_checks``).
Damage: truncated, emptied, bit-flipped, replaced by a link (to an identical copy outside the folder or
inside it), by a FIFO or by a folder; sizes inflated in the manifest and in config.json (with checksums
made consistent, as a deliberate edit would); nested and oversized JSON; random byte damage (hypothesis).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import shutil
import struct
from pathlib import Path

import pytest
import torch
from _attack_checks import refused, watched
from _attack_kinds import KINDS, Built, build, fresh_copy, outputs_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fewbits.errors import ArtifactError

MANIFEST, TENSORS = "fewbits.json", "fewbits.safetensors"


@pytest.fixture(scope="module", autouse=True)
def address_space_cap():
    """A loader that allocates without bound gets a MemoryError here instead of the machine's OOM killer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/status") as fh:
            size = int(re.search(r"VmSize:\s+(\d+) kB", fh.read()).group(1)) * 1024
    except OSError:  # no /proc: no cap
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (size + (4 << 30), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kinds")
    return {kind: build(kind, root) for kind in KINDS}


def files_of(kind: str) -> list[str]:
    """The files each kind holds (checked against the folder by test_every_file_is_covered)."""
    return {"codebook-bert": [MANIFEST, TENSORS, "config.json", "tokenizer.json", "tokenizer_config.json"],
            "codebook-cnn": [MANIFEST, TENSORS], "qat": [MANIFEST, TENSORS], "mask": [MANIFEST, TENSORS]}[kind]


CASES = [(kind, name) for kind in KINDS for name in files_of(kind)]


def test_every_file_is_covered(built):
    for kind in KINDS:
        assert sorted(os.listdir(built[kind].path)) == sorted(files_of(kind))


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def write_consistent(folder: Path, name: str, data: bytes) -> None:
    """Replace a file and record its new size and checksum in the manifest: a deliberate, consistent edit."""
    (folder / name).write_bytes(data)
    m = manifest(folder)
    m["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps(m))


def damage_truncate(folder, name, decoys):
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])


def damage_empty(folder, name, decoys):
    (folder / name).write_bytes(b"")


def damage_flip(folder, name, decoys):
    data = bytearray((folder / name).read_bytes())
    data[0 if name == MANIFEST else len(data) // 2] ^= 0x55  # the manifest's first byte: no longer JSON
    (folder / name).write_bytes(bytes(data))


def damage_link_outside(folder, name, decoys):
    outside = folder.parent / f"outside-{name}"
    shutil.copy(folder / name, outside)  # identical bytes: only the link itself is wrong
    decoys.append(outside)
    (folder / name).unlink()
    (folder / name).symlink_to(outside)


def damage_link_inside(folder, name, decoys):
    (folder / name).rename(folder / f".{name}.real")
    (folder / name).symlink_to(folder / f".{name}.real")


def damage_fifo(folder, name, decoys):
    (folder / name).unlink()
    os.mkfifo(folder / name)


def damage_folder(folder, name, decoys):
    (folder / name).unlink()
    (folder / name).mkdir()


DAMAGES = {"truncated": damage_truncate, "emptied": damage_empty, "bit-flipped": damage_flip,
           "link outside": damage_link_outside, "link inside": damage_link_inside, "fifo": damage_fifo,
           "folder": damage_folder}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("kind, name", CASES)
def test_damaged_file(built, tmp_path, kind, name, damage):
    folder = fresh_copy(built[kind], tmp_path)
    decoys: list[Path] = []
    DAMAGES[damage](folder, name, decoys)
    refused(built[kind].load, folder, name, decoys=decoys)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_file(built, tmp_path, kind):
    for name in files_of(kind):
        folder = fresh_copy(built[kind], tmp_path / name)
        (folder / name).unlink()
        refused(built[kind].load, folder, name, "missing")


@pytest.mark.parametrize("kind, name", CASES)
def test_size_inflated_in_the_manifest(built, tmp_path, kind, name):
    if name == MANIFEST:
        pytest.skip("the manifest lists the other files")
    folder = fresh_copy(built[kind], tmp_path)
    m = manifest(folder)
    m["files"][name]["bytes"] = 10**15
    (folder / MANIFEST).write_text(json.dumps(m))
    refused(built[kind].load, folder, name, "the manifest says 1000000000000000")


def edit_manifest(folder: Path, edit) -> None:
    m = manifest(folder)
    edit(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def first_layer(m: dict) -> dict:
    return next(iter(m["data"]["layers"].values()))


def first_mask(m: dict) -> dict:
    return next(iter(m["data"]["masks"].values()))


INFLATED = {  # (kind, what) -> edit of the manifest; every one sizes an allocation if believed
    ("codebook-bert", "layer shape"): lambda m: first_layer(m).update(shape=[10**6, 10**6]),
    ("codebook-bert", "groups"): lambda m: first_layer(m).update(n_groups=2**40),
    ("codebook-cnn", "builtin width"): lambda m: m["base"]["args"].update(width=10**6),
    ("codebook-cnn", "builtin classes"): lambda m: m["base"]["args"].update(num_classes=10**9),
    ("qat", "builtin width"): lambda m: m["base"]["args"].update(width=10**5),
    ("qat", "layer shape"): lambda m: first_layer(m).update(shape=[10**5, 10**5, 3]),
    ("mask", "mask shape"): lambda m: first_mask(m).update(shape=[10**6, 10**6]),
    ("mask", "kept count"): lambda m: first_mask(m).update(kept=first_mask(m)["kept"] + 1),
    ("mask", "run count"): lambda m: first_mask(m)["params"].update(count=10**12, unary_bits=10**12),
    ("mask", "label count"): lambda m: m["data"]["info"]["task"].update(num_labels=10**9),
}
BASE_ONLY = {("mask", "label count")}  # checked against the base: only loading has it, info has not


@pytest.mark.parametrize("kind, what", sorted(INFLATED))
def test_sizes_inflated_in_the_manifest(built, tmp_path, kind, what):
    folder = fresh_copy(built[kind], tmp_path)
    edit_manifest(folder, INFLATED[(kind, what)])
    if (kind, what) in BASE_ONLY:
        with watched(folder, []), pytest.raises(ArtifactError) as info:
            built[kind].load(folder)
        assert "\n" not in str(info.value) and MANIFEST in str(info.value)
    else:
        refused(built[kind].load, folder, (MANIFEST, TENSORS))


def test_a_mask_for_a_layer_of_another_shape_is_refused_before_decoding(built, tmp_path):
    folder = fresh_copy(built["mask"], tmp_path)
    edit_manifest(folder, lambda m: first_mask(m).update(shape=[math.prod(first_mask(m)["shape"])]))
    # the same count, flattened: decodable, but not the shape of this base's layer
    with watched(folder, []), pytest.raises(ArtifactError, match="give the base it was trained on"):
        built["mask"].load(folder)


CONFIG_INFLATED = {"vocab_size": 10**9, "hidden_size": 10**6, "num_hidden_layers": 10**6,
                   "intermediate_size": 10**9, "max_position_embeddings": 10**9, "num_labels": 10**8,
                   "type_vocab_size": 10**9}


@pytest.mark.parametrize("field", sorted(CONFIG_INFLATED))
def test_sizes_inflated_in_config_json(built, tmp_path, field):
    folder = fresh_copy(built["codebook-bert"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[field] = CONFIG_INFLATED[field]
    if field == "num_labels":  # else id2label, kept, would decide the label count
        config.pop("id2label", None)
        config.pop("label2id", None)
    write_consistent(folder, "config.json", json.dumps(config).encode())
    refused(built["codebook-bert"].load, folder, "config.json")


def test_config_of_another_model_that_fits_nothing(built, tmp_path):
    folder = fresh_copy(built["codebook-bert"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"], config["intermediate_size"] = 64, 128
    write_consistent(folder, "config.json", json.dumps(config).encode())
    refused(built["codebook-bert"].load, folder, "config.json", "another base model")


def nested(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [64, 100_000])
def test_nested_manifest(built, tmp_path, kind, depth):
    folder = fresh_copy(built[kind], tmp_path)
    (folder / MANIFEST).write_bytes(nested(depth))
    refused(built[kind].load, folder, MANIFEST, "nested deeper")


@pytest.mark.parametrize("depth", [64, 100_000])
def test_nested_config_json(built, tmp_path, depth):
    folder = fresh_copy(built["codebook-bert"], tmp_path)
    write_consistent(folder, "config.json", nested(depth))
    refused(built["codebook-bert"].load, folder, "config.json", "nested deeper")


@pytest.mark.parametrize("kind", KINDS)
def test_nested_safetensors_header(built, tmp_path, kind):
    folder = fresh_copy(built[kind], tmp_path)
    header = nested(50_000)
    write_consistent(folder, TENSORS, struct.pack("<Q", len(header)) + header)
    refused(built[kind].load, folder, TENSORS, "nested deeper")


@pytest.mark.parametrize("kind", KINDS)
def test_oversized_manifest_is_refused_before_it_is_read(built, tmp_path, kind):
    folder = fresh_copy(built[kind], tmp_path)
    with open(folder / MANIFEST, "r+b") as fh:
        fh.seek(17 << 20)  # a sparse 17 MiB file: refusing it must not read it
        fh.write(b" ")
    refused(built[kind].load, folder, MANIFEST, "more than")


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_header_claiming_more_than_the_file(built, tmp_path, kind):
    folder = fresh_copy(built[kind], tmp_path)
    data = (folder / TENSORS).read_bytes()
    write_consistent(folder, TENSORS, struct.pack("<Q", 2**62) + data[8:])
    refused(built[kind].load, folder, TENSORS, "truncated")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_damage_loads_identically_or_is_refused(built, tmp_path_factory, data):
    """Cut, flip or insert bytes in any file of any kind: the load either gives the very same outputs (the byte
    did not matter, e.g. in a version string) or one ArtifactError line naming a file of the folder."""
    kind = data.draw(st.sampled_from(KINDS))
    name = data.draw(st.sampled_from(files_of(kind)))
    folder = fresh_copy(built[kind], tmp_path_factory.mktemp("h"))
    raw = bytearray((folder / name).read_bytes())
    at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    op = data.draw(st.sampled_from(["cut", "flip", "insert"]))
    if op == "cut":
        del raw[at: at + data.draw(st.integers(1, 64))]
    elif op == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    else:
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    (folder / name).write_bytes(bytes(raw))
    with watched(folder, []):
        try:
            model = built[kind].load(folder)
        except ArtifactError as exc:
            assert "\n" not in str(exc) and str(folder) in str(exc)
            return
    assert torch.equal(outputs_of(model, built[kind].inputs), built[kind].outputs)


@pytest.mark.parametrize("name, content", [("tokenizer.json", b'{"version": "1.0", "model": 5}'),
                                           ("tokenizer_config.json", b'[1, 2]')])
def test_tokenizer_files_rewritten_consistently(built, tmp_path, name, content):
    """Checksums made to agree with nonsense: the tokenizer is refused in one line naming its files (fewbits.load
    reads no tokenizer; load_with_tokenizer, which the commands use, does)."""
    from fewbits.loading import load_with_tokenizer

    folder = fresh_copy(built["codebook-bert"], tmp_path)
    write_consistent(folder, name, content)
    with watched(folder, []), pytest.raises(ArtifactError) as info:
        load_with_tokenizer(folder)
    assert "\n" not in str(info.value) and name in str(info.value)
