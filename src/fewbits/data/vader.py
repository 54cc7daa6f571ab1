"""The VADER sentiment lexicon as an offline task (shipped by the ``vaderSentiment`` package).

Each of the lexicon's 7,520 lines is ``token<TAB>mean<TAB>sd<TAB>[10 ratings]``: a word, emoticon
or slang token rated by ten people from -4 (most negative) to +4. Two tasks come from it:

- ``vader``: binary sentiment of the token, mean >= 0.5 positive (1), mean <= -0.5 negative (0);
  tokens in between are dropped.
- ``vader-regression``: the mean rating itself, scored like STS-B (Pearson, Spearman).

The train/dev split is drawn once over the distinct tokens from ``seed`` (a token is on the same
side in both tasks, and a token listed twice never straddles the split); numpy's PCG64 stream is
stable, so the split is identical on every machine and numpy version.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewbits.data.base import Task, TextExample
from fewbits.data.metrics import accuracy_metrics, correlation_metrics
from fewbits.errors import FewbitsError, FewbitsValueError, bad_param

LEXICON_FILE = "vader_lexicon.txt"
POSITIVE_AT = 0.5  # mean >= 0.5: positive
NEGATIVE_AT = -0.5  # mean <= -0.5: negative


@dataclass(frozen=True)
class LexiconEntry:
    """One lexicon line: token, mean and standard deviation of its ratings, the ten raw ratings."""

    token: str
    mean: float
    sd: float
    ratings: tuple[int, ...]


def lexicon_path(data_dir: str | Path | None = None) -> Path:
    """The lexicon file: the packaged one, or ``data_dir`` (a folder holding it, or the file)."""
    if data_dir is None:
        return Path(str(importlib.resources.files("vaderSentiment") / LEXICON_FILE))
    path = Path(data_dir)
    return path / LEXICON_FILE if path.is_dir() else path


def read_lexicon(path: str | Path) -> list[LexiconEntry]:
    """Parse a VADER lexicon file; a malformed line raises FewbitsError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FewbitsError(
            f"VADER lexicon not found at {path}. Pass data_dir=None to use the copy shipped with "
            f"vaderSentiment (pip install vaderSentiment), or a folder holding {LEXICON_FILE}."
        )
    try:
        with open(path, encoding="utf-8", newline="") as f:  # newline="": keep the file's \r\n to strip below
            text = f.read()
    except UnicodeDecodeError as exc:
        raise FewbitsError(
            f"{path} is not UTF-8 text ({exc}). Use the {LEXICON_FILE} shipped with vaderSentiment."
        ) from exc
    entries = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 4:
                raise ValueError(f"{len(fields)} tab-separated columns instead of 4")
            ratings = tuple(int(r) for r in fields[3].strip().strip("[]").split(","))
            entries.append(LexiconEntry(fields[0], float(fields[1]), float(fields[2]), ratings))
        except ValueError as exc:
            raise FewbitsError(
                f"{path}, line {number}: not a VADER lexicon line (token, mean, sd, [ratings]): {exc}. "
                f"Use the {LEXICON_FILE} shipped with vaderSentiment."
            ) from None
    if not entries:
        raise FewbitsError(f"{path} holds no lexicon entries. Use the {LEXICON_FILE} shipped with vaderSentiment.")
    return entries


def split_indices(tokens: list[str], seed: int, dev_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, dev) row indices of a seeded random split of the distinct ``tokens``.

    The lexicon lists 14 tokens twice (e.g. 'lol' rated 2.9 and 1.8, 'd:' rated -2.9 and 1.2):
    splitting distinct tokens keeps both rows of such a token on the same side, so no dev input
    is ever seen in training.
    """
    distinct = list(dict.fromkeys(tokens))
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_dev = int(round(len(distinct) * dev_fraction))
    dev_tokens = {distinct[i] for i in order[:n_dev]}
    in_dev = np.array([t in dev_tokens for t in tokens], dtype=bool)
    return np.flatnonzero(~in_dev), np.flatnonzero(in_dev)


def load_vader(
    data_dir: str | Path | None = None, *, regression: bool = False, seed: int = 0, dev_fraction: float = 0.2
) -> Task:
    """Load ``vader`` (binary) or ``vader-regression`` (the mean rating) with a seeded train/dev split.

    >>> task = load_vader(seed=0)
    >>> task.splits["train"][0].label in (0, 1)
    True
    """
    name = "vader-regression" if regression else "vader"
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise bad_param("seed", "an int", seed, owner=name)
    if isinstance(dev_fraction, bool) or not isinstance(dev_fraction, (int, float)) or not 0 < dev_fraction < 1:
        raise bad_param("dev_fraction", "a float in (0, 1)", dev_fraction, owner=name)
    path = lexicon_path(data_dir)
    entries = read_lexicon(path)
    train_idx, dev_idx = split_indices([e.token for e in entries], int(seed), float(dev_fraction))

    def examples(indices: np.ndarray) -> list[TextExample]:
        rows = [entries[i] for i in indices]
        if regression:
            return [TextExample(e.token, None, e.mean) for e in rows]
        return [
            TextExample(e.token, None, int(e.mean >= POSITIVE_AT))
            for e in rows
            if e.mean >= POSITIVE_AT or e.mean <= NEGATIVE_AT
        ]

    splits = {"train": examples(train_idx), "dev": examples(dev_idx)}
    if not splits["train"] or not splits["dev"]:
        raise FewbitsValueError(
            f"The 'dev_fraction' parameter of {name} leaves an empty split on {len(entries)} entries "
            f"of {path}. Got {dev_fraction!r} instead; use a value such as 0.2."
        )
    info = {"source": str(path), "seed": int(seed), "dev_fraction": float(dev_fraction)}
    if regression:
        return Task(name, "text", 1, splits, correlation_metrics, "pearson", None, info)
    return Task(name, "text", 2, splits, accuracy_metrics, "accuracy", ["negative", "positive"], info)
