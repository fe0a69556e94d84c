"""`secateur dataset check FILE`: what a dataset holds and what looks wrong with it, in seconds, no job.

Reads headers only (archive members, image headers, Parquet columns; no pixel is decoded, nothing is
written) and answers the fields of `POST /datasets/validate`: format, classes, images per split and per
class, an image-size histogram, the unreadable files, and warnings (class imbalance, a tiny validation
split, validation images that also occur in train by a sampled hash). Torch is never imported, so the
service's sandboxed child (service/jobs/sandbox.py, with `--memory-bytes`/`--cpu-s`) runs it too.

Exit codes: 0 answered (even with warnings), 2 the dataset is refused (`error: <code>: <message>`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workers.compression.child_limits import RESOURCES_EXCEEDED, VALIDATOR_BROKEN, limit_resources
from workers.compression.errors import UserError
from workers.compression.pixel_budget import check_pixels

__all__ = ["check_dataset", "main"]

IMBALANCE = 10.0  # largest class / smallest class above which the data is called imbalanced
TINY_VAL = 0.05  # validation images as a share of all, below which the split is called tiny
MIN_VAL = 20  # fewer validation images than this make accuracy too coarse to compare models
_SIZES_SHOWN = 20  # image-size histogram bins before the rest are summed up as "other"
_UNREADABLE_SHOWN = 100


def check_dataset(path: Path, *, seed: int = 0) -> dict[str, Any]:
    """Returns the dataset's facts and warnings; raises InvalidDataset when it cannot be used at all."""
    from workers.compression.sniff import sniff_dataset_file

    kind = sniff_dataset_file(path)
    if kind == "npz":
        return _npz_facts(path)
    from workers.compression.image_index import index_dataset

    index = index_dataset(path, kind, seed=seed, cache=False)
    check_pixels(index.sizes, path.stat().st_size)  # what a job would refuse, this refuses too
    train, val = index.train[1], index.val[1]
    sizes = Counter({f"{w}x{h}": n for (w, h), n in index.sizes.items()})
    facts = _facts(kind, index.classes, train, val, sizes, index.unreadable)
    if index.split["val_from"] == "split":
        held = f"{index.split['val']} images ({index.split['fraction']:.0%} of each class)"
        facts["warnings"].insert(0, f"no validation split: {held} are held out with the job's seed")
    if index.duplicates:
        facts["warnings"].append(f"{index.duplicates} validation images also occur in train (same sampled "
                                 "hash): validation accuracy will flatter the model")
    return facts


def _npz_facts(path: Path) -> dict[str, Any]:
    """Reads an .npz's labels and sample shapes (member headers only, no samples)."""
    from workers.compression import npz

    members, (y_train, y_val) = npz.load_npz(path, ("y_train", "y_val"))
    x_train, x_val = members["x_train"], members["x_val"]
    shape = npz.check_samples("x_train", x_train.shape, x_train.dtype)
    y_train = npz.check_labels(y_train, "y_train", x_train.shape[0])
    y_val = npz.check_labels(y_val, "y_val", x_val.shape[0])
    classes = [str(i) for i in range(npz.num_classes(y_train, y_val))]
    size = f"{shape[-1]}x{shape[-2]}" if len(shape) == 3 else f"{shape[0]} features"
    return _facts("npz", classes, y_train, y_val, Counter({size: len(y_train) + len(y_val)}), [])


def _facts(kind: str, classes: list[str], train: np.ndarray, val: np.ndarray, sizes: Counter[str],
           unreadable: list[str]) -> dict[str, Any]:
    """Builds the response fields and the warnings that the counts alone show."""
    per_train = np.bincount(train, minlength=len(classes))
    per_val = np.bincount(val, minlength=len(classes))
    shown = dict(sizes.most_common(_SIZES_SHOWN))
    if len(sizes) > _SIZES_SHOWN:
        shown["other"] = sum(sizes.values()) - sum(shown.values())
    warnings: list[str] = []
    present = per_train[per_train > 0]
    if len(present) and present.max() > IMBALANCE * present.min():
        smallest = np.argmin(np.where(per_train > 0, per_train, np.iinfo(np.int64).max))
        big, small = classes[int(per_train.argmax())], classes[int(smallest)]
        warnings.append(f"class imbalance: {big!r} has {present.max()} training images, {small!r} only "
                        f"{present.min()}")
    total = len(train) + len(val)
    if len(val) < MIN_VAL or len(val) < TINY_VAL * total:
        warnings.append(f"tiny validation split: {len(val)} of {total} images; accuracy is measured on them")
    missing = [classes[i] for i in np.flatnonzero(per_val == 0)]
    if missing:
        warnings.append(f"{len(missing)} classes have no validation images, e.g. {missing[:5]}")
    if unreadable:
        warnings.append(f"{len(unreadable)} unreadable images are skipped")
    return {
        "format": kind, "num_classes": len(classes), "classes": classes,
        "splits": {"train": len(train), "val": len(val)},
        "counts": {name: {"train": int(per_train[i]), "val": int(per_val[i])}
                   for i, name in enumerate(classes)},
        "image_sizes": shown, "unreadable": unreadable[:_UNREADABLE_SHOWN], "warnings": warnings,
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses `secateur dataset check FILE [--json]` (and the sandbox's limits)."""
    parser = argparse.ArgumentParser(prog="secateur dataset", description=__doc__.splitlines()[0] if __doc__
                                     else None)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report a dataset's classes, splits, sizes and problems")
    check.add_argument("file", type=Path)
    check.add_argument("--seed", type=int, default=0, help="seed of the validation split, where one is made")
    check.add_argument("--json", action="store_true", help="print the facts as one JSON document")
    check.add_argument("--memory-bytes", type=int, help=argparse.SUPPRESS)  # the service's sandbox
    check.add_argument("--cpu-s", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Checks one dataset file and prints its facts (a summary, or JSON with --json)."""
    args = _parse(argv)
    if args.memory_bytes is not None and args.cpu_s is not None:
        limit_resources(memory_bytes=args.memory_bytes, cpu_s=args.cpu_s)
    try:
        facts = check_dataset(args.file, seed=args.seed)
    except UserError as exc:
        return _refused(exc.code, exc.message, as_json=args.json)
    except MemoryError:
        return _refused(RESOURCES_EXCEEDED, "checking the dataset needed more memory than allowed",
                        as_json=args.json)
    except ImportError as exc:  # not the input's fault: this install lacks a reader (pyarrow, say)
        return _refused(VALIDATOR_BROKEN, f"the checker cannot import: {exc}", as_json=args.json)
    except Exception as exc:  # a parser failing in a way nobody typed is still a refusal of that input
        return _refused("invalid_dataset", f"the dataset could not be parsed ({type(exc).__name__})",
                        as_json=args.json)
    if args.json:
        print(json.dumps({"ok": True, **facts}))
        return 0
    print(f"{facts['format']}: {facts['num_classes']} classes, {facts['splits']['train']} train / "
          f"{facts['splits']['val']} val images, {len(facts['unreadable'])} unreadable")
    sizes = ", ".join(f"{size} ({n})" for size, n in list(facts["image_sizes"].items())[:5])
    print(f"image sizes: {sizes}")
    for warning in facts["warnings"]:
        print(f"warning: {warning}")
    return 0


def _refused(code: str, message: str, *, as_json: bool) -> int:
    """Prints a refusal (one JSON line, or `error: code: message` on stderr); returns exit status 2."""
    if as_json:
        print(json.dumps({"ok": False, "code": code, "message": message[:2000]}))
    else:
        print(f"error: {code}: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
