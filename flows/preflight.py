"""Every check that reads the file system or the environment, once, before any work: for the CLI (before
Prefect starts) and for deployed runs (at the start of the flow) alike.

`RunConfig` (tasks/run/config.py) checks the values; this checks what they name: the dataset's
directory or file, the model card, the run to compare with (of the same dataset, intact), the run
to resume (unfinished, started with these parameters), the output directory, and the Dask options.
A check that passed in this process is not repeated (the CLI's check is the flow's). The module is
light on purpose: the CLI runs it before it imports torch.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path

from tasks.data.specs import check_dataset_source
from tasks.model.formats import detect_format
from tasks.run import layout
from tasks.run.config import RunConfig
from tasks.run.errors import InputError, user_path
from tasks.run.history import check_previous_run
from tasks.run.resume import resumable_parameters
from tasks.run.serve import REPORTS_DIR, REPORTS_URL
from tasks.steps.model_card import read_model_card

_PASSED: dict[tuple, RunConfig] = {}  # (config, Dask options) -> the checked config, for configs given and returned


def preflight(config: RunConfig, dask_address: str | None = None, dask_workers: int = 0) -> RunConfig:
    """`config` with its paths resolved, or InputError naming what cannot work."""
    reports_url()
    key = (config, dask_address, dask_workers)
    if key not in _PASSED:
        checked = _check(config, dask_address, dask_workers)
        _PASSED[key] = _PASSED[(checked, dask_address, dask_workers)] = checked
    return _PASSED[key]


def published_reports() -> Path | None:
    """ACCOUNTABILITY_REPORTS, the directory that `reports_url()` serves (None: each run's --out)."""
    directory = os.environ.get(REPORTS_DIR) or None
    return Path(directory) if directory else None


def reports_url() -> str | None:
    """ACCOUNTABILITY_REPORTS_URL, the http(s) address at which `published_reports()` (or each run's --out) is
    served (the UI's link to a report points there), checked; None when unset."""
    url = os.environ.get(REPORTS_URL) or None
    if url is not None and not url.startswith(("http://", "https://")):
        raise InputError(f"{REPORTS_URL} must be an http:// or https:// address, got {url!r}")
    return url


def _check(config: RunConfig, dask_address: str | None, dask_workers: int) -> RunConfig:
    check_dask_options(dask_address, dask_workers)
    check_dataset_source(config.dataset, config.label)
    out = user_path(config.out, "--out")
    check_writable(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    inside = next((p for p in (out, *out.parents) if layout.path(p, "run_record").is_file()), None)
    if inside is not None:
        raise InputError(f"--out {out} is inside the run directory {inside}: a new run there would change that "
                         "run's files (and fail its verify); give a directory outside every run")
    resolved = {"out": out}
    if config.model is not None:
        resolved["model"] = user_path(config.model, "--model")
        fmt = detect_format(resolved["model"])
        if config.shap_engine == "shap" and fmt != "safetensors":
            raise InputError(f"--shap-engine shap needs the model as PyTorch modules; --model {resolved['model']} is "
                             f"a {fmt} file: use the default engine, which reads its graph")
    if config.challenger is not None:
        resolved["challenger"] = user_path(config.challenger, "--challenger")
        try:
            detect_format(resolved["challenger"])
        except InputError as exc:
            raise InputError(str(exc).replace("--model", "--challenger", 1)) from None
    if config.metadata is not None:
        resolved["metadata"] = user_path(config.metadata, "--metadata")
        if not resolved["metadata"].is_file():
            raise InputError(f"--metadata {resolved['metadata']} does not exist or is not a file")
    if config.model_card is not None:
        resolved["model_card"] = user_path(config.model_card, "--model-card")
        read_model_card(resolved["model_card"])
    if config.compare is not None:
        resolved["compare"] = check_previous_run(config.compare, config.dataset)
    if config.resume is not None:
        resolved["resume"] = user_path(config.resume, "--resume")
        recorded = resumable_parameters(resolved["resume"])
        mine = {k: v for k, v in replace(config, **resolved).to_json().items() if k != "resume"}
        differing = sorted(k for k in mine if k in recorded and recorded[k] != mine[k])
        if differing:
            raise InputError(f"--resume {resolved['resume']}: it was started with other {', '.join(differing)}; "
                             "resume it with its recorded parameters (run.json)")
    return replace(config, **resolved)


MIN_FREE_BYTES = 256 * 2**20  # a small run writes tens of megabytes; less free space than this fails late
MIN_FREE_INODES = 1000  # a run writes about 120 files and directories
RUN_PATH_ROOM = 160  # characters a run adds below --out: its directory name and deepest file path


def check_writable(out: Path) -> None:
    """--out can take a run: its nearest existing directory is writable, on a file system with room, and the
    run's paths will not be too long for it. Checked here, not minutes later by the step that writes."""
    if any(len(part.encode()) > 255 for part in out.parts):  # NAME_MAX of every common file system
        raise InputError(f"--out {out}: a directory name is longer than the file system's 255 bytes")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: cannot write in {existing} (permission denied or a read-only file system)")
    fs = os.statvfs(existing)
    free = fs.f_bavail * fs.f_frsize
    if free < MIN_FREE_BYTES:
        raise InputError(f"--out {out}: only {free / 2**20:.0f} MiB free on its file system; a run needs at least "
                         f"{MIN_FREE_BYTES / 2**20:.0f} MiB")
    if fs.f_files and fs.f_favail < MIN_FREE_INODES:  # f_files 0: the file system does not count them
        raise InputError(f"--out {out}: its file system has room for only {fs.f_favail} more files (inodes); a run "
                         f"needs at least {MIN_FREE_INODES}")
    if len(str(out).encode()) + RUN_PATH_ROOM > os.pathconf(existing, "PC_PATH_MAX"):
        raise InputError(f"--out {out} is too long a path: a run's files below it would pass the file system's "
                         f"limit of {os.pathconf(existing, 'PC_PATH_MAX')} bytes")


def check_dask_options(dask_address: str | None = None, dask_workers: int = 0) -> None:
    """Refuse Dask options that cannot work, before any work starts (once per process and API address)."""
    from prefect.settings import get_current_settings

    _check_dask_options(dask_address, dask_workers, get_current_settings().api.url)


@functools.cache
def _check_dask_options(dask_address: str | None, dask_workers: int, api_url: str | None) -> None:
    if dask_address and dask_workers:
        raise InputError("give the Dask scheduler's address or a number of local Dask workers, not both")
    if not isinstance(dask_workers, int) or isinstance(dask_workers, bool) or dask_workers < 0:
        raise InputError(f"--dask-workers must be a non-negative integer, got {dask_workers!r}")
    if dask_address and api_url is None:
        raise InputError(f"the Dask workers at {dask_address} must report to a Prefect server that they can "
                         "reach: set PREFECT_API_URL (here and on them); this run uses a local ephemeral one")
