"""What an auditor needs to reproduce a run: package versions, device, code version."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: flows/, tasks/, templates/

PACKAGES = ("torch", "torchvision", "shap", "captum", "lime", "prefect", "prefect-dask", "distributed", "numpy",
            "scipy", "pandas", "pyarrow", "scikit-learn", "scikit-image", "safetensors", "jinja2", "weasyprint",
            "matplotlib", "pillow")


def package_versions(names) -> dict[str, str]:
    """Each installed distribution's version ("not installed" where it is not)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict:
    """Python, platform, package versions, CUDA and device, torch threads, and the code's version and digest."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(PACKAGES),
        "cuda": torch.version.cuda or "none",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "code_version": code_version(),
        "code_sha256": code_digest(),
    }


SOURCE_FOLDERS = ("flows", "tasks", "templates")  # what the digest of the project's own code covers


@functools.cache
def code_digest() -> str:
    """SHA-256 over this project's source files (path and bytes, in order): changes with any edit, git or not."""
    digest = hashlib.sha256()
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".j2", ".css"}:
                digest.update(f"{path.relative_to(ROOT).as_posix()}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def code_version() -> str:
    """The git commit of the pipeline's own checkout (with '+dirty' for local changes), if known."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")
