"""Suite-wide test settings: one torch thread per process (20x faster than two on 2-core machines)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
