"""The nine GLUE tasks, from a local folder in the official download layout or from the hub.

Local layout (what the GLUE download script writes)::

    <data_dir>/CoLA/{train,dev,test}.tsv      no header in train/dev: source, label, original label, sentence
    <data_dir>/SST-2/{train,dev,test}.tsv     sentence, label
    <data_dir>/MRPC/{train,dev,test}.tsv      Quality, #1 ID, #2 ID, #1 String, #2 String (a UTF-8 BOM may lead)
    <data_dir>/STS-B/{train,dev,test}.tsv     ..., sentence1, sentence2, score (a float in [0, 5])
    <data_dir>/QQP/{train,dev,test}.tsv       id, qid1, qid2, question1, question2, is_duplicate
    <data_dir>/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv, test_matched.tsv, test_mismatched.tsv
                                              ..., sentence1, sentence2, ..., gold_label
    <data_dir>/QNLI/{train,dev,test}.tsv      index, question, sentence, label
    <data_dir>/RTE/, WNLI/{train,dev,test}.tsv  index, sentence1, sentence2, label

Every file is tab-separated and read with quoting disabled: a '"' is text, never a field
delimiter (QQP and MNLI sentences hold unbalanced quotes). Test files have no label column, so
their rows have ``label=None``. Class ids follow the Hugging Face ``datasets`` GLUE convention
whatever the source: MNLI entailment 0, neutral 1, contradiction 2; QNLI and RTE entailment 0,
not_entailment 1; WNLI 1 = entailment (as in its files). Rows too short to hold the needed
columns are skipped with a warning, as ``datasets`` does.
"""

from __future__ import annotations

import csv
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewbits.data.base import Task, TextExample
from fewbits.data.metrics import MetricFn, accuracy_metrics, correlation_metrics, f1_metrics, mcc_metrics
from fewbits.errors import FewbitsError

HUB_NAME = "nyu-mll/glue"
_LAYOUT_HINT = (
    "data_dir must be the folder that holds CoLA/, SST-2/, MRPC/, STS-B/, QQP/, MNLI/, QNLI/, RTE/, WNLI/ "
    "as the official GLUE download script lays them out"
)


@dataclass(frozen=True)
class GlueSpec:
    """Where a GLUE task lives and how its files and hub columns read."""

    folder: str  # the task's folder in the official layout
    text_columns: tuple[str, ...]  # one or two TSV columns holding text_a (and text_b)
    label_column: str
    label_names: tuple[str, ...] | None  # None: regression (float labels)
    metric_fn: MetricFn
    main_metric: str
    hub_columns: tuple[str, ...]  # the same texts in the hub's (datasets') column names
    dev_files: tuple[str, ...] = ("dev",)
    test_files: tuple[str, ...] = ("test",)


_NLI = ("entailment", "not_entailment")
SPECS: dict[str, GlueSpec] = {
    "cola": GlueSpec("CoLA", ("sentence",), "label", ("unacceptable", "acceptable"), mcc_metrics, "mcc",
                     ("sentence",)),
    "sst2": GlueSpec("SST-2", ("sentence",), "label", ("negative", "positive"), accuracy_metrics, "accuracy",
                     ("sentence",)),
    "mrpc": GlueSpec("MRPC", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"), f1_metrics,
                     "f1", ("sentence1", "sentence2")),
    "stsb": GlueSpec("STS-B", ("sentence1", "sentence2"), "score", None, correlation_metrics, "pearson",
                     ("sentence1", "sentence2")),
    "qqp": GlueSpec("QQP", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"), f1_metrics,
                    "f1", ("question1", "question2")),
    "mnli": GlueSpec("MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
                     accuracy_metrics, "accuracy", ("premise", "hypothesis"),
                     dev_files=("dev_matched", "dev_mismatched"), test_files=("test_matched", "test_mismatched")),
    "qnli": GlueSpec("QNLI", ("question", "sentence"), "label", _NLI, accuracy_metrics, "accuracy",
                     ("question", "sentence")),
    "rte": GlueSpec("RTE", ("sentence1", "sentence2"), "label", _NLI, accuracy_metrics, "accuracy",
                    ("sentence1", "sentence2")),
    "wnli": GlueSpec("WNLI", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), accuracy_metrics,
                     "accuracy", ("sentence1", "sentence2")),
}

