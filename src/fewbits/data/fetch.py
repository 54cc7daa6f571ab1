"""Set-up step: fetch the human-rated sentences (``hutto_ICWSM_2014``) from the vaderSentiment 3.3.2 sdist.

The sdist is a registry download like any package (``pip download --no-deps --no-binary :all:
vaderSentiment==3.3.2``); its sha256 and that of the inner ``hutto_ICWSM_2014.tar.gz`` are checked
against :data:`SDIST_SHA256` and :data:`ARCHIVE_SHA256`, and only the eight rating files and the README
are extracted. Run once during set-up (``fewbits data fetch`` or ``make data``); tasks never download.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from fewbits.data.sentences import ARCHIVE_FOLDER, SETS, data_root
from fewbits.errors import FewbitsError

SDIST_REQUIREMENT = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
ARCHIVE_MEMBER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
ARCHIVE_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
WANTED = [f"{stem}_{kind}.txt" for stem in SETS.values() for kind in ("GroundTruth", "anonDataRatings")] + [
    "_README_.txt"]


def download_sdist(folder: Path) -> Path:
    """``pip download`` the sdist into ``folder`` (the registry configured for pip); returns its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               SDIST_REQUIREMENT, "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    path = folder / SDIST_NAME
    if done.returncode != 0 or not path.is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FewbitsError(f"`{' '.join(command[2:])}` failed ({last[0]}); check that pip reaches a package index, "
                           f"or download {SDIST_NAME} elsewhere and pass it with --sdist.")
    return path


def _checked(data: bytes, expected: str, what: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise FewbitsError(f"{what} has sha256 {digest}, not the expected {expected}; it is not the vaderSentiment "
                           "3.3.2 source release. Delete it and fetch again.")
    return data


def extract_ratings(sdist: Path, root: Path, *, sdist_sha256: str | None = None,
                    archive_sha256: str | None = None) -> Path:
    """Check ``sdist`` and its inner archive (against the release's checksums unless given), extract the rating
    files into ``root/hutto_ICWSM_2014/``."""
    archive_sha256 = archive_sha256 or ARCHIVE_SHA256
    outer = _checked(Path(sdist).read_bytes(), sdist_sha256 or SDIST_SHA256, str(sdist))
    try:
        with tarfile.open(fileobj=io.BytesIO(outer), mode="r:gz") as tar:
            member = tar.extractfile(ARCHIVE_MEMBER)
            inner = _checked(member.read(), archive_sha256, f"{sdist}:{ARCHIVE_MEMBER}") if member else None
        if inner is None:
            raise KeyError(ARCHIVE_MEMBER)
        target = root / ARCHIVE_FOLDER
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz") as tar:
            for name in WANTED:
                member = tar.extractfile(f"{ARCHIVE_FOLDER}/{name}")
                if member is None:
                    raise KeyError(name)
                (target / name).write_bytes(member.read())
    except (tarfile.TarError, KeyError, EOFError, OSError) as exc:
        raise FewbitsError(f"{sdist} does not hold the expected rating files ({type(exc).__name__}: {exc}).") from None
    return target


def fetch_sentences(data_dir: str | Path | None = None, sdist: str | Path | None = None) -> Path:
    """Fetch (or take ``sdist``), verify and extract the rating files; returns the folder they are in."""
    root = data_root(data_dir)
    if sdist is not None:
        return extract_ratings(Path(sdist), root)
    with tempfile.TemporaryDirectory(prefix="fewbits-fetch-") as tmp:
        return extract_ratings(download_sdist(Path(tmp)), root)
