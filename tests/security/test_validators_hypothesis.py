"""Hypothesis on the validators: whatever the bytes, only the engine's typed refusal escapes, and fast.

Inputs are random bytes and valid files with random damage (flipped, cut, inserted and duplicated bytes),
which reach much deeper into each parser than noise does.
"""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.jobs.inputs import sniff_zip_dataset
from service.storage.local import LocalStore
from tests.security.uploads import image_tar, image_zip, linear_onnx, mlp_safetensors, npz_dataset
from workers.compression import npz, onnx_import, safetensors_file, sniff
from workers.compression.errors import UserError
from workers.compression.image_folders import index_image_folder
from workers.compression.images import Unreadable

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def damaged(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few random edits: byte flips, a cut, inserted junk, a duplicated slice."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "duplicate"]))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
    return bytes(data)


def inputs(base: bytes) -> st.SearchStrategy[bytes]:
    """Damaged copies of a valid file, and plain noise."""
    return st.one_of(damaged(base), st.binary(max_size=2048))


def only_typed_errors(check: Callable[[Path], Any], data: bytes) -> None:
    """Runs a validator on `data` written to a file: it may pass or raise UserError, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        with contextlib.suppress(UserError):
            check(path)


def index_and_read(path: Path, kind: str) -> None:
    """Indexes an image-folder archive, then reads every indexed image back (a corrupt one is Unreadable:
    the loader skips it)."""
    index = index_image_folder(path, kind, seed=0)  # type: ignore[arg-type]
    for key in (*index.train[0].tolist(), *index.val[0].tolist()):
        with contextlib.suppress(Unreadable):
            index.source.read(key)


@FUZZ
@given(st.binary(max_size=4096))
def test_head_sniffers_raise_only_typed_errors(head: bytes) -> None:
    for sniffer in (sniff.sniff_model, sniff.sniff_dataset):
        with contextlib.suppress(UserError):
            sniffer(head)


@FUZZ
@given(inputs(npz_dataset()))
def test_npz_scan_and_load(data: bytes) -> None:
    only_typed_errors(lambda p: (sniff.sniff_dataset_file(p), npz.load_npz(p)), data)


@FUZZ
@given(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
       .flatmap(lambda compression: inputs(image_zip(compression))))
def test_image_zip_scan_and_read(data: bytes) -> None:
    only_typed_errors(lambda p: index_and_read(p, "zip"), data)


@FUZZ
@given(st.sampled_from(["tar", "tar.gz"]).flatmap(
    lambda kind: st.tuples(st.just(kind), inputs(image_tar("gz" if kind == "tar.gz" else "")))))
def test_image_tar_scan_and_read(kind_and_data: tuple[str, bytes]) -> None:
    kind, data = kind_and_data
    only_typed_errors(lambda p: index_and_read(p, kind), data)


@FUZZ
@given(inputs(mlp_safetensors()))
def test_safetensors_header(data: bytes) -> None:
    only_typed_errors(lambda p: (sniff.sniff_model_file(p), safetensors_file.read_header(p)), data)


@FUZZ
@given(inputs(linear_onnx().SerializeToString()))
def test_onnx_read_and_fit(data: bytes) -> None:
    def check(path: Path) -> None:
        sniff.sniff_model_file(path)
        onnx_import.check_fits(onnx_import.read_onnx(path), (4,), 2)

    only_typed_errors(check, data)


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_the_damage_strategy_reaches_the_deep_checks(kind: str) -> None:
    """Damaged files often get past the magic-byte sniff, so the fuzzing exercises the real parsers."""
    base = linear_onnx().SerializeToString() if kind == "model" else npz_dataset()
    sniffer = sniff.sniff_model if kind == "model" else sniff.sniff_dataset
    passed = 0

    @settings(max_examples=60, deadline=None, database=None)
    @given(damaged(base))
    def count(data: bytes) -> None:
        nonlocal passed
        try:
            sniffer(data[:sniff.HEAD_BYTES])
            passed += 1
        except UserError:
            pass

    count()
    assert passed >= 10


@FUZZ
@given(inputs(npz_dataset()))
def test_submit_time_checks_and_worker_loading_of_a_damaged_npz(data: bytes) -> None:
    """The sandbox's whole check (in-process here) and the worker's loader, on the same damaged bytes."""
    from workers.compression.config import DataOptions
    from workers.compression.datasets import load_dataset
    from workers.compression.validate import inspect_inputs

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        model.write_bytes(linear_onnx().SerializeToString())
        only_typed_errors(lambda p: inspect_inputs(model, p, None), data)
        only_typed_errors(lambda p: load_dataset(p, DataOptions()), data)


@FUZZ
@given(st.one_of(inputs(image_zip()), inputs(npz_dataset())))
def test_stored_zip_sniff_over_ranges(data: bytes) -> None:
    """The service's ZIP sniff (zipfile over ranged reads of the stored object): classified or refused."""
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp))
        key = "t/j/inputs/dataset"
        store.put_stream(key, [data])
        with contextlib.suppress(UserError):
            assert sniff_zip_dataset(store, key, len(data), max_directory=4096) in ("npz", "zip")
