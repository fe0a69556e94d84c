"""A malicious upload corpus, generated here (nothing downloaded): code-carrying formats, escapes, bombs.

Every file that could run code carries a canary: when executed it connects to a loopback listener the test
runs and writes a file into the canary folder, both named after the corpus item. A test proves the
payloads are live (it executes two of them on purpose, in a throwaway process).
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import socket
import stat
import struct
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import safetensors.numpy as safetensors_numpy
from onnx import TensorProto, helper, numpy_helper

from tests.security.uploads import image_zip, linear_onnx, mlp_safetensors, npz_dataset, png

__all__ = ["Canary", "Item", "build_corpus", "expanding_onnx", "matmul_chain", "pickles"]

_BOMB_BYTES = 24 << 20  # zeros that compress ~1000x: under the per-file cap, over every ratio limit


class _Exec:
    """Pickles as a call of `exec(code)`: what a malicious checkpoint does when it is unpickled."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return exec, (self.code,)


@dataclass
class Canary:
    """A loopback listener plus a folder: a payload that runs shows up in one or both."""

    folder: Path
    token: str  # in every escape path and canary name, so leftovers can be searched for
    hits: list[str] = field(default_factory=list)
    _server: socket.socket | None = None

    def __enter__(self) -> Canary:
        """Starts listening on 127.0.0.1 (an ephemeral port) and accepting in a daemon thread."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._server = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        """Stops listening."""
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        """The listener's port."""
        assert self._server is not None
        return int(self._server.getsockname()[1])

    def _accept(self) -> None:
        """Records the name each connecting payload sends."""
        assert self._server is not None
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.hits.append(conn.recv(256).decode("utf-8", "replace") or "?")
                except OSError:
                    self.hits.append("?")

    def code(self, name: str) -> str:
        """Python that, if it ever runs, phones home and drops a file, each attempt independent."""
        marker = f"{self.token}-{name}"
        return (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {self.port}), timeout=2)"
            f".sendall({marker!r}.encode())\n"
            "except Exception:\n    pass\n"
            "try:\n"
            f"    open({str(self.folder / marker)!r}, 'w').write('fired')\n"
            "except Exception:\n    pass\n"
        )

    def fired(self) -> list[str]:
        """Every canary that went off: connections received and files dropped."""
        return sorted(self.hits + [p.name for p in self.folder.iterdir()])


@dataclass(frozen=True)
class Item:
    """One malicious file: the name it is uploaded under, its bytes, and what it tries."""

    name: str
    data: bytes
    threat: str
    symlinks: dict[str, str] = field(default_factory=dict)  # neighbours to create for the engine test
    roles: tuple[str, ...] = ("model", "dataset")  # the upload parts it must be refused as


def build_corpus(canary: Canary, outside: Path) -> list[Item]:
    """Returns the whole corpus; `outside` is a folder escapes aim at (it must stay empty)."""
    items = [*pickles(canary), *_torch_archives(canary), *_onnx(outside), *_safetensors(),
             *_zips(outside, canary.token), *_tars(outside, canary.token), *_images(),
             *_contradictions(canary), *_costly(), *_unsupported_graphs(outside), *_nonfinite(),
             *_pixel_amplification()]
    names = [item.name for item in items]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return items


def _payload(canary: Canary, name: str, protocol: int) -> bytes:
    """A pickle whose loading runs the canary for `name`."""
    return pickle.dumps(_Exec(canary.code(name)), protocol=protocol)


