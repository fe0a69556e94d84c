"""`secateur preflight`: what a job on this model would meet, in seconds, with the engine alone.

    secateur preflight --model M [--architecture A] [--dataset D] [--config F] [--method X --pruning-ratio P]
                       [--also '{"flops_reduction": 3}' ...] [--json]

Exit codes: 0 a job can run as asked (`ok`); 3 it would fail (a target out of reach, an export that
differs from PyTorch: the problems are listed); 2 refused (one line `error: <code>: <message>`), as a job
would be; 1 unexpected failure.

The service runs it in its sandbox (`--sandbox-memory-bytes`, `--sandbox-cpu-s`, `--sandbox-file-bytes`):
it limits itself before opening the model and prints one JSON line, `{"verdict": "answer", "preflight":
{...}}` or `{"verdict": "refused", "code": ..., "message": ...}`. Started as `--await-request`, it imports the
engine first and then reads those arguments as one JSON list on stdin: the service starts such a child
before a request comes, so the request does not wait for torch to import.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from workers.compression.cli import add_job_flags, build_config
from workers.compression.config import Target
from workers.compression.errors import InvalidConfig, UserError
from workers.compression.validate import MAX_OPEN_FILES, RESOURCES_EXCEEDED

__all__ = ["main", "render"]

EXIT_PROBLEMS = 3
_MAX_MESSAGE = 2000  # characters of a refusal passed back to the service


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parses the job's flags, the extra targets and the output and sandbox options."""
    p = argparse.ArgumentParser(prog="secateur preflight",
                description="Check in seconds whether a job on this model can run, and what it would give.")
    add_job_flags(p, dataset_required=False)
    p.add_argument("--also", action="append", default=[], metavar="TARGET",
                   help='another target to predict, as JSON: \'{"pruning_ratio": 0.3}\' (repeatable)')
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    p.add_argument("--no-estimate", action="store_true", help="skip the timed training step")
    for name in ("memory-bytes", "cpu-s", "file-bytes"):
        p.add_argument(f"--sandbox-{name}", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _targets(texts: Sequence[str]) -> list[Target]:
    """Parses each --also target."""
    try:
        return [Target.model_validate(json.loads(text)) for text in texts]
    except (json.JSONDecodeError, ValidationError) as exc:
        example = '{"pruning_ratio": 0.3}'
        raise InvalidConfig(f"--also takes a target as JSON, e.g. '{example}': {exc}") from None


def _limit(args: argparse.Namespace) -> bool:
    """Caps this process as the service's sandbox asks (address space, CPU, bytes per written file, open
    files); returns whether it runs sandboxed."""
    if args.sandbox_memory_bytes is None:
        return False
    caps = {resource.RLIMIT_AS: args.sandbox_memory_bytes, resource.RLIMIT_CORE: 0,
            resource.RLIMIT_FSIZE: args.sandbox_file_bytes or 0, resource.RLIMIT_NOFILE: MAX_OPEN_FILES}
    for kind, cap in caps.items():
        resource.setrlimit(kind, (cap, cap))
    usage = resource.getrusage(resource.RUSAGE_SELF)  # RLIMIT_CPU counts from the start: imports included
    cpu = (args.sandbox_cpu_s or 60) + int(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL after
    return True


def render(answer: dict[str, Any]) -> str:
    """Formats an answer for people: the verdict, the model, the groups, each target and the export."""
    lines = [f"{'ok' if answer['ok'] else 'NOT OK'}: {answer['model_format']} model, input "
             f"{tuple(answer['input_shape'])}, {answer['num_classes']} classes, {answer['params']:,} params, "
             f"{answer['flops']:,} MACs",
             f"groups     {len(answer['groups'])} prunable, {len(answer['excluded'])} left alone, "
             f"{len(answer['unsupported'])} unsupported"]
    lines += [f"  left alone {e['layer']}: {e['reason']}" for e in answer["excluded"][:10]]
    cost = answer["cost"]
    lines.append(f"cost       {cost['params_bytes'] / 2**20:,.1f} MiB of weights, "
                 f"{cost['peak_activation_bytes'] / 2**20:,.1f} MiB of activations and "
                 f"{cost['flops_per_sample'] / 1e9:,.3g} GFLOPs per sample")
    for t in answer["targets"]:
        goal = ", ".join(f"{k} {v:g}" for k, v in t["target"].items())
        if t["reachable"]:
            lines.append(f"target     {goal}: {t['params']:,} params ({t['nonzero_params']:,} nonzero), "
                         f"{t['flops']:,} MACs")
        else:
            lines.append(f"target     {goal}: out of reach: {t['reason']}")
    trip = answer["onnx_roundtrip"]
    lines.append(f"onnx       {'round-trips' if trip['passed'] else 'DIFFERS'} on {trip['samples']} samples"
                 + (f" (max |logit diff| {trip['max_abs_diff']:.2e})" if trip["passed"] else ""))
    estimate = answer["estimate_s"]
    lines.append(f"estimate   {estimate:,.0f} s ({answer['estimate_basis']})" if estimate is not None
                 else f"estimate   {answer['estimate_basis']}")
    lines += [f"problem    {p['code']}: {p['message']}" for p in answer["problems"]]
    lines.append(f"checked in {answer['elapsed_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs `secateur preflight` with `argv` (the words after `secateur preflight`)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    sandboxed = False
    try:
        args = _parse(args_list)
        sandboxed = _limit(args)
        config = build_config(args)
        targets = _targets(args.also)
        from workers.compression.preflight import run_preflight  # torch loads once the input parses

        answer = run_preflight(args.model, config, dataset_path=args.dataset, targets=targets,
                               threads=args.threads, estimate=not args.no_estimate)
    except UserError as exc:
        message = " ".join(exc.message.split())[:_MAX_MESSAGE]
        if sandboxed:
            print(json.dumps({"verdict": "refused", "code": exc.code, "message": message}), flush=True)
            return 0
        print(f"error: {exc.code}: {message}", file=sys.stderr)
        return 2
    except MemoryError:
        if not sandboxed:
            raise
        print(json.dumps({"verdict": "refused", "code": RESOURCES_EXCEEDED,
                          "message": "pre-flight needed more memory than its limit allows"}), flush=True)
        return 0
    except Exception as exc:  # a model that breaks the analysis in a way nobody typed
        if not sandboxed:
            raise
        print(json.dumps({"verdict": "failed", "message": f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE]}),
              flush=True)
        return 0
    if sandboxed:
        print(json.dumps({"verdict": "answer", "preflight": answer}), flush=True)
        return 0
    print(json.dumps(answer, indent=2) if args.json else render(answer))
    return 0 if answer["ok"] else EXIT_PROBLEMS


def await_request() -> int:
    """Imports the engine while nobody waits, then runs the one argument list that arrives on stdin (a JSON
    list of words); exits quietly when stdin closes first (the service went away or needed no child)."""
    import workers.compression.preflight  # noqa: F401  torch, torchvision, onnx: most of a cold start

    line = sys.stdin.readline()
    if not line.strip():
        return 0
    words = json.loads(line)
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        print("error: --await-request reads a JSON list of arguments", file=sys.stderr)
        return 1
    return main(words)


if __name__ == "__main__":
    sys.exit(await_request() if sys.argv[1:] == ["--await-request"] else main())
