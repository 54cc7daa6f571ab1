"""The human-rated sentence tasks, on small files written in exactly the format of hutto_ICWSM_2014.

The real files end lines in CRLF with no newline after the last line, are UTF-8 (movie sentences hold
'clichés'), one ratings file starts with a UTF-8 BOM, ids are numbers or '<doc>_<sentence>', and some texts
repeat or end in spaces. The real archive is used only when it is already on this machine (never downloaded).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fewbits.data import load_task
from fewbits.data import sentences as S
from fewbits.data.sentence_splits import RECORDED
from fewbits.errors import FewbitsError
from sentence_files import rated_set, write, write_set

FOLDER = S.ARCHIVE_FOLDER


def test_read_ground_truth_real_format(tmp_path: Path) -> None:
    path = write(tmp_path / "tweets_GroundTruth.txt",
                 ["1\t2.726315789\tSomehow I was blessed &amp; lucky.", "2\t-0.6\tEffective but too tepid biopic ",
                  "3_1\t0\tthe clichés disappear"])
    items = S.read_ground_truth(path)
    assert items == [S.RatedText("1", 2.726315789, "Somehow I was blessed &amp; lucky."),
                     S.RatedText("2", -0.6, "Effective but too tepid biopic "),
                     S.RatedText("3_1", 0.0, "the clichés disappear")]


def test_read_ratings_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "r.txt", ["1_1\t-0.9\t0.76811\t[0, -1, 0, -2]", "1_2\t4\t0\t[4, 4]"], bom=True)
    assert S.read_ratings(path) == {"1_1": S.RaterRecord(-0.9, 0.76811, (0, -1, 0, -2)),
                                    "1_2": S.RaterRecord(4.0, 0.0, (4, 4))}


@pytest.mark.parametrize("line, problem", [
    ("1\t0.5", "2 tab-separated fields instead of 3"),
    ("1\tgood\ttext", "mean rating 'good' is not a number"),
    ("1\t4.5\ttext", "mean rating 4.5 outside -4..4"),
    ("\t1\ttext", "id .. is empty or repeated"),
])
def test_malformed_ground_truth(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path / "g.txt", ["7\t1.0\tfine", line])
    with pytest.raises(FewbitsError, match=f"line 2: not a GroundTruth line: {problem}"):
        S.read_ground_truth(path)


def test_malformed_ratings_and_encoding(tmp_path: Path) -> None:
    with pytest.raises(FewbitsError, match="line 1: not a ratings line"):
        S.read_ratings(write(tmp_path / "r.txt", ["1\t1\t0\t[1, x]"]))
    with pytest.raises(FewbitsError, match="outside -4..4"):
        S.read_ratings(write(tmp_path / "r2.txt", ["1\t1\t0\t[5]"]))
    (tmp_path / "latin.txt").write_bytes("1\t1\tclich\xe9s".encode("latin-1"))
    with pytest.raises(FewbitsError, match="is not UTF-8"):
        S.read_ground_truth(tmp_path / "latin.txt")
    with pytest.raises(FewbitsError, match="holds no rated sentences"):
        S.read_ground_truth(write(tmp_path / "empty.txt", ["", ""]))


def test_missing_archive_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(FewbitsError, match=r"sentence ratings not found: .*fewbits data fetch.*make data"):
        load_task("sentences/movies", tmp_path)


def test_data_root_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEWBITS_DATA", str(tmp_path))
    assert S.data_root() == tmp_path and S.data_root("~/x") == Path.home() / "x"
    monkeypatch.delenv("FEWBITS_DATA")
    assert S.data_root() == Path.home() / ".cache" / "fewbits"


def test_split_is_stratified_grouped_and_fixed(tmp_path: Path) -> None:
    rows = rated_set()
    items = [S.RatedText(*r) for r in rows]
    split = S.split_items(items)
    assert split == S.split_items(items)  # made once: the same every time
    assert sorted(i for rows_ in split.values() for i in rows_) == list(range(len(items)))
    side = {i: name for name, rows_ in split.items() for i in rows_}
    assert side[3] == side[5]  # one text, one side
    strata = np.array([S._stratum(it.mean) for it in items])
    for name, want in (("dev", S.DEV_ITEMS), ("test", S.TEST_ITEMS)):
        groups = len({items[i].text.strip() for i in split[name]})
        assert groups == want
        shares = np.bincount(strata[split[name]], minlength=3) / len(split[name])
        assert np.abs(shares - np.bincount(strata, minlength=3) / len(items)).max() < 0.01


def test_allocate_largest_remainders() -> None:
    assert S._allocate(10, [1, 1, 1]) == [4, 3, 3]
    assert S._allocate(200, [500, 300, 100]) == [111, 67, 22]
    assert sum(S._allocate(800, [3, 1, 7])) == 800


def test_split_too_small(tmp_path: Path) -> None:
    write_set(tmp_path, rows=rated_set(900))
    with pytest.raises(FewbitsError, match="too few for a dev split of 200"):
        load_task("sentences/nyt", tmp_path)


def test_tasks_binary_and_regression(tmp_path: Path) -> None:
    rows = rated_set()
    write_set(tmp_path, rows=rows)
    binary, regression = load_task("sentences/nyt", tmp_path), load_task("sentences/nyt-regression", tmp_path)
    assert binary.num_labels == 2 and binary.main_metric == "accuracy" and binary.eval_split == "dev"
    assert regression.is_regression and regression.main_metric == "pearson"
    split = S.split_items([S.RatedText(*r) for r in rows])
    for name in S.SPLITS:
        expected = [(t, m) for k, (_, m, t) in enumerate(rows) if k in set(split[name])]
        assert [(e.text_a, e.label) for e in regression.splits[name]] == expected
        kept = [(t, int(m >= 0.5)) for t, m in expected if abs(m) >= 0.5]
        assert [(e.text_a, e.label) for e in binary.splits[name]] == kept
    assert binary.info["verified"] is False and binary.info["items"] == len(rows)
    ids = [rows[k][0] for k in split["dev"]]
    assert binary.info["splits"]["dev"]["sha256"] == hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()
    assert binary.info["file_sha256"] == hashlib.sha256(
        (tmp_path / FOLDER / "nytEditorialSnippets_GroundTruth.txt").read_bytes()).hexdigest()
    # the folder itself also works as data_dir
    assert len(load_task("sentences/nyt", tmp_path / FOLDER).splits["dev"]) == len(binary.splits["dev"])


def test_recorded_file_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path, "amazon")
    task = load_task("sentences/amazon", tmp_path)
    record = {"file_sha256": task.info["file_sha256"], "items": task.info["items"], "splits": task.info["splits"]}
    monkeypatch.setitem(S.RECORDED, "amazon", record)
    assert load_task("sentences/amazon", tmp_path).info["verified"] is True
    wrong = {**record, "splits": {**record["splits"], "dev": {"items": 1, "sha256": "0" * 64}}}
    monkeypatch.setitem(S.RECORDED, "amazon", wrong)
    with pytest.raises(FewbitsError, match="differs from the recorded one"):
        load_task("sentences/amazon", tmp_path)


def test_set_summary_counts(tmp_path: Path) -> None:
    rows = rated_set()
    write_set(tmp_path, "tweets", rows)
    s = S.set_summary("tweets", tmp_path)
    means = np.array([m for _, m, _ in rows])
    assert s["kept"] == int((np.abs(means) >= 0.5).sum()) and s["positive"] == int((means >= 0.5).sum())
    assert sum(b["items"] for b in s["binary_splits"].values()) == s["kept"]
    assert s["raters"] == {"min": 20, "max": 20, "items_rated": len(rows), "mean_differs": 0}


def test_recorded_table_is_consistent() -> None:
    assert sorted(RECORDED) == sorted(S.SETS)
    for record in RECORDED.values():
        assert sum(v["items"] for v in record["splits"].values()) == record["items"]
        assert all(len(v["sha256"]) == 64 for v in record["splits"].values())
    assert {k: v["items"] for k, v in RECORDED.items()} == {"movies": 10605, "tweets": 4200, "nyt": 5190,
                                                             "amazon": 3708}


REAL = S.data_root() / FOLDER


@pytest.mark.skipif(not (REAL / "tweets_GroundTruth.txt").is_file(), reason="rating files not fetched here")
def test_real_files_match_the_recorded_splits() -> None:
    for name in S.SETS:
        items, split, record = S.load_set(name)
        assert record["verified"] and record["splits"] == RECORDED[name]["splits"]
    summary = S.set_summary("tweets")
    assert (summary["kept"], summary["positive"]) == (3432, 2345)
    assert summary["raters"]["mean_differs"] == 199 and summary["raters"]["max"] == 99


def test_task_names_and_options(tmp_path: Path) -> None:
    from fewbits.data import TASKS
    from fewbits.errors import FewbitsValueError

    assert [t for t in TASKS if t.startswith("sentences/")] == S.TASK_NAMES == [
        "sentences/movies", "sentences/movies-regression", "sentences/tweets", "sentences/tweets-regression",
        "sentences/nyt", "sentences/nyt-regression", "sentences/amazon", "sentences/amazon-regression"]
    write_set(tmp_path, "movies")
    with pytest.raises(FewbitsValueError, match="none \\(this task takes no options\\). Got seed instead"):
        load_task("sentences/movies", tmp_path, seed=1)


def test_repeated_id(tmp_path: Path) -> None:
    with pytest.raises(FewbitsError, match="line 3: not a GroundTruth line: id '1' is empty or repeated"):
        S.read_ground_truth(write(tmp_path / "g.txt", ["1\t1\ta", "2\t1\tb", "1\t2\tc"]))
