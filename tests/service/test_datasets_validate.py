"""POST /datasets/validate: a dataset's facts in seconds from the sandboxed checker; bad input: coded 4xx."""

from __future__ import annotations

import time

import pytest

from tests.engine.image_archives import CLASSES, imagenet_members, write_archive, write_parquet
from tests.service.conftest import Api, npz_dataset

pytestmark = pytest.mark.anyio


async def test_an_image_archive_is_described(api: Api, tmp_path: pytest.TempPathFactory) -> None:
    """Classes, splits, counts, sizes, the corrupt file and warnings (tiny val, duplicates), from headers."""
    members = imagenet_members()
    members["val/dog/copy.png"] = members["train/dog/0001.png"]  # a duplicate across splits
    archive = write_archive(tmp_path / "d.tar.gz", "tar.gz", members)  # type: ignore[operator]
    started = time.monotonic()
    response = await api.client.post("/datasets/validate", files={"file": ("d.tgz", archive.read_bytes())})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 30  # seconds, even with the sandbox starting on a loaded box
    facts = response.json()
    assert facts["format"] == "tar.gz"
    assert (facts["num_classes"], facts["classes"]) == (3, list(CLASSES))
    assert facts["splits"] == {"train": 120, "val": 1}
    assert facts["counts"]["dog"] == {"train": 40, "val": 1}
    assert sum(facts["image_sizes"].values()) == 121
    assert facts["unreadable"] == ["train/cat/broken0.jpg"]
    warnings = " ".join(facts["warnings"])
    assert "tiny validation split" in warnings
    assert "1 validation images also occur in train" in warnings
    assert "2 classes have no validation images" in warnings


async def test_parquet_and_npz_are_described(api: Api, tmp_path: pytest.TempPathFactory) -> None:
    """A Parquet file (split with the seed) and an .npz (its own split) answer the same fields."""
    parquet = write_parquet(tmp_path / "d.parquet", 10)  # type: ignore[operator]
    response = await api.client.post("/datasets/validate", files={"file": ("d", parquet.read_bytes())})
    assert response.status_code == 200, response.text
    assert response.json()["splits"] == {"train": 27, "val": 3}
    assert "no validation split" in response.json()["warnings"][0]
    response = await api.client.post("/datasets/validate", files={"file": ("d.npz", npz_dataset())})
    assert response.status_code == 200, response.text
    assert response.json()["format"] == "npz"


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [({"file": ("x", b"\x80\x04garbage pickle")}, 422, "invalid_dataset"),
     ({"file": ("x", b"just some text that is no dataset")}, 422, "invalid_dataset"),
     ({"file": ("x.zip", b"PK\x03\x04" + b"\0" * 40)}, 422, "invalid_dataset"),
     ({"dataset": ("x", b"PAR1")}, 422, "unexpected_part")],
)
async def test_garbage_is_a_coded_4xx(api: Api, files: dict[str, tuple[str, bytes]], status: int,
                                      code: str) -> None:
    """A pickle, unknown bytes, a broken ZIP or a wrong part name: 4xx with a machine-readable code."""
    response = await api.client.post("/datasets/validate", files=files)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_other_bodies_are_unsupported_media(api: Api) -> None:
    """Only a multipart upload or JSON naming a stored dataset (test_stored_inputs.py) is read."""
    response = await api.client.post("/datasets/validate", content=b"dataset_id=x",
                                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
