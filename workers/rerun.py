"""A rerun's verdict: did it reproduce its original's kept weights (masks / channels) and accuracies?

The worker that finishes a rerun (a job with `rerun_of`) reads the original's stored report and adds
`rerun_of` and `reproduced: {kept_equal, accuracy_equal, weights_equal, differences, environment_changes}`
to its own report. Equality is exact: on CPU a rerun is bit-identical (workers/compression/manifest.py says
why) unless `environment_changes` lists a library, device or thread count that differs from the original's.
"""

from __future__ import annotations

import json
from typing import Any

from service.storage.base import ObjectNotFound, ObjectStore
from service.storage.keys import artifact_key

__all__ = ["ACCURACIES", "compare_reports", "rerun_fields"]

ACCURACIES = (("baseline", "accuracy"), ("baseline", "ort_accuracy"), ("pruned", "accuracy"),
              ("pruned", "ort_accuracy"))
_MAX_DIFFERENCES = 20


def _outcome(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's outcome digests of a report (empty for a report written before manifests)."""
    return dict((report.get("manifest") or {}).get("outcome") or {})


def _layer_differences(original: list[dict[str, Any]], rerun: list[dict[str, Any]]) -> list[str]:
    """Names the layers whose kept channels or density differ (or that only one side has)."""
    before = {str(row.get("name")): row for row in original}
    after = {str(row.get("name")): row for row in rerun}
    return [f"layer {name}: {before.get(name)} != {after.get(name)}"
            for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]


def _environment_changes(original: dict[str, Any], rerun: dict[str, Any]) -> list[str]:
    """Lists the manifest's libraries, device and determinism settings that differ between the two runs."""
    before, after = original.get("manifest") or {}, rerun.get("manifest") or {}
    if not before:
        return []  # a report written before manifests: nothing to compare with
    changes = []
    for section in ("libraries", "device", "determinism"):
        old, new = before.get(section) or {}, after.get(section) or {}
        changes += [f"{section}.{key}: {old.get(key)} != {new.get(key)}"
                    for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    return changes


def compare_reports(original: dict[str, Any], rerun: dict[str, Any]) -> dict[str, Any]:
    """Compares a rerun's report with its original's, exactly; lists what differs (at most 20 lines)."""
    differences = _layer_differences(list(original.get("layers") or []), list(rerun.get("layers") or []))
    before, after = _outcome(original), _outcome(rerun)
    if "kept_sha256" in before and before["kept_sha256"] != after.get("kept_sha256"):  # older: layers only
        differences.append("the kept weights' digest (shapes and nonzero pattern) differs")
    kept_equal = not differences
    accuracy_equal = True
    for side, key in ACCURACIES:
        first, second = (original.get(side) or {}).get(key), (rerun.get(side) or {}).get(key)
        if first != second:
            accuracy_equal = False
            differences.append(f"{side}.{key}: {first} != {second}")
    weights_equal = "weights_sha256" in before and before.get("weights_sha256") == after.get("weights_sha256")
    return {"kept_equal": kept_equal, "accuracy_equal": accuracy_equal, "weights_equal": weights_equal,
            "differences": differences[:_MAX_DIFFERENCES],
            "environment_changes": _environment_changes(original, rerun)[:_MAX_DIFFERENCES]}


def rerun_fields(store: ObjectStore, tenant: str, original_id: str, report: dict[str, Any]) -> dict[str, Any]:
    """The fields a rerun's report gains: `rerun_of`, and `reproduced` (null when the original's report
    is gone, e.g. the original job was deleted meanwhile)."""
    try:
        original = json.loads(b"".join(store.open_stream(artifact_key(tenant, original_id, "report.json"))))
    except ObjectNotFound:
        return {"rerun_of": original_id, "reproduced": None}
    return {"rerun_of": original_id, "reproduced": compare_reports(original, report)}
