"""Virtual environments built the way the images are: the project's wheel plus one image's requirements.

- `build_wheel` builds the wheel from a copy of the tracked (and new, not ignored) files, so nothing stale
  in the checkout (build/, __pycache__) can leak into it.
- `api_venv` is the API image's environment: `scripts/image_requirements.py api`, installed by pip into a
  venv cached under .cache/ (keyed by a hash of pyproject.toml and that script), so a clean clone builds
  it once; the wheel goes into a per-session folder on PYTHONPATH, never into the shared cache.
- `linked_venv` is a fresh venv that sees the main venv's third-party packages through a .pth file but
  imports the project only from its own installed wheel (cheap: nothing heavy is reinstalled).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

__all__ = ["REPO", "api_venv", "build_wheel", "install_wheel", "linked_venv", "pip", "site_packages"]

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
REQUIREMENTS_SCRIPT = REPO / "scripts" / "image_requirements.py"


def pip(python: Path, *args: str, timeout_s: float = 600) -> str:
    """Runs this interpreter's pip against another environment's `python` (pip --python); returns stdout."""
    argv = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def site_packages(venv: Path) -> Path:
    """The site-packages folder of a venv made by this interpreter's version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return venv / "lib" / version / "site-packages"


def build_wheel(dest: Path) -> Path:
    """Builds the project's wheel (no dependencies, no build isolation) from a clean copy of the source."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    source = dest / "source"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = dest / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(wheels), str(source)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = wheels.glob("secateur-*.whl")
    return wheel


def linked_venv(path: Path) -> Path:
    """Makes a venv whose third-party packages are the main venv's (a .pth line); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    main_site = Path(sysconfig.get_paths()["purelib"])
    # A path added by a .pth is not a site dir: the main venv's own .pth files (its editable install of
    # this project) are not processed, so the project can only come from the wheel installed here.
    (site_packages(path) / "zz_main_venv.pth").write_text(f"{main_site}\n")
    return path / "bin" / "python"


def install_wheel(python: Path, wheel: Path, *, target: Path | None = None) -> None:
    """Installs the project's wheel without dependencies, into the venv or a `target` folder."""
    pip(python, "install", "-q", "--no-deps", "--no-compile",
        *(["--target", str(target)] if target else []), str(wheel))


def _api_key() -> str:
    """The cache key of the API venv: what decides its requirements, and this interpreter's version."""
    digest = hashlib.sha256()
    for path in (REPO / "pyproject.toml", REQUIREMENTS_SCRIPT):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock file, so concurrent sessions build a cached venv once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def api_venv() -> Path:
    """Returns the python of a venv holding exactly the API image's requirements (built once, cached)."""
    venv = CACHE / f"api-venv-{_api_key()}"
    python = venv / "bin" / "python"
    with _locked(CACHE / "api-venv.lock"):
        if (venv / ".complete").exists():
            return python
        for stale in CACHE.glob("api-venv-*"):
            if stale.is_dir():
                shutil.rmtree(stale)
        requirements = CACHE / "api-requirements.txt"
        requirements.write_text(subprocess.run(
            [sys.executable, str(REQUIREMENTS_SCRIPT), "api"], check=True, capture_output=True, text=True,
        ).stdout)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        pip(python, "install", "-q", "-r", str(requirements), timeout_s=900)
        (venv / ".complete").touch()
    return python
