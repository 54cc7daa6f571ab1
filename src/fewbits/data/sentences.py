"""Human-rated sentences (Hutto & Gilbert, ICWSM 2014) as offline tasks, from the vaderSentiment 3.3.2 sdist.

The source release of ``vaderSentiment`` 3.3.2 holds ``additional_resources/hutto_ICWSM_2014.tar.gz``;
``fewbits data fetch`` (or ``make data``) downloads the sdist through pip, checks both sha256s and
extracts the rating files into ``<root>/hutto_ICWSM_2014/`` (root: ``--data-dir``, else
``$FEWBITS_DATA``, else ``~/.cache/fewbits``). Four sets, two files each::

    <set>_GroundTruth.txt      id<TAB>mean rating (-4..+4)<TAB>text
    <set>_anonDataRatings.txt  id<TAB>mean<TAB>sd<TAB>[r1, r2, ...]    (every rater's integer rating)

with the sets movies = ``movieReviewSnippets`` (10,605 sentences from Pang & Lee's reviews), tweets =
``tweets`` (4,200), nyt = ``nytEditorialSnippets`` (5,190) and amazon = ``amazonReviewSnippets`` (3,708).
The files as shipped: CRLF line ends, no newline after the last line, UTF-8 (the movie sentences hold
151 non-ASCII characters such as 'clichés'), a UTF-8 byte-order mark at the start of
``amazonReviewSnippets_anonDataRatings.txt``, ids that are numbers (tweets, movies) or
``<document>_<sentence>`` (nyt, amazon), texts with HTML entities (``&amp;``), quotes and trailing spaces
kept as they are. In 199 tweets the GroundTruth mean differs from the ratings file's (by up to 1.13): the
tasks use the GroundTruth files, as VADER's paper did.

Tasks, per set ``S``:

- ``sentences/S``: binary polarity, mean >= 0.5 positive (1), mean <= -0.5 negative (0), the rest dropped;
- ``sentences/S-regression``: the mean rating, scored like STS-B (Pearson, Spearman).

Splits are made once, the same for both tasks of a set: items with the same text (after ``str.strip``)
form one group, listed in order of first appearance; each group's stratum is its first item's mean
(<= -0.5, in between, >= 0.5). One ``numpy.random.default_rng(SPLIT_SEED)`` then draws, for each stratum
in that order, ``permutation(number of its groups)``: the groups at its first ``n_test`` positions go to
'test', the next ``n_dev`` to 'dev', the rest to 'train', where ``n_test`` and ``n_dev`` are the stratum's
shares of :data:`TEST_ITEMS` (800) and :data:`DEV_ITEMS` (200) groups, proportional to its number of
groups (floors, then one more to the largest remainders, ties to the earlier stratum).
Each split is identified by the sha256 of its ids, one per line in file order, each line ending in
``\\n``. The hashes of the real files are recorded in :mod:`fewbits.data.sentence_splits` and checked
whenever the real file (by its sha256) is read, so every number refers to the same examples.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewbits.data.base import Task, TextExample
from fewbits.data.metrics import accuracy_metrics, correlation_metrics
from fewbits.data.sentence_splits import RECORDED
from fewbits.errors import FewbitsError

ARCHIVE_FOLDER = "hutto_ICWSM_2014"
SETS: dict[str, str] = {"movies": "movieReviewSnippets", "tweets": "tweets", "nyt": "nytEditorialSnippets",
                        "amazon": "amazonReviewSnippets"}
TASK_NAMES: list[str] = [f"sentences/{s}{suffix}" for s in SETS for suffix in ("", "-regression")]
POSITIVE_AT = 0.5  # mean >= 0.5: positive
NEGATIVE_AT = -0.5  # mean <= -0.5: negative
SPLIT_SEED = 0
DEV_ITEMS = 200  # groups (distinct texts) in 'dev' per set: small, so that CPU sweeps can evaluate often
TEST_ITEMS = 800  # groups in 'test' per set
SPLITS = ("train", "dev", "test")
FETCH_HINT = "fetch them once with `fewbits data fetch` (or `make data`)"


@dataclass(frozen=True)
class RatedText:
    """One GroundTruth line: the item's id, its mean rating and its text."""

    id: str
    mean: float
    text: str


@dataclass(frozen=True)
class RaterRecord:
    """One ratings-file line: the mean and standard deviation of the item's ratings, and every rating."""

    mean: float
    sd: float
    ratings: tuple[int, ...]


