"""Generated image datasets as users have them: ImageNet-style folders (mixed sizes, JPEG/PNG/WebP, gray
and RGBA among them, a corrupt file) in .zip/.tar/.tar.gz, and Hugging Face-layout Parquet."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

Kind = Literal["zip", "tar", "tar.gz"]
CLASSES = ("cat", "dog", "fox")


def encoded(rng: np.random.Generator, label: int, size: tuple[int, int], fmt: str, mode: str = "RGB",
            ) -> bytes:
    """Returns one learnable image (its class sets the dominant colour) of `size` in `fmt` and `mode`."""
    w, h = size
    pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    pixels[..., label] += 150
    image = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def imagenet_members(per_class: int = 40, *, seed: int = 0, with_val: bool = False,
                     corrupt: int = 1) -> dict[str, bytes]:
    """Returns `train/<class>/<file>` members of mixed sizes, formats and modes, and `corrupt` broken ones."""
    rng = np.random.default_rng(seed)
    styles = [("JPEG", "RGB", "jpg"), ("PNG", "RGB", "png"), ("PNG", "L", "png"), ("JPEG", "L", "jpg"),
              ("PNG", "RGBA", "png"), ("WEBP", "RGB", "webp"), ("PNG", "P", "png")]
    members: dict[str, bytes] = {}
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            fmt, mode, suffix = styles[i % len(styles)]
            size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
            split = "val" if with_val and i % 5 == 0 else "train"
            members[f"{split}/{name}/{i:04d}.{suffix}"] = encoded(rng, label, size, fmt, mode)
    for i in range(corrupt):
        members[f"train/{CLASSES[0]}/broken{i}.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    return members


def write_archive(path: Path, kind: Kind, members: dict[str, bytes]) -> Path:
    """Writes `members` into a zip, tar or tar.gz at `path`."""
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return path
    with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_parquet(path: Path, per_class: int = 30, *, seed: int = 0, rows_per_group: int = 16,
                  class_names: bool = True) -> Path:
    """Writes a Hugging Face-layout Parquet file: `image` {bytes, path} structs and an int `label`."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(per_class * len(CLASSES)):
        label = i % len(CLASSES)
        size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        images.append({"bytes": encoded(rng, label, size, "JPEG" if i % 2 else "PNG"), "path": f"{i}.img"})
        labels.append(label)
    table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
    if class_names:
        features = {"image": {"_type": "Image"},
                    "label": {"names": list(CLASSES), "_type": "ClassLabel"}}
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = table.replace_schema_metadata(meta)
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path
