"""A model's cost known before it runs, and the run-time half of hostile inputs: batches of one with
BatchNorm, NaN in weights and data, the pixel budget, float32 statistics."""

from __future__ import annotations

import io
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save as save_safetensors
from torch import nn

from tests.engine.model_files import TinyConvNet, export_onnx
from workers.compression.config import DataOptions, FinetuneConfig
from workers.compression.cost import CostLimits, ModelCost, check_cost
from workers.compression.datasets import ArrayBundle, from_arrays, no_single_sample
from workers.compression.errors import InvalidDataset, InvalidModel, ModelTooCostly, UnsupportedOp
from workers.compression.finite import nonfinite_count
from workers.compression.module_cost import estimate_module_cost
from workers.compression.npz import scan_npz
from workers.compression.onnx_cost import estimate_onnx_cost
from workers.compression.onnx_import import read_onnx
from workers.compression.pixel_budget import PixelBudget, check_pixels
from workers.compression.safetensors_file import check_finite
from workers.compression.training import Trainer


def _graph(nodes: list[onnx.NodeProto], inits: list[TensorProto], features: int = 4) -> onnx.ModelProto:
    """A (batch, features) -> (batch, 2) model of `nodes`, which must end in "logits"."""
    source = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph(nodes, "g", [source], [logits], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _ints(name: str, values: list[int]) -> TensorProto:
    """An int64 initializer."""
    return numpy_helper.from_array(np.array(values, np.int64), name)


def test_onnx_estimate_matches_torch_flop_counter_and_weight_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyConvNet()
    path = export_onnx(net, tmp_path / "tiny.onnx", (3, 32, 32))
    onnx_cost = estimate_onnx_cost(read_onnx(path), (3, 32, 32))
    torch_cost = estimate_module_cost(net, (3, 32, 32))
    # conv 2*32*32*4*27, its BN, ReLU, mean, fc 2*4*3: torch counts the matmul-like ops only
    assert torch_cost.flops_per_sample == 2 * 32 * 32 * 4 * 27 + 2 * 4 * 3
    assert torch_cost.flops_per_sample <= onnx_cost.flops_per_sample <= 1.1 * torch_cost.flops_per_sample
    folded = sum(p.numel() for name, p in net.named_parameters() if not name.startswith("bn")) * 4
    assert onnx_cost.params_bytes == folded  # the exporter folded BN into the conv
    assert onnx_cost.peak_activation_bytes >= 4 * 32 * 32 * 4  # at least the conv's output


def test_shape_arithmetic_is_folded_but_never_a_large_constant() -> None:
    """Reshape to [Shape(x)[0], -1] (a ViT's flatten) is sized; ConstantOfShape of (batch, 2^29) is refused
    as too costly from its shape alone (the 2 GiB is never allocated)."""
    flatten = _graph([
        helper.make_node("Shape", ["input"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "zero1"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["input", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ], [numpy_helper.from_array(np.array(0, np.int64), "zero"), _ints("zero1", [0]), _ints("minus1", [-1]),
        numpy_helper.from_array(np.ones((4, 2), np.float32), "W")])
    cost = estimate_onnx_cost(flatten, (4,))
    assert cost.flops_per_sample == 2 * 4 * 2 + 4 + 6  # the MatMul, the Reshape, the shape arithmetic
    huge = _graph([
        helper.make_node("Shape", ["input"], ["s"]),
        helper.make_node("Slice", ["s", "zero1", "one"], ["b"]),
        helper.make_node("Concat", ["b", "big"], ["size"], axis=0),
        helper.make_node("ConstantOfShape", ["size"], ["zeros"]),
        helper.make_node("ReduceSum", ["zeros"], ["extra"], keepdims=0),
        helper.make_node("MatMul", ["input", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "extra"], ["logits"]),
    ], [_ints("zero1", [0]), _ints("one", [1]), _ints("big", [1 << 29]),
        numpy_helper.from_array(np.ones((4, 2), np.float32), "W")])
    with pytest.raises(ModelTooCostly, match="536870912"):
        estimate_onnx_cost(huge, (4,))


def test_data_dependent_sizes_and_control_flow_are_refused(tmp_path: Path) -> None:
    nonzero = _graph([helper.make_node("NonZero", ["input"], ["nz"]),
                      helper.make_node("Cast", ["nz"], ["f"], to=TensorProto.FLOAT),
                      helper.make_node("ReduceSum", ["f"], ["s"], keepdims=0),
                      helper.make_node("MatMul", ["input", "W"], ["mm"]),
                      helper.make_node("Add", ["mm", "s"], ["logits"])],
                     [numpy_helper.from_array(np.ones((4, 2), np.float32), "W")])
    with pytest.raises(InvalidModel, match="cannot be inferred"):
        estimate_onnx_cost(nonzero, (4,))
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["out"])], "b", [],
                             [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])],
                             [numpy_helper.from_array(np.array(1.0, np.float32), "c")])
    branch = _graph([helper.make_node("ReduceSum", ["input"], ["t"], keepdims=0),
                     helper.make_node("Cast", ["t"], ["cond"], to=TensorProto.BOOL),
                     helper.make_node("If", ["cond"], ["e"], then_branch=body, else_branch=body),
                     helper.make_node("MatMul", ["input", "W"], ["mm"]),
                     helper.make_node("Add", ["mm", "e"], ["logits"])],
                    [numpy_helper.from_array(np.ones((4, 2), np.float32), "W")])
    onnx.save(branch, str(tmp_path / "if.onnx"))
    with pytest.raises(UnsupportedOp, match="control flow"):
        read_onnx(tmp_path / "if.onnx")


