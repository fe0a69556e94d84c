"""Parquet datasets in the Hugging Face layout: one file or an archive of split files, through the engine."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import save_file

from tests.engine.image_archives import CLASSES, write_parquet
from workers.compression import cli, library_models
from workers.compression.architectures import parse_architecture
from workers.compression.errors import InvalidDataset
from workers.compression.parquet_data import index_parquet
from workers.compression.sniff import sniff_dataset, sniff_dataset_file


def _hf_archive(tmp_path: Path, kind: str) -> Path:
    """Writes train and validation Parquet files (the latter without class names) into a .zip or .tar."""
    train = write_parquet(tmp_path / "train-00000-of-00001.parquet", 10, seed=1)
    val = write_parquet(tmp_path / "validation-00000-of-00001.parquet", 3, seed=2, class_names=False)
    test = write_parquet(tmp_path / "test-00000-of-00001.parquet", 2, seed=3)
    path = tmp_path / f"hf.{kind}"
    files = {f"data/{f.name}": f for f in (train, val, test)}
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, f in files.items():
                zf.write(f, name)
    else:
        with tarfile.open(path, "w") as tf:
            for name, f in files.items():
                tf.add(f, name)
    return path


def test_one_file_is_split_with_the_seed_and_named_from_its_metadata(tmp_path: Path) -> None:
    """No split in a single file: 10% per class held out; ClassLabel names come from the schema."""
    path = write_parquet(tmp_path / "d.parquet", 30, rows_per_group=7)
    assert sniff_dataset_file(path) == "parquet"
    index = index_parquet(path, "parquet", seed=5)
    assert index.classes == list(CLASSES)
    assert index.split == {"val_from": "split", "seed": 5, "fraction": 0.1, "train": 81, "val": 9}
    assert np.bincount(index.val[1]).tolist() == [3, 3, 3]
    key = int(index.train[0][0])
    assert index.source.read(key)[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archives_use_their_train_and_validation_files(tmp_path: Path, kind: str) -> None:
    """train-* trains, validation-* validates (test-* is left out when validation-* exists)."""
    path = _hf_archive(tmp_path, kind)
    assert sniff_dataset_file(path) == f"parquet.{kind}"
    assert sniff_dataset(path.read_bytes()[:65536]) == f"parquet.{kind}"
    for cache in (True, False):  # the check reads members in place, training from the cache
        index = index_parquet(path, f"parquet.{kind}", seed=0, cache=cache)
        assert index.split["val_from"] == "the data's own validation split"
        assert (len(index.train[0]), len(index.val[0])) == (30, 9)
        assert index.source.name(int(index.val[0][0])).startswith("data/validation-")


def _table_file(path: Path, table: pa.Table) -> Path:
    """Writes `table` as Parquet."""
    pq.write_table(table, path)
    return path


def test_bad_parquet_is_refused(tmp_path: Path) -> None:
    """Garbage after the magic, no image column, unlabeled rows: each a typed refusal."""
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"PAR1" + b"\0" * 100)
    with pytest.raises(InvalidDataset, match="truncated or corrupt"):
        index_parquet(garbage, "parquet", seed=0)
    no_images = _table_file(tmp_path / "n.parquet", pa.table({"text": ["a"], "label": [0]}))
    with pytest.raises(InvalidDataset, match="no image column"):
        index_parquet(no_images, "parquet", seed=0)
    image = {"bytes": (tmp_path / "g.parquet").read_bytes(), "path": "x"}
    unlabeled = _table_file(tmp_path / "u.parquet", pa.table({"image": [image], "label": [-1]}))
    with pytest.raises(InvalidDataset, match="label -1"):
        index_parquet(unlabeled, "parquet", seed=0)


def test_parquet_dataset_through_compress(tmp_path: Path) -> None:
    """A timm model at 40 px on a one-file Parquet dataset: verified ONNX, the split and class names."""
    model = library_models.build(parse_architecture("timm/resnet10t"), num_classes=3, image_size=40)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    data = write_parquet(tmp_path / "data.parquet", 30)
    out = tmp_path / "out"
    assert cli.main(["--model", str(tmp_path / "w.safetensors"), "--dataset", str(data), "--architecture",
                     "timm/resnet10t", "--image-size", "40", "--method", "magnitude", "--target-sparsity",
                     "0.5", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    inputs = report["inputs"]
    assert inputs["format"] == "parquet"
    assert inputs["split"]["val_from"] == "split"
    assert (inputs["train_samples"], inputs["val_samples"]) == (81, 9)
    assert inputs["class_names"] == list(CLASSES)
    assert report["verification"]["passed"]
