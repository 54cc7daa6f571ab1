"""Tasks: named splits of examples, their label space and their official metrics.

One entry point, :func:`load_task`, for every task fewbits knows (:data:`TASKS`), and one batching
function, :func:`make_collate`, that turns examples into model inputs.

>>> task = load_task("vader")
>>> task.num_labels, task.main_metric, sorted(task.splits)
(2, 'accuracy', ['dev', 'train'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewbits.data.base import ArraySplit, ImageExample, SignalExample, Task, TextExample
from fewbits.data.collate import make_collate
from fewbits.errors import FewbitsError, FewbitsValueError, bad_param

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")

TASKS: list[str] = [
    "vader",
    "vader-regression",
    *(f"glue/{t}" for t in GLUE_TASKS),
    "mnist1d",
    "cifar10",
    "cifar100",
    "fashion-mnist",
    *(f"sentences/{s}{suffix}" for s in ("movies", "tweets", "nyt", "amazon") for suffix in ("", "-regression")),
]

# options each task accepts beyond data_dir (anything else is a user error, not silently ignored)
_OPTIONS: dict[str, tuple[str, ...]] = {"vader": ("seed", "dev_fraction"), "glue": ("hub_name",)}


def _check_options(name: str, options: dict[str, Any], family: str) -> None:
    allowed = _OPTIONS.get(family, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        expected = f"one of {', '.join(allowed)}" if allowed else "none (this task takes no options)"
        raise FewbitsValueError(
            f"The options of load_task({name!r}) must be {expected}. Got {', '.join(unknown)} instead."
        )


def load_task(name: str, data_dir: str | Path | None = None, **options: Any) -> Task:
    """Load the task ``name`` (one of :data:`TASKS`).

    ``data_dir``: GLUE: the folder holding ``CoLA/``, ``SST-2/``, ... as the official download lays
    them out (None: the Hugging Face hub through ``datasets``); CIFAR: the folder holding
    ``cifar-10-batches-py/`` or ``cifar-100-python/`` (or that folder itself); vader: a folder
    holding ``vader_lexicon.txt`` (None: the copy shipped with vaderSentiment); mnist1d: an
    optional cache folder (None: generate in memory); fashion-mnist: the folder of its four IDX files
    (None: Debian's /usr/share/datasets/fashion-mnist); sentences/*: the folder holding
    ``hutto_ICWSM_2014/`` (None: ``$FEWBITS_DATA`` or ``~/.cache/fewbits``, where ``fewbits data fetch``
    puts it).

    Options: vader/vader-regression ``seed`` (0) and ``dev_fraction`` (0.2); glue/* ``hub_name``
    ("nyu-mll/glue", used only without data_dir).

    Raises FewbitsValueError for an unknown name or option, FewbitsError for missing or malformed
    files (the message names the file and what to do).
    """
    if not isinstance(name, str) or name not in TASKS:
        raise bad_param("name", f"one of {', '.join(TASKS)}", name, owner="load_task")
    return _check_splits(_load(name, data_dir, options))


def _check_splits(task: Task) -> Task:
    """Refuse a task with an empty split, naming it, before anyone trains on it or scores it."""
    for split, examples in task.splits.items():
        if len(examples) == 0:
            raise FewbitsError(f"{task.name}: the {split} split from {task.info.get('source', 'its files')} holds no "
                               "examples; check the task's files.")
    return task


def _load(name: str, data_dir: str | Path | None, options: dict[str, Any]) -> Task:
    """The loader of task ``name``."""
    if name.startswith("vader"):
        from fewbits.data.vader import load_vader

        _check_options(name, options, "vader")
        return load_vader(data_dir, regression=name == "vader-regression", **options)
    if name.startswith("glue/"):
        from fewbits.data.glue import load_glue

        _check_options(name, options, "glue")
        return load_glue(name.split("/", 1)[1], data_dir, **options)
    _check_options(name, options, name.split("/")[0])
    if name.startswith("sentences/"):
        from fewbits.data.sentences import load_sentences

        stem = name.split("/", 1)[1]
        return load_sentences(stem.removesuffix("-regression"), data_dir, regression=stem.endswith("-regression"))
    if name == "fashion-mnist":
        from fewbits.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(data_dir)
    if name == "mnist1d":
        from fewbits.data.mnist1d import load_mnist1d

        return load_mnist1d(data_dir)
    from fewbits.data.cifar import load_cifar

    return load_cifar(name, data_dir)


__all__ = [
    "TASKS",
    "ArraySplit",
    "ImageExample",
    "SignalExample",
    "Task",
    "TextExample",
    "load_task",
    "make_collate",
]