def _zip(members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    """A ZIP archive of the members, in order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def pickles(canary: Canary) -> Iterator[Item]:
    """Raw pickles under every name people give them, and an object array inside an .npz."""
    for protocol, name in ((0, "model.pkl"), (2, "model.pth"), (4, "checkpoint.pt"), (5, "weights.bin")):
        yield Item(name, _payload(canary, name, protocol),
                   f"pickle protocol {protocol} with a __reduce__ payload")
    yield Item("model.pt.gz", gzip.compress(_payload(canary, "model.pt.gz", 2)), "gzip-wrapped pickle")
    buf = io.BytesIO()
    np.save(buf, np.array([_Exec(canary.code("object.npz"))], dtype=object), allow_pickle=True)
    arrays = npz_members()
    arrays["x_train.npy"] = buf.getvalue()
    yield Item("object.npz", _zip(arrays), ".npz whose x_train is an object array (a pickle)")
    yield Item("pickled-labels.npz", _zip({**npz_members(), "y_train.npy": buf.getvalue()}),
               ".npz whose y_train is an object array")


def npz_members() -> dict[str, bytes]:
    """The members of the valid test .npz (to tamper with one of them)."""
    with zipfile.ZipFile(io.BytesIO(npz_dataset())) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _torch_archives(canary: Canary) -> Iterator[Item]:
    """torch.save zips, a tampered torch.export .pt2 and TorchScript archives, each holding a payload."""
    yield Item("state_dict.pt", _zip({
        "archive/data.pkl": _payload(canary, "state_dict.pt", 2), "archive/byteorder": b"little",
        "archive/version": b"3\n", "archive/data/0": bytes(64)}), "torch.save zip with a payload data.pkl")
    yield Item("exported.pt2", _zip({
        "model/archive_format": b"pt2", "model/version": b"0",
        "model/models/model.json": b'{"graph_module": {}}',
        "model/data/sample_inputs/model.pt": _payload(canary, "exported.pt2", 2),
        "model/data/constants/model.pt": _payload(canary, "exported.pt2-constants", 2)}),
        "tampered torch.export archive (pickled sample inputs and constants)")
    yield Item("scripted.pt", _zip({
        "model/code/__torch__.py": b"class Model(Module):\n  def forward(self, x):\n    return x\n",
        "model/constants.pkl": _payload(canary, "scripted.pt", 2), "model/data.pkl": _payload(canary, "x", 2),
        "model/version": b"6"}), "TorchScript archive with payload constants.pkl")
    import torch

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), buf)
    yield Item("real_torchscript.pt", buf.getvalue(), "a genuine torch.jit.save archive")
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(2, 4), "hook": _Exec(canary.code("real_torch_save.pt"))}, buf)
    yield Item("real_torch_save.pt", buf.getvalue(), "a genuine torch.save file carrying a payload object")


def _onnx_bytes(model: onnx.ModelProto) -> bytes:
    """Serializes without the checker (these models are meant to be wrong)."""
    return bytes(model.SerializeToString())


def _external(location: str) -> bytes:
    """The valid linear model with its weight moved to external data at `location`."""
    model = linear_onnx()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return _onnx_bytes(model)


def _onnx(outside: Path) -> Iterator[Item]:
    """External data escaping the folder, custom domains, local functions, absurd sizes, checker failures."""
    secret = outside / "secret.bin"
    yield Item("external-dotdot.onnx", _external("../" * 8 + "etc/passwd"),
               "external data at ../../etc/passwd")
    yield Item("external-absolute.onnx", _external(str(secret)), "external data at an absolute path")
    yield Item("external-symlink.onnx", _external("weights.bin"), "external data through a symlink",
               symlinks={"weights.bin": str(secret)})
    custom = linear_onnx()
    custom.graph.node.append(helper.make_node("Exec", ["logits"], ["pwned"], domain="com.evil"))
    custom.opset_import.append(helper.make_opsetid("com.evil", 1))
    yield Item("custom-domain.onnx", _onnx_bytes(custom), "an operator from a custom domain")
    local = linear_onnx()
    local.functions.append(helper.make_function("local.evil", "F", ["x"], ["y"],
                                                [helper.make_node("Identity", ["x"], ["y"])],
                                                [helper.make_opsetid("", 17)]))
    yield Item("local-function.onnx", _onnx_bytes(local), "a model-local function")
    huge = linear_onnx()
    huge.graph.initializer[0].ClearField("raw_data")
    huge.graph.initializer[0].ClearField("float_data")
    del huge.graph.initializer[0].dims[:]
    huge.graph.initializer[0].dims.extend([1 << 40, 1 << 40])
    yield Item("absurd-dims.onnx", _onnx_bytes(huge), "an initializer of 2^40 x 2^40 floats, no data")
    wide = linear_onnx()
    wide.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1 << 50
    yield Item("absurd-input.onnx", _onnx_bytes(wide), "an input of 2^50 features")
    many = linear_onnx()
    many.graph.node.extend(helper.make_node("Identity", [f"n{i}" if i else "logits"], [f"n{i + 1}"])
                           for i in range(20_001))
    yield Item("many-nodes.onnx", _onnx_bytes(many), "20,001 nodes (a parser and checker DoS)")
    broken = linear_onnx()
    broken.graph.node[0].op_type = "NotAnOp"
    yield Item("checker-fails.onnx", _onnx_bytes(broken), "an unknown standard op (the checker refuses it)")


def _safetensors_file(header: dict[str, Any], data: bytes = b"", declared: int | None = None) -> bytes:
    """A safetensors file from a header dict (length field optionally lying) and data."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


def _safetensors() -> Iterator[Item]:
    """Headers that lie about their size, overlap, overflow, use odd dtypes, or do not fit the network."""
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    yield Item("huge-header.safetensors", _safetensors_file({"a": tensor}, bytes(8), declared=1 << 40),
               "a header length of 1 TiB")
    padded = {"__metadata__": {"pad": "x" * (9 << 20)}, "a": tensor}
    yield Item("big-header.safetensors", _safetensors_file(padded, bytes(8)), "a real 9 MiB header")
    yield Item("overlap.safetensors",
               _safetensors_file({"a": tensor, "b": tensor}, bytes(8)), "two tensors over the same bytes")
    overflow = {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 8]}
    yield Item("overflow.safetensors", _safetensors_file({"a": overflow}, bytes(8)), "a shape that overflows")
    short = {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}
    yield Item("truncated.safetensors", _safetensors_file({"a": short}, bytes(8)),
               "data shorter than declared")
    ints = {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}
    yield Item("int-weights.safetensors", _safetensors_file({"fc1.weight": ints}, bytes(8)),
               "a dtype outside the allow-list")
    yield Item("not-json.safetensors", struct.pack("<Q", 12) + b"{not json!!}", "a header that is not JSON")
    yield Item("wrong-keys.safetensors", mlp_safetensors(features=7), "weights that do not fit the network")


