"""Resuming a run that died (kill -9, a lost machine): its finished steps are reused, not recomputed.

A run records its parameters in ``run.json`` right after the load step. Every later step is
cached by Prefect under a key built from the step's name, its parameters, the SHA-256 of every
file a parameter names, and the code that computes it: the digest of this project's own source
and the versions of the packages that change results (`RESULT_PACKAGES`). The result (paths and
hashes, as JSON) is persisted inside the run directory (``.prefect-results/``). `accountability run --resume RUN_DIR` runs the flow again
into the same directory with the recorded parameters: finished steps come back Cached, the rest
run, and the report and manifest are written last as always. Files are only ever renamed into
place when complete, so a killed step leaves nothing but hidden ``.*.tmp`` files, removed here.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from tasks.run import layout
from tasks.run.artifacts import sha256_file, write_json_atomic
from tasks.run.errors import InputError, user_path
from tasks.run.provenance import code_digest, package_versions

RESULT_PACKAGES = ("torch", "numpy", "shap", "captum", "lime", "scikit-learn", "scikit-image")  # their versions key results


def record_run(run_dir: Path, parameters: dict) -> Path:
    """Write the parameters a run was started with (what --resume runs it again with)."""
    return write_json_atomic(layout.path(run_dir, "run_record"), parameters)


def resumable_parameters(run_dir: Path) -> dict:
    """The recorded parameters of an unfinished run, or InputError saying why it cannot be resumed."""
    run_dir = user_path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"--resume {run_dir}: no such run directory")
    manifest, record = layout.path(run_dir, "manifest"), layout.path(run_dir, "run_record")
    if manifest.exists():
        raise InputError(f"--resume {run_dir}: the run finished (it has {manifest.name}); nothing to resume")
    try:
        parameters = json.loads(record.read_text())
    except FileNotFoundError:
        raise InputError(f"--resume {run_dir}: no {record.name}, the run died while loading data; start a new run") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--resume {run_dir}: {record.name} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise InputError(f"--resume {run_dir}: cannot read {record.name}: {exc.strerror or exc}") from None
    if not isinstance(parameters, dict) or "dataset" not in parameters:
        raise InputError(f"--resume {run_dir}: {record.name} does not hold a run's parameters")
    return parameters


def file_refs(value) -> list[dict]:
    """Every `file_ref` ({"path", "sha256"}) anywhere in a step's result."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str) and isinstance(value.get("sha256"), str):
            return [value]
        return [ref for item in value.values() for ref in file_refs(item)]
    if isinstance(value, (list, tuple)):
        return [ref for item in value for ref in file_refs(item)]
    return []


def check_recorded_files(result, run_dir: Path | str, step: str) -> None:
    """Every file a step's result names is inside the run directory and as the step recorded it (SHA-256).

    A resumed run gets the results of its finished steps back from the cache: a file swapped or edited
    since (weights, a shard's values), or a result edited to name a file elsewhere, must stop the run,
    not become part of its report."""
    run_dir = Path(run_dir).resolve()
    for ref in file_refs(result):
        path = Path(ref["path"]).resolve()
        if not path.is_relative_to(run_dir):
            raise InputError(f"{step} step: its result names {path}, outside the run directory {run_dir}: refused")
        if not path.is_file() or sha256_file(path) != ref["sha256"]:
            raise InputError(f"{step} step: {path.relative_to(run_dir)} changed since the step wrote it (SHA-256 "
                             "differs from its recorded result): the run directory was modified; start a new run")


def clear_partial_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files a killed step left behind; return them."""
    stale = [p for p in Path(run_dir).rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink()
    return stale


def _digest(value):
    """Parameters made hashable, with every existing file replaced by its path and SHA-256."""
    if isinstance(value, dict):
        return {str(k): _digest(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_digest(v) for v in value]
    if isinstance(value, (str, Path)) and str(value) and _is_file(value):
        return {"file": str(value), "sha256": sha256_file(Path(value))}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _is_file(value: str | Path) -> bool:
    """Whether a parameter names a file; any text may be a parameter (a 300-character column name is not a path)."""
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # name too long, NUL bytes
        return False


@functools.cache
def code_key() -> dict:
    """What, besides its inputs, decides a step's result: this project's source and the result-changing packages."""
    return {"code": code_digest(), "packages": package_versions(RESULT_PACKAGES)}


def input_hash_key(context, parameters: dict) -> str:
    """Prefect cache key: the task's name, its parameters, the contents of the files they name, and `code_key`."""
    payload = json.dumps({"task": context.task.name, "parameters": _digest(parameters), **code_key()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