def data_root(data_dir: str | Path | None = None) -> Path:
    """The folder that holds ``hutto_ICWSM_2014/``: ``data_dir``, else ``$FEWBITS_DATA``, else ``~/.cache/fewbits``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("FEWBITS_DATA") or Path.home() / ".cache" / "fewbits").expanduser()


def set_files(name: str, data_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(GroundTruth file, ratings file) of set ``name``; ``data_dir`` may also be the archive folder itself."""
    root = data_root(data_dir)
    folder = root if (root / f"{SETS[name]}_GroundTruth.txt").is_file() else root / ARCHIVE_FOLDER
    return folder / f"{SETS[name]}_GroundTruth.txt", folder / f"{SETS[name]}_anonDataRatings.txt"


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every non-empty line of a UTF-8 file (a BOM dropped, CRLF or LF ends)."""
    if not path.is_file():
        raise FewbitsError(f"sentence ratings not found: {path}; {FETCH_HINT}.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FewbitsError(f"{path} is not UTF-8 text ({exc}); {FETCH_HINT}.") from None
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    return [(n, line) for n, line in lines if line]


def _malformed(path: Path, number: int, what: str, problem: str) -> FewbitsError:
    return FewbitsError(f"{path}, line {number}: not a {what} line: {problem}; {FETCH_HINT} (unchanged files).")


def read_ground_truth(path: str | Path) -> list[RatedText]:
    """Parse a ``*_GroundTruth.txt`` file (id, mean, text); a malformed line raises FewbitsError naming it."""
    path = Path(path)
    items, seen = [], set()
    for number, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 3:
            raise _malformed(path, number, "GroundTruth", f"{len(fields)} tab-separated fields instead of 3")
        try:
            mean = float(fields[1])
        except ValueError:
            raise _malformed(path, number, "GroundTruth", f"mean rating {fields[1]!r} is not a number") from None
        if not -4.0 <= mean <= 4.0:
            raise _malformed(path, number, "GroundTruth", f"mean rating {mean} outside -4..4")
        if not fields[0] or fields[0] in seen:
            raise _malformed(path, number, "GroundTruth", f"id {fields[0]!r} is empty or repeated")
        seen.add(fields[0])
        items.append(RatedText(fields[0], mean, fields[2]))
    if not items:
        raise FewbitsError(f"{path} holds no rated sentences; {FETCH_HINT}.")
    return items


def read_ratings(path: str | Path) -> dict[str, RaterRecord]:
    """Parse a ``*_anonDataRatings.txt`` file: id -> (mean, sd, every rater's rating)."""
    path = Path(path)
    records: dict[str, RaterRecord] = {}
    for number, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 4:
            raise _malformed(path, number, "ratings", f"{len(fields)} tab-separated fields instead of 4")
        try:
            ratings = tuple(int(r) for r in fields[3].strip().strip("[]").split(","))
            record = RaterRecord(float(fields[1]), float(fields[2]), ratings)
        except ValueError as exc:
            raise _malformed(path, number, "ratings", str(exc)) from None
        if fields[0] in records or any(not -4 <= r <= 4 for r in ratings):
            raise _malformed(path, number, "ratings", f"id {fields[0]!r} repeated or a rating outside -4..4")
        records[fields[0]] = record
    return records


def _stratum(mean: float) -> int:
    return 0 if mean <= NEGATIVE_AT else 2 if mean >= POSITIVE_AT else 1


def _allocate(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` over strata proportionally to ``sizes`` (largest remainders; ties to the first)."""
    n = sum(sizes)
    exact = [total * s / n for s in sizes]
    shares = [int(e) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda i: (-(exact[i] - shares[i]), i))[:total - sum(shares)]:
        shares[i] += 1
    return shares


def split_items(items: Sequence[RatedText], dev_items: int = DEV_ITEMS, test_items: int = TEST_ITEMS,
                seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """{'train', 'dev', 'test'}: sorted row indices of the fixed stratified split (module docstring)."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.text.strip(), []).append(i)
    members = list(groups.values())
    if dev_items + test_items >= len(members):
        raise FewbitsError(f"{len(members)} distinct sentences are too few for a dev split of {dev_items} and a test "
                           f"split of {test_items}; use the set's real file ({FETCH_HINT}).")
    strata = [[g for g in members if _stratum(items[g[0]].mean) == s] for s in range(3)]
    sizes = [len(s) for s in strata]
    n_test, n_dev = _allocate(test_items, sizes), _allocate(dev_items, sizes)
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[int]] = {name: [] for name in SPLITS}
    for s, stratum in enumerate(strata):
        order = rng.permutation(len(stratum))
        for rank, g in enumerate(order):
            name = "test" if rank < n_test[s] else "dev" if rank < n_test[s] + n_dev[s] else "train"
            chosen[name] += stratum[g]
    return {name: sorted(rows) for name, rows in chosen.items()}


def split_hash(ids: Sequence[str]) -> str:
    """sha256 of the ids, one per line in file order, each ending in a newline."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_set(name: str, data_dir: str | Path | None = None) -> tuple[list[RatedText], dict[str, list[int]], dict]:
    """The items of set ``name``, their split and its record (hashes; verified against the real file's)."""
    path = set_files(name, data_dir)[0]
    items = read_ground_truth(path)
    split = split_items(items)
    record = {"source": str(path), "file_sha256": file_sha256(path), "items": len(items),
              "splits": {s: {"items": len(rows), "sha256": split_hash([items[i].id for i in rows])}
                         for s, rows in split.items()}}
    known = RECORDED[name]
    record["verified"] = record["file_sha256"] == known["file_sha256"]
    if record["verified"] and record["splits"] != known["splits"]:
        raise FewbitsError(f"the split of {path} differs from the recorded one ({record['splits']} vs "
                           f"{known['splits']}); the split code or numpy's PCG64 stream changed. Report this.")
    return items, split, record


def load_sentences(name: str, data_dir: str | Path | None = None, *, regression: bool = False) -> Task:
    """Load ``sentences/<name>`` (binary) or ``sentences/<name>-regression`` with the fixed splits.

    >>> task = load_sentences("tweets")               # doctest: +SKIP
    >>> sorted(task.splits), task.main_metric          # doctest: +SKIP
    (['dev', 'test', 'train'], 'accuracy')
    """
    items, split, record = load_set(name, data_dir)
    task_name = f"sentences/{name}{'-regression' if regression else ''}"

    def examples(rows: list[int]) -> list[TextExample]:
        chosen = [items[i] for i in rows]
        if regression:
            return [TextExample(it.text, None, it.mean) for it in chosen]
        return [TextExample(it.text, None, int(it.mean >= POSITIVE_AT)) for it in chosen
                if it.mean >= POSITIVE_AT or it.mean <= NEGATIVE_AT]

    splits = {s: examples(rows) for s, rows in split.items()}
    if any(not rows for rows in splits.values()):
        raise FewbitsError(f"{record['source']}: a split of {task_name} is empty "
                           f"({ {s: len(r) for s, r in splits.items()} }); use the set's real file ({FETCH_HINT}).")
    info = {**record, "split_seed": SPLIT_SEED}
    if regression:
        return Task(task_name, "text", 1, splits, correlation_metrics, "pearson", None, info)
    return Task(task_name, "text", 2, splits, accuracy_metrics, "accuracy", ["negative", "positive"], info)


def set_summary(name: str, data_dir: str | Path | None = None) -> dict:
    """Counts of set ``name``: items, kept for polarity (|mean| >= 0.5), label prior and split sizes of both
    tasks, split hashes, and the raters per item (from the ratings file, when it is there)."""
    items, split, record = load_set(name, data_dir)
    kept = [it for it in items if abs(it.mean) >= POSITIVE_AT]
    summary = {**record, "kept": len(kept), "positive": sum(it.mean >= POSITIVE_AT for it in kept),
               "binary_splits": {}}
    for s, rows in split.items():
        labels = [int(items[i].mean >= POSITIVE_AT) for i in rows if abs(items[i].mean) >= POSITIVE_AT]
        summary["binary_splits"][s] = {"items": len(labels), "positive": sum(labels)}
    ratings_path = set_files(name, data_dir)[1]
    if ratings_path.is_file():
        raters = read_ratings(ratings_path)
        counts = [len(raters[it.id].ratings) for it in items if it.id in raters]
        summary["raters"] = {"min": min(counts), "max": max(counts), "items_rated": len(counts),
                             "mean_differs": sum(abs(raters[it.id].mean - it.mean) > 1e-6 for it in items
                                                 if it.id in raters)}
    return summary