def _zip_info(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    """A ZIP entry, optionally with a Unix file type (symlink, device)."""
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.external_attr = mode << 16
    return info


def _zip_entries(entries: list[tuple[zipfile.ZipInfo, bytes]],
                 compression: int = zipfile.ZIP_STORED) -> bytes:
    """A ZIP from prepared entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for info, data in entries:
            info.compress_type = compression
            zf.writestr(info, data)
    return buf.getvalue()


def _valid_members() -> list[tuple[zipfile.ZipInfo, bytes]]:
    """The valid image-folder members (so only the planted entry is wrong)."""
    with zipfile.ZipFile(io.BytesIO(image_zip())) as zf:
        return [(_zip_info(name), zf.read(name)) for name in zf.namelist()]


def _zips(outside: Path, token: str) -> Iterator[Item]:
    """Zip bombs (ratio, lying sizes, nested), escaping names and links in image-folder archives."""
    zeros = bytes(_BOMB_BYTES)
    yield Item("bomb.zip", _zip_entries([*_valid_members(), (_zip_info("train/cat/big.png"), zeros)],
                                        zipfile.ZIP_DEFLATED), "a 24 MiB member compressed ~1000x")
    yield Item("declared-bomb.zip", _declared_huge(_zip_entries([*_valid_members(),
                                                                  (_zip_info("train/cat/huge.png"), png())]),
                                                    "train/cat/huge.png"),
               "a member whose headers declare 4 GiB")
    bomb_npz = npz_members()
    header = io.BytesIO()
    np.save(header, np.zeros(_BOMB_BYTES // 4, np.float32))
    bomb_npz["x_train.npy"] = header.getvalue()
    yield Item("bomb.npz", _zip(bomb_npz, compression=zipfile.ZIP_DEFLATED),
               "an .npz member compressed ~1000x")
    yield Item("lying-size.npz", _lying_sizes(_zip(npz_members(), compression=zipfile.ZIP_DEFLATED)),
               "central directory under-declares the uncompressed sizes")
    nested = (_zip_info("train/cat/inner.zip"), image_zip())
    yield Item("nested.zip", _zip_entries([*_valid_members(), nested]), "a nested archive")
    yield Item("zip-dotdot.zip", _zip_entries([*_valid_members(),
                                               (_zip_info(f"../../{token}-dotdot.png"), png())]),
               "a member named ../../…")
    yield Item("zip-absolute.zip", _zip_entries([*_valid_members(),
                                                 (_zip_info(str(outside / f"{token}-abs.png")), png())]),
               "a member with an absolute path")
    yield Item("zip-symlink.zip", _zip_entries([*_valid_members(), (_zip_info("train/cat/link.png",
                                                stat.S_IFLNK | 0o777), b"/etc/passwd")]), "a symlink member")
    yield Item("npz-extra-member.npz", _zip({**npz_members(), "../evil.npy": npz_members()["y_val.npy"]}),
               "an .npz with an extra, escaping member")


def _declared_huge(archive: bytes, name: str) -> bytes:
    """Rewrites one member's uncompressed size to ~4 GiB in its local and central headers."""
    data = bytearray(archive)
    raw = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(signature)
        while at != -1:
            if data[at + name_at:at + name_at + len(raw)] == raw:
                struct.pack_into("<I", data, at + size_at, 0xFFFFFFFE)
            at = data.find(signature, at + 4)
    return bytes(data)


def _lying_sizes(archive: bytes) -> bytes:
    """Rewrites every central-directory entry's uncompressed size to 1 byte."""
    data = bytearray(archive)
    at = data.find(b"PK\x01\x02")
    while at != -1:
        struct.pack_into("<I", data, at + 24, 1)
        at = data.find(b"PK\x01\x02", at + 46)
    return bytes(data)


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = False) -> bytes:
    """A tar (or .tar.gz) of the valid image folder plus the planted entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(image_zip())) as zf, tarfile.open(fileobj=buf, mode="w") as tf:
        for name in zf.namelist():
            member = zf.read(name)
            info = tarfile.TarInfo(name)
            info.size = len(member)
            tf.addfile(info, io.BytesIO(member))
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue()) if gz else buf.getvalue()


def _tar_entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, link: str = "") -> tuple[
        tarfile.TarInfo, bytes | None]:
    """One planted tar entry."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if data is not None else 0
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers; no real device is needed to write it
    return info, data