# CoLA's train/dev files have no header row; these are their four columns
COLA_COLUMNS = ("source", "label", "original_label", "sentence")


def _raise_csv_field_limit() -> None:
    """Long MNLI parse trees exceed csv's default 128 KiB field limit on some rows."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def _parse_label(spec: GlueSpec, value: str, path: Path, line: int) -> int | float:
    """A TSV label as the hub's class id (or float): names map to their index, digits are ids."""
    try:
        if spec.label_names is None:
            return float(value)
        if value in spec.label_names:
            return spec.label_names.index(value)
        label = int(value)
        if 0 <= label < len(spec.label_names):
            return label
    except ValueError:
        pass
    expected = "a float score" if spec.label_names is None else (
        f"one of {', '.join(spec.label_names)} or a class id 0..{len(spec.label_names) - 1}")
    raise FewbitsError(
        f"{path}, line {line}: label {value!r} in column {spec.label_column!r} is not {expected}. "
        f"Is this the {spec.folder} file of the official GLUE download?"
    )


def read_tsv(spec: GlueSpec, path: Path, *, labeled: bool) -> list[TextExample]:
    """Read one GLUE TSV file into examples; ``labeled`` files must have the label column."""
    try:
        return _read_tsv(spec, path, labeled)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FewbitsError(
            f"{path} is not a UTF-8 tab-separated GLUE file ({type(exc).__name__}: {exc}). "
            f"Use the {spec.folder} files of the official GLUE download, unchanged."
        ) from exc


def _read_tsv(spec: GlueSpec, path: Path, labeled: bool) -> list[TextExample]:
    headerless = spec.folder == "CoLA" and path.stem != "test"
    rows_skipped = 0
    examples: list[TextExample] = []
    _raise_csv_field_limit()
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: MRPC's files start with a BOM
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if headerless:
            header = list(COLA_COLUMNS)
        else:
            header = next(reader, None)
            if header is None:
                raise FewbitsError(f"{path} is empty. Re-download {spec.folder}; {_LAYOUT_HINT}.")
        header = [h.strip() for h in header]
        need = list(spec.text_columns) + ([spec.label_column] if labeled else [])
        missing = [c for c in need if c not in header]
        if missing:
            raise FewbitsError(
                f"{path}: missing column(s) {', '.join(map(repr, missing))} (header: {', '.join(header)}). "
                f"GLUE {spec.folder} files need the columns {', '.join(map(repr, need))}; use the files of the "
                f"official GLUE download, unchanged."
            )
        text_at = [header.index(c) for c in spec.text_columns]
        label_at = header.index(spec.label_column) if spec.label_column in header else None
        width = max(text_at + ([label_at] if label_at is not None else [])) + 1
        for row in reader:
            line = reader.line_num
            if headerless and len(row) != len(COLA_COLUMNS) and row:
                raise FewbitsError(
                    f"{path}, line {line}: {len(row)} columns; CoLA's train/dev files have no header and "
                    f"4 tab-separated columns ({', '.join(COLA_COLUMNS)}). Use the official CoLA files, unchanged."
                )
            if len(row) < width:
                rows_skipped += bool(row)  # a blank line is not a corrupted row
                continue
            label = None if label_at is None else _parse_label(spec, row[label_at].strip(), path, line)
            text_b = row[text_at[1]] if len(text_at) == 2 else None
            examples.append(TextExample(row[text_at[0]], text_b, label))
    if not examples:
        why = (f"all {rows_skipped} rows have fewer than the {width} columns the header names" if rows_skipped
               else "it holds no rows" + ("" if headerless else " after the header"))
        raise FewbitsError(f"{path}: no examples ({why}). Use the {spec.folder} files of the official GLUE "
                           f"download, unchanged.")
    if rows_skipped:
        warnings.warn(f"{path}: skipped {rows_skipped} rows with fewer than {width} columns", stacklevel=4)
    return examples


def _task_dir(spec: GlueSpec, data_dir: Path) -> Path:
    """The task folder: ``data_dir/<Folder>``, or ``data_dir`` itself when it is that folder."""
    if not data_dir.is_dir():
        raise FewbitsError(f"GLUE data_dir {data_dir} is not a folder; {_LAYOUT_HINT}.")
    if data_dir.name.lower() == spec.folder.lower() and (data_dir / "train.tsv").is_file():
        return data_dir
    return data_dir / spec.folder


