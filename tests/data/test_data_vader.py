"""The VADER lexicon tasks on the real file shipped by vaderSentiment, and on small files."""

from __future__ import annotations

import pytest

from fewbits.data import TASKS, load_task
from fewbits.data.vader import lexicon_path, read_lexicon
from fewbits.errors import FewbitsError, FewbitsValueError


def test_real_lexicon_parses_every_entry():
    entries = read_lexicon(lexicon_path())
    assert len(entries) == 7520
    assert all(len(e.ratings) == 10 and -4 <= min(e.ratings) <= max(e.ratings) <= 4 for e in entries)
    # the stored mean is the mean of the ten ratings rounded to 0.1, except one line of the file
    # ('lmfao': ratings average 2.4, stored 2.5), which shows the columns are parsed in place
    assert [e.token for e in entries if abs(sum(e.ratings) / 10 - e.mean) > 0.051] == ["lmfao"]


def test_binary_labels_follow_the_mean_and_drop_the_middle():
    task = load_task("vader")
    means = {e.token: e.mean for e in read_lexicon(lexicon_path())}
    rows = [ex for split in task.splits.values() for ex in split]
    assert len(rows) == 6817  # 3,000 tokens >= 0.5 and 3,817 <= -0.5
    for ex in rows:
        assert ex.text_b is None and ex.label in (0, 1)
    single = [ex for ex in rows if ex.text_a not in {"d:", "d="}]  # listed twice with opposite signs
    assert all((means[ex.text_a] >= 0.5) == (ex.label == 1) for ex in single if ex.text_a in means)
    assert task.num_labels == 2 and task.main_metric == "accuracy" and task.eval_split == "dev"


def test_regression_keeps_every_entry_with_its_mean():
    task = load_task("vader-regression")
    assert sum(len(s) for s in task.splits.values()) == 7520
    assert task.is_regression and task.main_metric == "pearson"
    assert {type(ex.label) for ex in task.splits["train"]} == {float}


def test_split_is_deterministic_disjoint_and_about_80_20():
    a, b = load_task("vader", seed=3), load_task("vader", seed=3)
    assert list(a.splits["dev"]) == list(b.splits["dev"])
    other = load_task("vader", seed=4)
    assert list(other.splits["dev"]) != list(a.splits["dev"])
    reg = load_task("vader-regression", seed=3)
    train_tokens = {ex.text_a for ex in reg.splits["train"]}
    dev_tokens = {ex.text_a for ex in reg.splits["dev"]}
    assert not train_tokens & dev_tokens  # duplicated tokens never straddle the split
    assert len(dev_tokens) == round(7506 * 0.2)
    # the binary task's dev rows are exactly the regression dev rows that it keeps
    assert {ex.text_a for ex in a.splits["dev"]} <= dev_tokens
    half = load_task("vader", seed=3, dev_fraction=0.5)
    assert abs(len(half.splits["dev"]) - len(half.splits["train"])) < 200


def write_lexicon(path, lines):
    path.write_bytes("\r\n".join(lines).encode())


def test_small_file_in_data_dir(tmp_path):
    write_lexicon(tmp_path / "vader_lexicon.txt", [
        "good\t1.9\t0.9\t[2, 2, 1, 3, 2, 2, 1, 2, 2, 2]",
        "meh\t-0.3\t0.5\t[0, -1, 0, 0, -1, 0, 0, -1, 0, 0]",
        "bad\t-2.5\t0.5\t[-2, -3, -2, -3, -2, -3, -2, -3, -2, -3]",
        ":)\t2.0\t0.6\t[2, 2, 2, 2, 2, 3, 1, 2, 2, 2]",
        "sad\t-2.1\t0.7\t[-2, -2, -2, -3, -1, -2, -2, -2, -3, -2]",
    ])
    task = load_task("vader", data_dir=tmp_path, dev_fraction=0.4)
    rows = {ex.text_a: ex.label for split in task.splits.values() for ex in split}
    assert rows == {"good": 1, "bad": 0, ":)": 1, "sad": 0}
    reg = load_task("vader-regression", data_dir=tmp_path / "vader_lexicon.txt", dev_fraction=0.4)
    assert len(reg.splits["dev"]) == 2 and len(reg.splits["train"]) == 3


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FewbitsError, match="not found at .*missing"):
        load_task("vader", data_dir=tmp_path / "missing")
    write_lexicon(tmp_path / "vader_lexicon.txt", ["good\t1.9\t0.9\t[2, 2]", "bad\tx\t0.5\t[-2]"])
    with pytest.raises(FewbitsError, match=r"vader_lexicon.txt, line 2"):
        load_task("vader", data_dir=tmp_path)
    (tmp_path / "vader_lexicon.txt").write_bytes(b"caf\xe9\t1.0\t0.5\t[1]")
    with pytest.raises(FewbitsError, match="vader_lexicon.txt is not UTF-8 text"):
        load_task("vader", data_dir=tmp_path)
    with pytest.raises(FewbitsValueError, match="'dev_fraction' parameter of vader must be a float in"):
        load_task("vader", dev_fraction=1.5)
    with pytest.raises(FewbitsValueError, match="one of seed, dev_fraction. Got shuffle"):
        load_task("vader", shuffle=True)


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(FewbitsValueError) as info:
        load_task("glue/sst5")
    assert "glue/sst5" in str(info.value)
    assert all(name in str(info.value) for name in TASKS)
