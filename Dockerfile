# syntax=docker/dockerfile:1
# Two images from one source tree:
#   api    - the control plane (FastAPI, SQL, S3, Celery producer): no torch, no onnx; small and quick to start.
#   worker - the data plane: CUDA torch + the engine; one worker container per GPU.
# Build: docker build --target api -t secateur-api .   /   docker build --target worker -t secateur-worker .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && useradd --create-home --uid 10001 secateur
WORKDIR /app
# Dependencies come from pyproject.toml alone, so this layer is rebuilt only when they change.
# requirements-api.txt leaves out what only the engine needs; the service never imports it.
COPY pyproject.toml ./
RUN python - <<'EOF'
import re
import tomllib

ENGINE_ONLY = {"torch", "torch-pruning", "onnx", "onnxruntime", "safetensors", "numpy", "zstandard", "pillow"}
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
def name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
open("/tmp/requirements-all.txt", "w").write("\n".join(deps) + "\n")
open("/tmp/requirements-api.txt", "w").write("\n".join(d for d in deps if name(d) not in ENGINE_ONLY) + "\n")
EOF

FROM base AS api
RUN pip install -r /tmp/requirements-api.txt
COPY . .
# Editable: migrations/ and service/static are read from the source tree next to the code.
RUN pip install --no-deps -e . \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'the api image must not ship torch'"
USER secateur
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Not loopback inside a container: `serve` refuses that unless SECATEUR_AUTH=keys (set in docker-compose.yml).
CMD ["secateur", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]

FROM base AS worker
# PyPI's Linux torch wheel is the CUDA build (the CUDA runtime comes as pip packages); the host needs only
# the NVIDIA driver and the container toolkit. torch goes first so nothing else picks its version.
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}" \
    && pip install --no-deps onnx2torch==1.5.15 \
    && pip install -r /tmp/requirements-all.txt
COPY . .
RUN pip install --no-deps -e .
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER secateur
# One job process per container (= per GPU); scale with more worker containers.
CMD ["secateur", "worker", "--concurrency", "1"]