def test_check_cost_names_the_estimate_and_the_limit() -> None:
    cost = ModelCost(params_bytes=1 << 20, peak_activation_bytes=3 << 30, flops_per_sample=5 * 10**12)
    with pytest.raises(ModelTooCostly) as refused:
        check_cost(cost, CostLimits())
    assert refused.value.code == "model_too_costly"
    assert "activations per sample 3 GiB > limit 2 GiB" in refused.value.message
    assert "5e+03 GFLOPs > limit 1e+03 GFLOPs" in refused.value.message
    check_cost(cost, CostLimits(activation_bytes=4 << 30, flops_per_sample=10**13))  # within: no error


def test_nonfinite_values_are_found_in_every_float_type_without_decoding() -> None:
    for dtype, kind in ((np.float32, "F32"), (np.float16, "F16"), (np.float64, "F64")):
        values = np.array([0.0, 1.0, np.nan, -np.inf, 3.0], dtype)
        assert nonfinite_count(values.tobytes(), kind) == 2
    bf16 = (np.array([1.0, np.inf, np.nan, -2.0], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    assert nonfinite_count(bf16.tobytes(), "BF16") == 2
    assert nonfinite_count(np.array([np.inf], np.float32).tobytes()[:3], "F32") == 0  # a ragged tail


def test_nan_weights_and_data_are_refused_with_the_input_codes(tmp_path: Path) -> None:
    weights = {"w": np.ones((3, 3), np.float32), "b": np.zeros(3, np.float32)}
    weights["w"][1, 2] = np.nan
    (tmp_path / "w.safetensors").write_bytes(save_safetensors(weights))
    with pytest.raises(InvalidModel, match=r"w \(1\)"):
        check_finite(tmp_path / "w.safetensors")
    x = np.ones((8, 4), np.float32)
    x[2, 2] = np.inf
    buf = io.BytesIO()
    np.savez(buf, x_train=x, y_train=np.arange(8) % 2, x_val=x[:2], y_val=np.arange(2))
    (tmp_path / "d.npz").write_bytes(buf.getvalue())
    with pytest.raises(InvalidDataset, match="1 NaN or infinite"):
        scan_npz(tmp_path / "d.npz")


def test_pixel_budget_counts_headers_against_total_and_per_stored_byte() -> None:
    photos = Counter({(224, 224): 1000})
    assert check_pixels(photos, 10_000_000) == 224 * 224 * 1000  # ~5 pixels per byte: a JPEG-like ratio
    with pytest.raises(InvalidDataset, match="per byte"):
        check_pixels(Counter({(4096, 4096): 16}), 36_000)  # 16 one-bit PNGs of ~2 KB
    with pytest.raises(InvalidDataset, match="in all"):
        check_pixels(photos, 10_000_000, PixelBudget(max_pixels=1_000_000))
    assert len(zlib.compress(bytes(4096 * 512), 9)) < 40_000  # why: a 1-bit 4096^2 image deflates to KBs


def test_a_batch_of_one_takes_a_sample_from_the_batch_before_it() -> None:
    x, y = torch.arange(21.0)[:, None], torch.arange(21)
    batches = list(no_single_sample((x[i:i + 10], y[i:i + 10]) for i in range(0, 21, 10)))
    assert [len(b[1]) for b in batches] == [10, 9, 2]
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    even = list(no_single_sample((x[i:i + 10], y[i:i + 10]) for i in range(0, 20, 10)))
    assert [len(b[1]) for b in even] == [10, 10]


def test_batchnorm_model_trains_on_a_split_whose_last_batch_has_one_sample() -> None:
    """33 samples at batch size 8: BatchNorm1d in training mode used to fail on the 33rd alone."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((33, 6)).astype(np.float32)
    data: ArrayBundle = from_arrays(x, np.arange(33) % 2, x[:8], np.arange(8) % 2, DataOptions())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    trainer = Trainer(data=data, finetune=FinetuneConfig(batch_size=8, epochs=1), device=torch.device("cpu"),
                      seed=0)
    trainer.fit(model, phase="finetune", epochs=2, lr=0.01, schedule="constant")
    assert len(trainer.history) == 2


def test_train_statistics_stream_in_float32_and_match_float64() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (300, 3, 8, 8), dtype=np.uint8)
    bundle = from_arrays(x, np.arange(300) % 2, x[:10], np.arange(10) % 2, DataOptions())
    scaled = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(bundle.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bundle.std, scaled.std(axis=(0, 2, 3)), rtol=1e-4)
