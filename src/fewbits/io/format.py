"""The artifact format on disk (version 2) and strict reading of its manifest.

An artifact is a directory: ``fewbits.json`` (the manifest), ``fewbits.safetensors`` (every tensor
of the method) and, for Hugging Face models, ``config.json`` plus any tokenizer files. Manifest::

    {"format": "fewbits-artifact", "format_version": 2, "fewbits_version": "0.1.0",
     "method": "codebook" | "qat" | "mask" | <a registered method>,
     "base": {"kind": "transformers", "class": "BertForSequenceClassification", "config": "config.json"}
             | {"kind": "builtin", "name": "cnn1d", "args": {...}} | {"kind": "module", "class": "MyNet"}
             | {"kind": "artifact", "sha256": "<the base's weights>", "source": "<where it was>"},
     "files": {"fewbits.safetensors": {"bytes": N, "sha256": "..."}, "config.json": {...}, ...},
     "tokenizer_files": ["tokenizer.json", ...],
     "data": {...the method's own section (see its serialize.py)...}}

``files`` lists every file of the artifact but the manifest, with its size and checksum: a reader
checks each size against the file system before reading it, and each checksum after. Version 1
artifacts (written before methods had one container) are read by :mod:`fewbits.io.v1`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from fewbits._util.tensorfile import is_int
from fewbits._util.untrusted import parse_json, read_member
from fewbits.errors import ArtifactError

FORMAT = "fewbits-artifact"
FORMAT_VERSION = 2
MANIFEST_FILE = "fewbits.json"
TENSORS_FILE = "fewbits.safetensors"
CONFIG_FILE = "config.json"
BASE_KINDS = ("transformers", "builtin", "module", "artifact")
MAX_MANIFEST_BYTES = 16 << 20  # the largest models' manifests are under 1 MiB


def fail(path: Path, problem: str, fix: str = "save the model again") -> ArtifactError:
    """The one-line ArtifactError naming the file."""
    return ArtifactError(f"{path}: {problem}; {fix}.")


def _expect(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise fail(path, f"malformed manifest: {what}")


def plain_file_name(name: object) -> bool:
    """A file name inside the artifact folder (no folders, no hidden files)."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def read_manifest_text(directory: Path) -> dict[str, Any]:
    """Parse ``fewbits.json`` of ``directory`` as JSON (any format or version); errors name the file."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such artifact directory; give a directory written by fewbits.save.")
    if not os.path.lexists(path):
        raise fail(path, "missing, so this is not a fewbits artifact", "give a directory written by fewbits.save")
    data = read_member(directory, MANIFEST_FILE, max_bytes=MAX_MANIFEST_BYTES, fix="save the model again")
    return parse_json(data, path, fix="save the model again")


def check_version(manifest: dict[str, Any], path: Path) -> int:
    """The manifest's format version, refused with one line when it is invalid or newer than this fewbits reads."""
    version = manifest.get("format_version")
    if not is_int(version, 1):
        raise fail(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise fail(path, f"written in format version {version} (by fewbits {manifest.get('fewbits_version')}), "
                         f"newer than the version {FORMAT_VERSION} this fewbits reads", "upgrade fewbits")
    return version


def check_base(base: object, path: Path) -> None:
    """The ``base`` entry: how to rebuild (or where to find) the model the method applies to."""
    _expect(isinstance(base, dict) and base.get("kind") in BASE_KINDS, path, f"'base.kind' must be one of {BASE_KINDS}")
    if base["kind"] == "transformers":
        _expect(isinstance(base.get("class"), str) and base.get("config") == CONFIG_FILE, path,
                "'base' needs 'class' and 'config': 'config.json'")
    elif base["kind"] == "builtin":
        _expect(isinstance(base.get("name"), str) and isinstance(base.get("args"), dict), path,
                "'base' needs 'name' and 'args'")
    elif base["kind"] == "artifact":
        _expect(isinstance(base.get("sha256"), str) and isinstance(base.get("source", ""), str), path,
                "'base' needs 'sha256' and 'source'")
    else:
        _expect(isinstance(base.get("class"), str), path, "'base' needs 'class'")


def check_files(files: object, path: Path, tensors_file: str = TENSORS_FILE) -> None:
    """``files``: plain names mapped to a size and a sha256 hex digest, the tensors file among them."""
    _expect(isinstance(files, dict) and all(
        plain_file_name(name) and name != MANIFEST_FILE and isinstance(info, dict) and is_int(info.get("bytes"))
        and isinstance(info.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", info["sha256"]) is not None
        for name, info in files.items()), path, "'files' must map plain file names to bytes and a sha256 hex digest")
    _expect(tensors_file in files and files[tensors_file]["bytes"] >= 8, path,
            f"'files' needs '{tensors_file}' with at least 8 bytes")


def check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Every field of a version 2 manifest but the method's own section (its method checks that)."""
    _expect(isinstance(manifest.get("method"), str), path, "'method' must name a compression method")
    check_base(manifest.get("base"), path)
    check_files(manifest.get("files"), path)
    _expect(manifest["base"]["kind"] != "transformers" or CONFIG_FILE in manifest["files"], path,
            f"'files' needs '{CONFIG_FILE}' for a transformers base")
    files = manifest.get("tokenizer_files")
    _expect(isinstance(files, list) and all(plain_file_name(f) and f in manifest["files"] for f in files), path,
            "'tokenizer_files' must be a list of plain file names listed in 'files'")
    _expect(isinstance(manifest.get("data"), dict), path, "'data' must be an object")
