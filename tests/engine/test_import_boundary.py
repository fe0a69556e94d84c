"""The engine stands alone: importing it pulls in no web/DB/queue stack and does not initialise CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_STACK = ("fastapi", "starlette", "sqlalchemy", "celery", "alembic", "uvicorn", "boto3", "redis")

PROBE = """
import json, sys
import workers.compression.cli
cli_pulls_torch = "torch" in sys.modules
import workers.compression.pipeline
from workers.compression.methods import registry
registry.names()
import torch
print(json.dumps({
    "modules": sorted(m.split(".")[0] for m in sys.modules),
    "cuda_initialized": torch.cuda.is_initialized(),
    "cli_pulls_torch": cli_pulls_torch,
}))
"""


def test_engine_imports_no_service_stack_and_no_cuda() -> None:
    """In a fresh interpreter: the pipeline, the CLI and every method import without the service stack."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not set(SERVICE_STACK) & set(result["modules"])
    assert result["cuda_initialized"] is False
    assert result["cli_pulls_torch"] is False  # `--help` and argument errors answer without loading torch
