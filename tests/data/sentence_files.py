"""Rating files in exactly the format of hutto_ICWSM_2014 (CRLF, no final newline, UTF-8, a BOM in the ratings
file), for the tests of the sentence tasks and of `fewbits data`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewbits.data import sentences as S

FOLDER = S.ARCHIVE_FOLDER


def write(path: Path, lines: list[str], bom: bool = False) -> Path:
    """Write ``lines`` as the archive does: CRLF between lines, none after the last, UTF-8 (optional BOM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "\r\n".join(lines).encode("utf-8"))
    return path


def rated_set(n: int = 1100, seed: int = 0) -> list[tuple[str, float, str]]:
    """``n`` (id, mean, text) rows with ids '<doc>_<i>', means on -4..4 and a few repeated texts."""
    rng = np.random.default_rng(seed)
    means = np.round(rng.uniform(-3.5, 3.5, n), 2)
    rows = [(f"{i // 10 + 1}_{i % 10 + 1}", float(m), f"sentence number {i} clichés") for i, m in enumerate(means)]
    rows[5] = (rows[5][0], rows[5][1], rows[3][2])  # a repeated text
    rows[7] = (rows[7][0], rows[7][1], rows[7][2] + "  ")  # a trailing space
    return rows


def write_set(root: Path, name: str = "nyt", rows: list | None = None) -> Path:
    rows = rated_set() if rows is None else rows
    stem = S.SETS[name]
    write(root / FOLDER / f"{stem}_GroundTruth.txt", [f"{i}\t{m}\t{t}" for i, m, t in rows])
    write(root / FOLDER / f"{stem}_anonDataRatings.txt",
          [f"{i}\t{m}\t0.5\t[{', '.join(['1', '-1'] * 10)}]" for i, m, _ in rows], bom=True)
    return root
