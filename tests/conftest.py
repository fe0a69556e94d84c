"""Suite-wide test settings: one torch thread per process (20x faster than two on 2-core machines),
derandomized Hypothesis in CI."""

import os

from hypothesis import settings

# CI replays the same examples every run (a red build is reproducible); local runs keep exploring.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
