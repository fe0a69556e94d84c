"""Prints one image's requirements from pyproject.toml: the derivation the Dockerfile and the tests share.

    python scripts/image_requirements.py api      # core + [service]: the API, migrate, the upload validator
    python scripts/image_requirements.py worker   # core + [engine] + [service]: the GPU worker

The Dockerfile installs these before copying the source (a cached layer per pyproject.toml), then the
project's wheel with --no-deps; tests/deploy builds the API venv the same way, so CI runs what ships.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["IMAGES", "main", "requirements"]

IMAGES: dict[str, tuple[str, ...]] = {"api": ("service",), "worker": ("engine", "service")}
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(image: str, pyproject: Path = PYPROJECT) -> list[str]:
    """Returns the core dependencies plus those of the image's extras, in order, without repeats."""
    project = tomllib.loads(pyproject.read_text())["project"]
    found: list[str] = list(project["dependencies"])
    for extra in IMAGES[image]:
        found += project["optional-dependencies"][extra]
    return list(dict.fromkeys(found))


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the requirements of the image named on the command line, one per line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("image", choices=sorted(IMAGES))
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args(argv)
    print("\n".join(requirements(args.image, args.pyproject)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
