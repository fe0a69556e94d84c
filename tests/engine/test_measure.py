"""Measurements: parameter and nonzero counts, MACs by hand, and alternating latency."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.engine.conftest import FEATURES, IMAGE_SHAPE, TinyMLP, TinyResNet
from workers.compression import measure
from workers.compression.export import export_onnx


def test_counts_params_and_nonzeros(tiny_mlp: TinyMLP) -> None:
    """Parameters include biases, not buffers; prunable ones are Linear/Conv weights only."""
    with torch.no_grad():
        tiny_mlp.fc1.weight[:, :5] = 0.0  # 16 rows x 5 columns
        tiny_mlp.fc2.bias.zero_()  # 4 biases: counted in all params, not in prunable ones
    counts = measure.count_params(tiny_mlp)
    weights = FEATURES * 16 + 16 * 4
    assert counts.params == weights + 16 + 4
    assert counts.nonzero_params == counts.params - 80 - 4
    assert counts.prunable == weights
    assert counts.prunable_nonzero == weights - 80


def test_counts_buffers_out(tiny_cnn: TinyResNet) -> None:
    """BatchNorm running statistics are not parameters."""
    counts = measure.count_params(tiny_cnn)
    assert counts.params == sum(p.numel() for p in tiny_cnn.parameters())
    assert counts.params < sum(t.numel() for t in tiny_cnn.state_dict().values())


def test_macs_match_a_hand_count(tiny_cnn: TinyResNet) -> None:
    """Conv MACs = H_out*W_out*C_out*C_in*k*k, Linear MACs = in*out, per sample; the model mode is kept."""
    stem = 8 * 8 * 8 * 3 * 9
    block = 2 * (8 * 8 * 8 * 8 * 9)
    down = 4 * 4 * 16 * 8 * 9  # stride 2: 8x8 -> 4x4
    fc = 16 * 4
    tiny_cnn.train()
    assert measure.count_macs(tiny_cnn, IMAGE_SHAPE) == stem + block + down + fc
    assert tiny_cnn.training


def test_latency_alternates_and_reports_medians(tmp_path: Path, tiny_cnn: TinyResNet) -> None:
    """Both models get the same number of timed runs per batch size, and the result is in ms."""
    path = tmp_path / "m.onnx"
    export_onnx(tiny_cnn, IMAGE_SHAPE, path)
    result = measure.latency_ms(path, path, IMAGE_SHAPE, threads=1, batches=(1, 3), min_runs=3, budget_s=0.05)
    assert set(result) == {"baseline", "pruned", "runs"}
    for side in ("baseline", "pruned"):
        assert set(result[side]) == {"b1", "b3"}
        assert all(0.0 < ms < 1000.0 for ms in result[side].values())
    assert all(runs >= 3 for runs in result["runs"].values())


def test_latency_times_each_side_in_turn(
    tmp_path: Path, tiny_cnn: TinyResNet, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs alternate baseline/pruned, swapping who goes first each round."""
    path = tmp_path / "m.onnx"
    export_onnx(tiny_cnn, IMAGE_SHAPE, path)
    order: list[str] = []
    real_session = measure.ort_session  # type: ignore[attr-defined]

    class Recording:
        """Wraps a session to log which side ran."""

        def __init__(self, side: str) -> None:
            self.side, self.inner = side, real_session(path, 1)

        def run(self, outputs: None, feed: dict[str, object]) -> object:
            """Logs and runs."""
            order.append(self.side)
            return self.inner.run(outputs, feed)

    sides = iter(["baseline", "pruned"])
    monkeypatch.setattr(measure, "ort_session", lambda _path, _threads: Recording(next(sides)))
    measure.latency_ms(path, path, IMAGE_SHAPE, threads=1, batches=(1,), min_runs=3, max_runs=3)
    warm_up = ["baseline", "pruned"]
    assert order == [*warm_up, "baseline", "pruned", "pruned", "baseline", "baseline", "pruned"]


def test_latency_stops_a_slow_model_at_its_cap(tmp_path: Path, tiny_cnn: TinyResNet) -> None:
    """A model whose runs outlast the cap gets one timed run, not min_runs (VGG at 224 px took minutes)."""
    path = tmp_path / "m.onnx"
    export_onnx(tiny_cnn, IMAGE_SHAPE, path)
    result = measure.latency_ms(path, path, IMAGE_SHAPE, threads=1, batches=(1, 2), min_runs=5, budget_s=0.0,
                                cap_s=0.0)
    assert result["runs"] == {"b1": 1, "b2": 1}
    assert result["baseline"]["b2"] > 0.0
