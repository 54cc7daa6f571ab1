"""Reading artifacts of format version 1 (fewbits 0.1.0 before the one container), as version 2 manifests.

Version 1 had three layouts: a codebook artifact (``fewbits.json`` with ``layers`` at the top and
one checksum for ``fewbits.safetensors``), the same plus a ``qat.json`` beside it (a QAT export:
the activation steps), and a task mask (``"format": "fewbits-mask"``, tensors in ``mask.safetensors``).
:func:`upgrade` turns each into the version 2 form in memory, so one reader serves all; files that
version 1 did not checksum (``config.json``, tokenizer files) are listed with ``sha256`` None.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fewbits._util.untrusted import read_json_member
from fewbits.errors import ArtifactError
from fewbits.io.format import FORMAT, MANIFEST_FILE, TENSORS_FILE, check_base, check_files, fail, plain_file_name

MASK_FORMAT = "fewbits-mask"
MASK_TENSORS_FILE = "mask.safetensors"
QAT_FILE = "qat.json"


def _tensors(manifest: dict[str, Any], path: Path, name: str) -> dict[str, Any]:
    tensors = manifest.get("tensors")
    if not (isinstance(tensors, dict) and tensors.get("file") == name):
        raise fail(path, f"malformed manifest: 'tensors' needs file '{name}', bytes and a sha256 hex digest")
    files = {name: {"bytes": tensors.get("bytes"), "sha256": tensors.get("sha256")}}
    check_files(files, path, name)
    return files


def _upgrade_mask(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    version = manifest.get("format_version")
    if version != 1:
        raise ArtifactError(f"{path}: mask format version {version!r}; this fewbits reads up to 1 (upgrade fewbits).")
    base = manifest.get("base")
    if not isinstance(base, dict):
        raise ArtifactError(f"{path}: malformed mask manifest; train the mask again.")
    base = {"kind": "artifact", "sha256": base.get("sha256"), "source": base.get("source", "")}
    check_base(base, path)
    data = {k: manifest.get(k) for k in ("masks", "head")}
    data["info"] = manifest.get("info", {})
    return {"format_version": 1, "method": "mask", "base": base, "files": _tensors(manifest, path, MASK_TENSORS_FILE),
            "tokenizer_files": [], "data": data, "tensors_file": MASK_TENSORS_FILE}


def _qat_section(directory: Path) -> dict[str, Any] | None:
    path = directory / QAT_FILE
    if not os.path.lexists(path):
        return None
    qat = read_json_member(directory, QAT_FILE, fix="save the model again")
    if not isinstance(qat.get("spec"), dict):
        raise fail(path, "malformed QAT manifest (no 'spec')")
    return {"config": qat["spec"], "activations": qat.get("activations", {})}


def upgrade(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    """A version 1 manifest of ``directory`` as the version 2 fields (plus ``tensors_file``); errors name the file."""
    path = directory / MANIFEST_FILE
    if manifest.get("format") == MASK_FORMAT:
        return _upgrade_mask(manifest, path)
    if manifest.get("format") != FORMAT:
        raise fail(path, f"not a fewbits manifest (no \"format\": \"{FORMAT}\")")
    check_base(manifest.get("base"), path)
    files = _tensors(manifest, path, TENSORS_FILE)
    tokenizer = manifest.get("tokenizer_files")
    if not (isinstance(tokenizer, list) and all(plain_file_name(f) for f in tokenizer)):
        raise fail(path, "malformed manifest: 'tokenizer_files' must be a list of plain file names")
    extra = [*tokenizer, *(["config.json"] if manifest["base"]["kind"] == "transformers" else [])]
    files.update({name: {"bytes": None, "sha256": None} for name in extra})
    data = {k: manifest.get(k) for k in ("codebook_dtype", "layers", "aliases")}
    qat = _qat_section(directory)
    if qat is not None:
        data.update(qat)
    return {"format_version": 1, "method": "codebook" if qat is None else "qat", "base": manifest["base"],
            "files": files, "tokenizer_files": tokenizer, "data": data, "tensors_file": TENSORS_FILE}