def _tars(outside: Path, token: str) -> Iterator[Item]:
    """Tar escapes (.., absolute, links, devices, FIFOs) and a .tar.gz bomb."""
    yield Item("tar-dotdot.tar", _tar([_tar_entry(f"../../{token}-dotdot.png", data=png())]), "a ../ member")
    yield Item("tar-absolute.tar", _tar([_tar_entry(str(outside / f"{token}-abs.png"), data=png())]),
               "an absolute-path member")
    yield Item("tar-symlink.tar", _tar([_tar_entry("train/cat/evil.png", tarfile.SYMTYPE,
                                                   link=str(outside / "secret.bin"))]), "a symlink member")
    yield Item("tar-hardlink.tar", _tar([_tar_entry("train/cat/evil.png", tarfile.LNKTYPE,
                                                    link="/etc/passwd")]), "a hard-link member")
    yield Item("tar-device.tar", _tar([_tar_entry("train/cat/null.png", tarfile.CHRTYPE)]),
               "a character-device member")
    yield Item("tar-fifo.tar", _tar([_tar_entry("train/cat/pipe.png", tarfile.FIFOTYPE)]), "a FIFO member")
    yield Item("tar-bomb.tar.gz", _tar([_tar_entry("train/cat/big.png", data=bytes(_BOMB_BYTES))], gz=True),
               "a .tar.gz whose 24 MiB member compresses ~1000x")
    yield Item("tar-nested.tar.gz", _tar([_tar_entry("train/cat/inner.tar", data=b"x" * 1024)], gz=True),
               "a nested archive in a .tar.gz")


def _png_bomb() -> bytes:
    """A real 1-bit 20000x20000 PNG (400 Mpx): a few KB that decode to 400 MB of pixels."""
    return _png_1bit(20_000)


def _png_1bit(side: int) -> bytes:
    """A real all-black 1-bit side x side PNG: a few KB whatever its size."""
    width = height = side
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _images() -> Iterator[Item]:
    """A PNG decompression bomb, alone and inside an image-folder archive."""
    bomb = _png_bomb()
    yield Item("bomb.png", bomb, "a PNG decompression bomb uploaded as is")
    yield Item("png-bomb.zip", _zip_entries([*_valid_members(), (_zip_info("train/cat/bomb.png"), bomb)]),
               "a PNG decompression bomb inside an image folder")


def _with_side_branch(nodes: list[onnx.NodeProto], scalar: str,
                      initializers: list[TensorProto] | None = None) -> onnx.ModelProto:
    """The valid linear model whose logits get `scalar` (computed by `nodes`) added: checker-clean, and
    only what the extra branch computes is wrong."""
    model = linear_onnx()
    graph = model.graph
    graph.node[1].output[0] = "linear"
    graph.node.extend([*nodes, helper.make_node("Add", ["linear", scalar], ["logits"])])
    graph.initializer.extend(initializers or [])
    return model


