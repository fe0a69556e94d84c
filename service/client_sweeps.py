"""`secateur sweep`: start a sweep on stored inputs, and show, follow, cancel, delete or list sweeps.

`secateur sweep --model-id M --dataset-id D --method l1 --architecture resnet20 --ratios 0.3,0.5,0.7`
starts one job per ratio and prints the sweep id; `secateur sweep status ID [--wait]` prints a table of
its points with the Pareto front marked. Rendering lives here; client_cli.py registers the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.client import SecateurClient

__all__ = ["add_sweep_arguments", "run_sweep", "sweep_table"]

_KINDS = {"ratios": "pruning_ratio", "sparsities": "sparsity", "flops_reductions": "flops_reduction"}


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `sweep`'s arguments: an action and id, or the inputs, config and targets of a new sweep."""
    parser.add_argument("action", nargs="?", choices=("status", "cancel", "delete", "list"),
                        help="act on sweep ID (none: start a new sweep)")
    parser.add_argument("sweep_id", nargs="?")
    parser.add_argument("--model-id", help="a stored model's id (secateur upload model FILE)")
    parser.add_argument("--dataset-id", help="a stored dataset's id (secateur upload dataset FILE)")
    parser.add_argument("--method", choices=("weightmom", "tpp", "magnitude", "l1"))
    parser.add_argument("--architecture", help="architecture of safetensors weights, e.g. resnet20")
    parser.add_argument("--epochs", type=int, help="finetuning epochs of every point")
    parser.add_argument("--config", help="JSON job config without a target; the flags above override it")
    targets = parser.add_mutually_exclusive_group()
    targets.add_argument("--ratios", help="pruning ratios, comma-separated: 0.3,0.5,0.7")
    targets.add_argument("--sparsities", help="target sparsities, comma-separated")
    targets.add_argument("--flops-reductions", help="FLOPs reduction factors, comma-separated")
    parser.add_argument("--wait", action="store_true", help="poll until every point has ended")
    # client_cli.build_config reads these single-target flags; a sweep takes lists instead.
    parser.set_defaults(target_sparsity=None, pruning_ratio=None, flops_reduction=None)


def _targets(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The targets the flags list (ValueError when none, or a value is not a number)."""
    for flag, kind in _KINDS.items():
        text = getattr(args, flag)
        if text:
            return [{kind: float(value)} for value in text.split(",") if value.strip()]
    raise ValueError("give the targets: --ratios, --sparsities or --flops-reductions (comma-separated)")


def _figure(value: Any, form: str) -> str:
    """Formats a number, or a dash when it is missing."""
    return form.format(value) if isinstance(value, int | float) else "–"


def _counts(side: dict[str, Any]) -> str:
    """Accuracy, FLOPs, params and ONNX bytes of a point or of the baseline, in table columns."""
    return (f"{_figure(side.get('accuracy'), '{:.2%}'):>9} {_figure(side.get('flops'), '{:,}'):>14} "
            f"{_figure(side.get('params'), '{:,}'):>12} {_figure(side.get('onnx_bytes'), '{:,}'):>12}")


def sweep_table(sweep: dict[str, Any]) -> str:
    """The sweep as a table: a row per point (* on the Pareto front), then the baseline's figures."""
    lines = [f"sweep {sweep['id']}  {sweep['status']}",
             f"  {'target':<24} {'status':<10} {'accuracy':>9} {'FLOPs':>14} {'params':>12} "
             f"{'ONNX bytes':>12} {'ms (b1)':>8}  job"]
    for point in sweep["points"]:
        target = ", ".join(f"{k} {v:g}" for k, v in point["target"].items())
        mark = "*" if point["job_id"] in sweep["pareto"] else " "
        latency = (point.get("latency_ms") or {}).get("b1")
        lines.append(f"{mark} {target:<24} {point['status']:<10} {_counts(point)} "
                     f"{_figure(latency, '{:.2f}'):>8}  {point['job_id']}")
    base = sweep.get("baseline") or {}
    if base:
        lines.append(f"  {'dense baseline':<24} {'':<10} {_counts(base)}")
    lines.append("* on the Pareto front: no other point is as accurate and cheaper in FLOPs, latency, size")
    return "\n".join(lines)


def _show(sweep: dict[str, Any], as_json: bool) -> int:
    """Prints a sweep (table or JSON); exit 0 unless it ended failed (1) or cancelled (3)."""
    print(json.dumps(sweep, indent=2) if as_json else sweep_table(sweep))
    return {"failed": 1, "cancelled": 3}.get(sweep["status"], 0)


def _progress(sweep: dict[str, Any]) -> None:
    """One stderr line per poll: how many points have ended."""
    ended = sum(p["status"] in ("succeeded", "failed", "cancelled") for p in sweep["points"])
    print(f"sweep {sweep['id']}: {ended}/{len(sweep['points'])} points ended", file=sys.stderr, flush=True)


def run_sweep(args: argparse.Namespace, client: SecateurClient, config: dict[str, Any]) -> int:
    """Runs `secateur sweep`: starts one (with `config` from the flags) or acts on `sweep_id`."""
    if args.action == "list":
        page = client.sweeps()
        if args.json:
            print(json.dumps(page, indent=2))
        for sweep in [] if args.json else page["sweeps"]:
            print(f"{sweep['id']}  {str(sweep['created_at'])[:19]}  {sweep['status']:<9}  "
                  f"{len(sweep['points'])} points, {len(sweep['pareto'])} on the front")
        return 0
    if args.action is not None:
        if not args.sweep_id:
            raise ValueError(f"secateur sweep {args.action} needs a sweep id")
        if args.action == "delete":
            client.delete_sweep(args.sweep_id)
            deleted = {"id": args.sweep_id, "deleted": True}
            print(json.dumps(deleted) if args.json else f"{args.sweep_id}  deleted")
            return 0
        if args.action == "cancel":
            return _show(client.cancel_sweep(args.sweep_id), args.json)
        if args.wait:
            return _show(client.wait_sweep(args.sweep_id, on_update=_progress), args.json)
        return _show(client.get_sweep(args.sweep_id), args.json)
    if not (args.model_id and args.dataset_id):
        raise ValueError("a new sweep needs --model-id and --dataset-id (upload them first)")
    created = client.create_sweep(args.model_id, args.dataset_id, config, _targets(args))
    if args.wait:
        print(created["id"], flush=True)
        return _show(client.wait_sweep(created["id"], on_update=_progress), args.json)
    print(json.dumps(created, indent=2) if args.json else created["id"])
    return 0