def load_local(task: str, data_dir: str | Path) -> dict[str, list[TextExample]]:
    """The splits of GLUE ``task`` from ``data_dir`` (train and dev files required, test optional)."""
    spec = SPECS[task]
    folder = _task_dir(spec, Path(data_dir))
    splits: dict[str, list[TextExample]] = {}
    for stem in ("train", *spec.dev_files):
        path = folder / f"{stem}.tsv"
        if not path.is_file():
            raise FewbitsError(f"GLUE file not found: {path}; {_LAYOUT_HINT}.")
        splits[stem] = read_tsv(spec, path, labeled=True)
    for stem in spec.test_files:
        path = folder / f"{stem}.tsv"
        if path.is_file():
            splits[stem] = read_tsv(spec, path, labeled=False)
    return splits


# the hub's split names -> ours
_HUB_SPLITS = {
    "train": "train", "validation": "dev", "test": "test",
    "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched",
    "test_matched": "test_matched", "test_mismatched": "test_mismatched",
}


def load_hub(task: str, hub_name: str = HUB_NAME) -> dict[str, list[TextExample]]:
    """The splits of GLUE ``task`` from the Hugging Face hub through ``datasets`` (label -1 -> None)."""
    spec = SPECS[task]
    offline_fix = (f"pass data_dir, a folder in the official GLUE layout ({_LAYOUT_HINT}), "
                   f"e.g. load_task('glue/{task}', data_dir='glue_data')")
    try:
        import datasets
    except ImportError:
        raise FewbitsError(
            f"glue/{task} without data_dir loads from the Hugging Face hub, which needs the 'datasets' package: "
            f"pip install 'fewbits[hub]', or {offline_fix}."
        ) from None
    try:
        loaded = datasets.load_dataset(hub_name, task)
    except Exception as exc:  # network, auth, missing config: all mean "the hub is not usable here"
        raise FewbitsError(
            f"could not load {hub_name!r} config {task!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}); {offline_fix}."
        ) from exc
    splits: dict[str, list[TextExample]] = {}
    for hub_split, ours in _HUB_SPLITS.items():
        if hub_split in loaded:
            splits[ours] = _from_hub(spec, loaded[hub_split], f"{hub_name}/{task}/{hub_split}")
    if "train" not in splits:
        raise FewbitsError(f"{hub_name!r} config {task!r} has no 'train' split (got {sorted(loaded)}); {offline_fix}.")
    return splits


def _from_hub(spec: GlueSpec, table: Any, where: str) -> list[TextExample]:
    """Convert one hub split (a ``datasets.Dataset``) to examples, reading whole columns at once."""
    need = [*spec.hub_columns, "label"]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise FewbitsError(f"{where}: missing column(s) {missing} (columns: {table.column_names}).")
    if len(table) == 0:
        raise FewbitsError(f"{where}: no examples (the split is empty).")
    texts = [list(table[c]) for c in spec.hub_columns]
    labels = list(table["label"])
    if spec.label_names is None:
        labels = [None if float(v) < 0 else float(v) for v in labels]  # STS-B test rows are -1
    else:
        labels = [None if int(v) < 0 else int(v) for v in labels]
    text_b = texts[1] if len(texts) == 2 else [None] * len(labels)
    return [TextExample(a, b, y) for a, b, y in zip(texts[0], text_b, labels, strict=True)]


def load_glue(task: str, data_dir: str | Path | None = None, *, hub_name: str = HUB_NAME) -> Task:
    """Load GLUE ``task`` ('cola', ..., 'wnli') from ``data_dir``, or from the hub when it is None.

    >>> task = load_glue("rte", "glue_data")            # doctest: +SKIP
    >>> task.splits["dev"][0].label                     # doctest: +SKIP
    1
    """
    spec = SPECS[task]
    if data_dir is None:
        splits, source = load_hub(task, hub_name), f"hub:{hub_name}/{task}"
    else:
        splits, source = load_local(task, data_dir), str(Path(data_dir))
    num_labels = 1 if spec.label_names is None else len(spec.label_names)
    label_names = None if spec.label_names is None else list(spec.label_names)
    return Task(f"glue/{task}", "text", num_labels, splits, spec.metric_fn, spec.main_metric, label_names,
                {"source": source})
