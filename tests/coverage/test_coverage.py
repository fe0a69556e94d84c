"""Model coverage through the whole chain: a fast slice in every run, the full table under `-m coverage`.

`pytest -m coverage tests/coverage` runs every torchvision classifier, the timm list and the Hugging Face
types as weights and as ONNX exports, writes docs/coverage.md, and holds the issue's bars.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.coverage.harness import ROOT, Case, Outcome, all_cases, pending_cases, run_cases, write_table

SLICE = (
    Case("hf/vit", "weights"),
    Case("timm/mobilenetv3_small_050", "weights"),
    Case("torchvision/squeezenet1_1", "onnx"),
)
# Share of each (library, source, method) that must pass: the bars.
BARS = {("torchvision", "weights"): 0.95, ("timm", "weights"): 0.90, ("hf", "weights"): 1.0}
ONNX_BARS = {"magnitude": 0.90, "l1": 0.80}


def _failures(outcomes: list[Outcome]) -> list[str]:
    """Describes each failed outcome on one line."""
    return [f"{o.model} {o.source} {o.method}: {o.code}: {o.message}" for o in outcomes if not o.passed]


def test_representative_models_pass_every_method(tmp_path: Path) -> None:
    """A Hugging Face ViT archive, timm weights and a torchvision ONNX export go through every method."""
    outcomes = run_cases(SLICE, tmp_path, jobs=1)
    assert len(outcomes) == sum(len(case.methods) for case in SLICE)
    assert not _failures(outcomes), _failures(outcomes)
    structured = [o for o in outcomes if o.method in ("l1", "tpp")]
    assert all(o.flops_reduction is not None and o.flops_reduction > 1.2 for o in structured), structured


@pytest.mark.coverage
def test_full_coverage_meets_the_bars(tmp_path: Path) -> None:
    """Writes docs/coverage.md; ≥95% of torchvision, ≥90% of timm, every Hugging Face type per method; ONNX
    exports ≥90% with magnitude and ≥80% with l1; never `internal`, no job over its time limit."""
    outcomes = run_cases(all_cases(), tmp_path, jobs=2)
    write_table(outcomes, ROOT / "docs" / "coverage.md", command="pytest -m coverage tests/coverage")
    assert not [o for o in outcomes if o.code in ("internal", "timeout", "crashed")], _failures(outcomes)
    for o_source in ("weights", "onnx"):
        for method in {o.method for o in outcomes if o.source == o_source}:
            for family in ("torchvision", "timm", "hf"):
                rows = [
                    o
                    for o in outcomes
                    if (o.model.split("/")[0], o.source, o.method) == (family, o_source, method)
                ]
                bar = BARS.get((family, o_source)) if o_source == "weights" else ONNX_BARS.get(method)
                if rows and bar is not None:
                    assert sum(o.passed for o in rows) / len(rows) >= bar, (family, o_source, method)


def _runs(case: Case) -> tuple[str, str, tuple[str, ...]]:
    """What a case runs, whatever its `only` says."""
    return case.model, case.source, case.methods


def test_pending_names_the_methods_left_to_run() -> None:
    """An upload with some methods recorded stays pending with only the others; the table says which."""
    cases = all_cases()
    first = cases[0]
    done = [Outcome(first.model, first.source, m, True, "ok", None, None, 0.0, "") for m in first.methods[1:]]
    pending = pending_cases(done)
    assert pending[0] == replace(first, only=first.methods[:1])
    assert [_runs(c) for c in pending[1:]] == [_runs(c) for c in cases[1:]]
