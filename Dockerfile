# syntax=docker/dockerfile:1
# Two images from one source tree, both installing the project's wheel (migrations/ and the dashboard inside):
#   api    - the control plane (FastAPI, SQL, S3, Celery producer) and the submit-time upload validator.
#            Requirements: core + [service]. The validator child (workers/compression/validate.py) parses
#            uploads with numpy, onnx, safetensors and pillow, so the [service] extra carries them: measured
#            in a venv built from this list (tests/deploy/venvs.py), 283 MB installed, of which those four
#            (with protobuf and ml_dtypes) are 131 MB; the API starts to a 200 on /healthz in 0.8-1.1 s on
#            2 cores. It needs no torch (1.2 GB, plus 3.2 GB of CUDA libraries): a safetensors upload is
#            checked by its header here and against its architecture by the worker when it loads it.
#            Moving every deep check to a worker-side pre-flight task would save the 131 MB but make each
#            submit wait on the queue and a free GPU worker before it could answer 4xx or 202.
#            POST /preflight needs the engine, so this image forwards it (SECATEUR_PREFLIGHT_URL) to the
#            worker image run as `secateur serve --no-worker` on CPU (docker-compose.yml's `preflight`).
#   worker - the data plane: CUDA torch + the engine; one worker container per GPU. Also the image of the
#            `preflight` service (no GPU), which answers the api's forwarded pre-flights.
# Build: docker build --target api -t secateur-api .   /   docker build --target worker -t secateur-worker .
# Each image's requirement list comes from scripts/image_requirements.py, which tests/deploy and
# tests/e2e/test_compose_topology.py use too, so CI runs the API from exactly this requirement set.

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
# Dependencies come from pyproject.toml alone, so their layers are rebuilt only when it changes.
COPY pyproject.toml ./
COPY scripts/image_requirements.py scripts/
RUN python scripts/image_requirements.py api > /tmp/requirements-api.txt \
    && python scripts/image_requirements.py worker > /tmp/requirements-worker.txt

FROM base AS wheel
# The project itself, as a wheel: the images hold no source tree, so nothing can import from one.
COPY . /src
RUN pip wheel --no-deps --wheel-dir /wheels /src

FROM base AS api
RUN pip install -r /tmp/requirements-api.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'the api image must not ship torch'"
USER secateur
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Not loopback inside a container: `serve` refuses that unless SECATEUR_AUTH=keys (set in docker-compose.yml).
CMD ["secateur", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]

FROM base AS worker
# PyPI's Linux torch wheel is the CUDA build (the CUDA runtime comes as pip packages); the host needs only
# the NVIDIA driver and the container toolkit. torch and torchvision go first, pinned together (as
# scripts/install.sh does), so nothing installed after them picks another torch.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install -r /tmp/requirements-worker.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER secateur
# One job process per container (= per GPU); scale with more worker containers.
CMD ["secateur", "worker", "--concurrency", "1"]