def _ints(name: str, values: list[int]) -> TensorProto:
    """An int64 initializer."""
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _constant_of_shape(elements: int) -> bytes:
    """A few hundred bytes that ask for `elements` zeros (ConstantOfShape), summed into the logits."""
    return _onnx_bytes(_with_side_branch(
        [helper.make_node("ConstantOfShape", ["size"], ["zeros"]),
         helper.make_node("ReduceSum", ["zeros"], ["extra"], keepdims=1)],
        "extra", [_ints("size", [elements])]))


def expanding_onnx(elements: int) -> bytes:
    """A valid classifier that expands each sample to `elements` floats (within the cost limits per sample,
    but a training batch of them needs batch x elements x 4 bytes): a cost only a run can show."""
    return _onnx_bytes(_with_side_branch(
        [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
         helper.make_node("Expand", ["mean", "wide"], ["expanded"]),
         helper.make_node("Mul", ["expanded", "half"], ["held"]),  # a real tensor: Expand alone is a view
         helper.make_node("ReduceMax", ["held"], ["extra"], axes=[1], keepdims=1)],
        "extra", [_ints("wide", [1, elements]), numpy_helper.from_array(np.array(0.5, np.float32), "half")]))


def matmul_chain(links: int, side: int = 4096) -> bytes:
    """A chain of `links` MatMuls over side x side tensors made by ConstantOfShape: hours of CPU per pass."""
    nodes = [helper.make_node("ConstantOfShape", ["square"], ["m0"],
                              value=numpy_helper.from_array(np.array([1e-4], np.float32)))]
    nodes += [helper.make_node("MatMul", [f"m{i}", "m0"], [f"m{i + 1}"]) for i in range(links)]
    nodes.append(helper.make_node("ReduceMean", [f"m{links}"], ["extra"], keepdims=0))
    return _onnx_bytes(_with_side_branch(nodes, "extra", [_ints("square", [side, side])]))


