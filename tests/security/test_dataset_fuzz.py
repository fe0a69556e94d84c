"""Hypothesis on the streamed dataset readers: damaged image folders and Parquet files yield only typed
refusals, from the header index (the dataset check) through decoding a batch (training)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.image_archives import write_parquet
from tests.security.test_validators_hypothesis import FUZZ, inputs, only_typed_errors
from tests.security.uploads import image_tar, image_zip
from workers.compression.config import DataOptions
from workers.compression.dataset_check import check_dataset
from workers.compression.datasets import load_dataset
from workers.compression.preprocessing import Preprocessing

# Fewer examples than the header validators get: each also decodes batches (the default run stays short).
FUZZ_DECODE = settings(FUZZ, max_examples=60)
_FIT = Preprocessing(16, 1.0, "bilinear", (0.5,), (0.25,), 3, "fuzz")


def _parquet() -> bytes:
    """A small valid Hugging Face-layout Parquet file."""
    with tempfile.TemporaryDirectory() as tmp:
        return write_parquet(Path(tmp) / "d.parquet", 2, rows_per_group=3).read_bytes()


def _check_and_train(path: Path) -> None:
    """The dataset check, then loading for training and one batch of each split."""
    check_dataset(path)
    data = load_dataset(path, DataOptions(), preprocessing=_FIT)
    next(data.batches("train", 4, shuffle=True), None)
    next(data.batches("val", 4, shuffle=False), None)


@FUZZ_DECODE
@given(st.one_of(inputs(image_zip()), inputs(image_tar("")), inputs(image_tar("gz"))))
def test_damaged_image_folders_are_refused_typed(data: bytes) -> None:
    only_typed_errors(_check_and_train, data)


@FUZZ_DECODE
@given(inputs(_parquet()))
def test_damaged_parquet_is_refused_typed(data: bytes) -> None:
    only_typed_errors(_check_and_train, data)
