"""`fewbits data show` and `fewbits data fetch` on files the tests write (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewbits.cli import main
from fewbits.data import sentences as S
from sentence_files import rated_set, write_set


def test_show_prints_counts_priors_and_hashes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = rated_set()
    for name in S.SETS:
        write_set(tmp_path, name, rows)
    assert main(["data", "show", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = S.set_summary("movies", tmp_path)
    prior = summary["positive"] / summary["kept"]
    assert f"sentences/movies: {len(rows)} items in {tmp_path / S.ARCHIVE_FOLDER}" in out
    assert f"polarity: {summary['kept']} kept with |mean| >= 0.5, {summary['positive']} positive (prior {prior:.4f})" \
        in out
    assert f"dev      {summary['splits']['dev']['items']} items (regression)" in out
    assert summary["splits"]["test"]["sha256"] in out and out.count("NOT the recorded file") == 4
    assert "raters per item: 20-20; GroundTruth mean differs from the ratings file's in 0 items" in out


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "show", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewbits data: error: sentence ratings not found") and "fewbits data fetch" in err
    (tmp_path / "fake.tar.gz").write_bytes(b"not an sdist")
    assert main(["data", "fetch", "--data-dir", str(tmp_path), "--sdist", str(tmp_path / "fake.tar.gz")]) == 2
    assert "is not the vaderSentiment 3.3.2 source release" in capsys.readouterr().err
    assert main(["data", "show", "--sdist", "x"]) == 2
    assert "--sdist goes with fetch" in capsys.readouterr().err