def _costly() -> Iterator[Item]:
    """Tiny graphs whose computation is huge or unknowable before running them (model_too_costly)."""
    for name, power in (("constant-of-shape-2g.onnx", 29), ("constant-of-shape-32g.onnx", 33)):
        yield Item(name, _constant_of_shape(1 << power), f"one ConstantOfShape of 2^{power} floats")
    computed = _with_side_branch(
        [helper.make_node("Shape", ["input"], ["in_shape"]),
         helper.make_node("Slice", ["in_shape", "zero", "one"], ["batch"]),
         helper.make_node("Concat", ["batch", "huge"], ["size"], axis=0),
         helper.make_node("ConstantOfShape", ["size"], ["zeros"]),
         helper.make_node("ReduceSum", ["zeros"], ["extra"], keepdims=0)],
        "extra", [_ints("zero", [0]), _ints("one", [1]), _ints("huge", [1 << 29])])
    yield Item("computed-shape.onnx", _onnx_bytes(computed), "ConstantOfShape((batch, 2^29)) from the input")
    yield Item("matmul-chain.onnx", matmul_chain(2000), "2,000 MatMuls over 4096x4096 tensors")
    nonzero = _with_side_branch(
        [helper.make_node("NonZero", ["input"], ["where"]),
         helper.make_node("Cast", ["where"], ["found"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["found"], ["extra"], keepdims=0)], "extra")
    yield Item("data-dependent-shape.onnx", _onnx_bytes(nonzero), "a NonZero: a size known only at run time")


def _subgraph(name: str, inputs: list[onnx.ValueInfoProto] | None = None) -> onnx.GraphProto:
    """A body graph returning one float scalar (what If/Loop/Scan bodies here compute)."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), f"{name}_one")
    return helper.make_graph([helper.make_node("Identity", [one.name], [f"{name}_out"])], name, inputs or [],
                             [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [])], [one])


def _unsupported_graphs(outside: Path) -> Iterator[Item]:
    """Control flow (If, Loop, Scan) and external data hidden in training_info."""
    branch = _with_side_branch(
        [helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
         helper.make_node("Greater", ["total", "zero"], ["positive"]),
         helper.make_node("If", ["positive"], ["extra"], then_branch=_subgraph("then"),
                          else_branch=_subgraph("else"))],
        "extra", [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    yield Item("if-branch.onnx", _onnx_bytes(branch), "an If node (control flow)")
    body_inputs = [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                   helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Identity", ["one"], ["scan"])],
        "body", body_inputs,
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    loop = _with_side_branch(
        [helper.make_node("Loop", ["trips", ""], ["steps"], body=body),
         helper.make_node("ReduceSum", ["steps"], ["extra"], keepdims=0)],
        "extra", [numpy_helper.from_array(np.array(1 << 40, np.int64), "trips")])
    yield Item("loop.onnx", _onnx_bytes(loop), "a Loop of 2^40 iterations")
    scan_body = helper.make_graph(
        [helper.make_node("Identity", ["row"], ["row_out"])], "scan_body",
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("row_out", TensorProto.FLOAT, [4])])
    scan = _with_side_branch(
        [helper.make_node("Scan", ["input"], ["rows"], body=scan_body, num_scan_inputs=1),
         helper.make_node("ReduceSum", ["rows"], ["extra"], keepdims=0)], "extra")
    yield Item("scan.onnx", _onnx_bytes(scan), "a Scan over the batch (control flow)")
    hidden = linear_onnx()
    init = helper.make_graph([], "init", [], [])
    weight = numpy_helper.from_array(np.zeros(8, np.float32), "hidden")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", str(outside / "secret.bin")), ("offset", "0"), ("length", "32")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    init.initializer.append(weight)
    hidden.training_info.add().initialization.CopyFrom(init)
    yield Item("training-info-external.onnx", _onnx_bytes(hidden), "external data inside training_info")


def _nonfinite() -> Iterator[Item]:
    """NaN and infinity in weights and in data (they used to fail late as export_mismatch)."""
    nan = linear_onnx()
    weights = numpy_helper.to_array(nan.graph.initializer[0]).copy()
    weights[0, 0] = np.nan
    nan.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "W"))
    yield Item("nan-weights.onnx", _onnx_bytes(nan), "a NaN in the weights")
    tensors = safetensors_numpy.load(mlp_safetensors())
    tensors["fc2.weight"][5, 7] = np.inf
    yield Item("inf-weights.safetensors", safetensors_numpy.save(tensors, metadata={"architecture": "mlp"}),
               "an infinite value in safetensors weights")
    for name, value in (("nan-data.npz", np.nan), ("inf-data.npz", -np.inf)):
        arrays = npz_members()
        buf = io.BytesIO()
        x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
        x[3, 1] = value
        np.save(buf, x)
        arrays["x_train.npy"] = buf.getvalue()
        yield Item(name, _zip(arrays), f"{value} in x_train")


def _pixel_amplification() -> Iterator[Item]:
    """16 real 1-bit 4096x4096 PNGs (~2 KB each, at the per-image cap): 268 M pixels from ~40 KB."""
    bit = _png_1bit(4096)
    extra = [(_zip_info(f"train/{cls}/huge{i}.png"), bit) for i in range(8) for cls in ("cat", "dog")]
    yield Item("png-amplification.zip", _zip_entries([*_valid_members(), *extra]),
               "16 one-bit 4096x4096 PNGs in an image folder (pixels decoded per stored byte)")


def _contradictions(canary: Canary) -> Iterator[Item]:
    """Files whose content contradicts their name (the name must never decide)."""
    yield Item("pickle-as.onnx", _payload(canary, "pickle-as.onnx", 4), "a pickle named .onnx")
    yield Item("pickle-as.safetensors", _payload(canary, "pickle-as.safetensors", 2),
               "a pickle named .safetensors")
    yield Item("pickle-as.npz", _payload(canary, "pickle-as.npz", 3), "a pickle named .npz")
    yield Item("torchscript-as.onnx", _zip({"m/constants.pkl": _payload(canary, "torchscript-as.onnx", 2),
                                            "m/code/__torch__.py": b"pass\n"}), "TorchScript named .onnx")
    yield Item("npz-as.onnx", npz_dataset(), "a dataset named .onnx", roles=("model",))
    yield Item("onnx-as.npz", _onnx_bytes(linear_onnx()), "a model named .npz", roles=("dataset",))
    yield Item("tar-as.npz", _tar([_tar_entry("../escape.png", data=png())]), "an escaping tar named .npz")
    yield Item("png-as.safetensors", png(), "an image named .safetensors")
    yield Item("html-as.onnx", b"<html><script>alert(1)</script></html>", "HTML named .onnx")
    yield Item("empty.onnx", b"", "an empty file")
