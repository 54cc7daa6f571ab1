"""The set-up step that extracts the rating files from the vaderSentiment sdist (never downloads in tests)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from fewbits.data import fetch
from fewbits.errors import FewbitsError


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fake_sdist(tmp_path: Path, drop: str | None = None) -> tuple[Path, str, str]:
    """An sdist laid out as vaderSentiment 3.3.2's, holding an inner archive with every wanted file (but ``drop``)."""
    files = {f"{fetch.ARCHIVE_FOLDER}/{name}": f"content of {name}\r\n".encode() for name in fetch.WANTED
             if name != drop}
    files[f"{fetch.ARCHIVE_FOLDER}/vader_icwsm2014_final.pdf"] = b"%PDF"  # not extracted
    inner = _tar_gz(files)
    outer = _tar_gz({fetch.ARCHIVE_MEMBER: inner, "vaderSentiment-3.3.2/setup.py": b""})
    path = tmp_path / fetch.SDIST_NAME
    path.write_bytes(outer)
    return path, hashlib.sha256(outer).hexdigest(), hashlib.sha256(inner).hexdigest()


def test_extracts_only_the_rating_files(tmp_path: Path) -> None:
    sdist, outer, inner = fake_sdist(tmp_path)
    folder = fetch.extract_ratings(sdist, tmp_path / "data", sdist_sha256=outer, archive_sha256=inner)
    assert folder == tmp_path / "data" / fetch.ARCHIVE_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == sorted(fetch.WANTED)
    assert (folder / "tweets_GroundTruth.txt").read_bytes() == b"content of tweets_GroundTruth.txt\r\n"
    assert len(fetch.WANTED) == 9


def test_checksums_are_checked(tmp_path: Path) -> None:
    sdist, outer, inner = fake_sdist(tmp_path)
    with pytest.raises(FewbitsError, match=f"has sha256 {outer}, not the expected {fetch.SDIST_SHA256}"):
        fetch.fetch_sentences(tmp_path / "data", sdist)  # the real checksum: a fake sdist is refused
    with pytest.raises(FewbitsError, match="additional_resources/hutto_ICWSM_2014.tar.gz has sha256"):
        fetch.extract_ratings(sdist, tmp_path / "data", sdist_sha256=outer, archive_sha256="0" * 64)
    assert not (tmp_path / "data").exists()


def test_missing_member(tmp_path: Path) -> None:
    sdist, outer, inner = fake_sdist(tmp_path, drop="nytEditorialSnippets_GroundTruth.txt")
    with pytest.raises(FewbitsError, match="does not hold the expected rating files .*nytEditorial"):
        fetch.extract_ratings(sdist, tmp_path / "data", sdist_sha256=outer, archive_sha256=inner)


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(command: list[str], **kw: object) -> subprocess.CompletedProcess:
        assert command[2:9] == ["pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                                "vaderSentiment==3.3.2"]
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(fetch.subprocess, "run", refuse)
    with pytest.raises(FewbitsError, match=r"failed \(ERROR: No matching distribution\).*--sdist"):
        fetch.fetch_sentences(tmp_path)


def test_download_then_extract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist, outer, inner = fake_sdist(tmp_path)

    def download(command: list[str], **kw: object) -> subprocess.CompletedProcess:
        target = Path(command[command.index("-d") + 1])
        (target / fetch.SDIST_NAME).write_bytes(sdist.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", download)
    monkeypatch.setattr(fetch, "SDIST_SHA256", outer)
    monkeypatch.setattr(fetch, "ARCHIVE_SHA256", inner)
    folder = fetch.fetch_sentences(tmp_path / "root")
    assert (folder / "_README_.txt").is_file()
