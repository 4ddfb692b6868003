"""Earlier runs: which finished run a new one compares itself with, and whether a named one can be.

A run is comparable when it is of the same dataset spec, was written with this version's run
layout (tasks/run/layout.py), and passes `verify` (a tampered run is not compared with).
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.run import layout
from tasks.run.errors import InputError, user_path
from tasks.run.verify import verify_run


def _recorded(run_dir: Path) -> dict | None:
    """A finished run's manifest, or None (not a run directory, or not readable as one)."""
    try:
        recorded = json.loads(layout.path(run_dir, "manifest").read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def comparable(recorded: dict | None, dataset: str) -> bool:
    """A manifest of a run of `dataset` written with this version's run layout."""
    parameters = (recorded or {}).get("parameters")
    return (isinstance(parameters, dict) and parameters.get("dataset") == dataset
            and recorded.get("layout") == layout.VERSION)


def _intact(run_dir: Path) -> bool:
    """Whether `run_dir` passes verification (a malformed or foreign one does not, and breaks nothing)."""
    try:
        return not verify_run(run_dir)
    except InputError:
        return False


def previous_run(out: Path, dataset: str, current: Path) -> Path | None:
    """The newest finished, intact run of `dataset` under `out`, other than `current` (newest checked first)."""
    for run_dir in sorted(Path(out).iterdir(), key=lambda p: p.name, reverse=True):
        if (run_dir.is_dir() and run_dir.resolve() != Path(current).resolve()
                and comparable(_recorded(run_dir), dataset) and _intact(run_dir)):
            return run_dir
    return None


def check_previous_run(run_dir: Path, dataset: str) -> Path:
    """A run named with --compare: it must be a finished run of the same dataset and layout, and pass verification."""
    run_dir = user_path(run_dir)
    recorded = _recorded(run_dir)
    if recorded is None:
        raise InputError(f"--compare {run_dir}: not a finished run directory (no readable {layout.FILES['manifest']})")
    if not comparable(recorded, dataset):
        theirs = (recorded.get("parameters") or {}).get("dataset") if isinstance(recorded.get("parameters"), dict) else None
        raise InputError(f"--compare {run_dir}: a run of {theirs!r} with layout {recorded.get('layout')!r}; this run "
                         f"is of {dataset!r} with layout {layout.VERSION!r}: they cannot be compared")
    problems = verify_run(run_dir)
    if problems:
        raise InputError(f"--compare {run_dir} fails verification ({problems[0]}); it cannot be compared with")
    return run_dir


def earlier_runs(out: Path, dataset: str, current: Path, most: int = 12) -> list[Path]:
    """Up to `most` finished, intact runs of `dataset` under `out` before `current`, oldest first."""
    found = []
    if not Path(out).is_dir():
        return found
    for run_dir in sorted(Path(out).iterdir(), key=lambda p: p.name, reverse=True):
        if len(found) == most:
            break
        if (run_dir.is_dir() and run_dir.name < Path(current).name and comparable(_recorded(run_dir), dataset)
                and _intact(run_dir)):
            found.append(run_dir)
    return found[::-1]


def key_metrics(run_dir: Path) -> dict:
    """A finished run's validation accuracy and macro F1 (its last epoch) and its count of failed checks."""
    import pandas as pd

    metrics = pd.read_parquet(layout.path(run_dir, "metrics"))
    last = metrics[metrics["split"] == "validation"].sort_values("epoch").iloc[-1]
    checks = (_recorded(run_dir) or {}).get("checks") or []
    return {"accuracy": float(last["accuracy"]), "f1_macro": float(last["f1_macro"]),
            "checks_failed": sum(1 for c in checks if isinstance(c, dict)  # not those that could not judge
                                 and c.get("status", "passed" if c.get("passed", True) else "failed") == "failed")}
