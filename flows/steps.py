"""What makes a plain function in `tasks/` a step of a flow: a Prefect task whose failure names the step,
and, within a run, a cache keyed by the hashes of its inputs with results kept in the run directory."""

from __future__ import annotations

import functools
from pathlib import Path

from prefect import task

from tasks.errors import InputError
from tasks.resume import RESULTS_DIR, input_hash_key


class StepFailed(RuntimeError):
    """A step failed with something other than a clear InputError; the message names the step."""


def step(fn, name: str, **options):
    """`fn` as a Prefect task whose failure says which step failed and why (the flow run's state message)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            raise InputError(f"{name} step: {exc}") from None
        except Exception as exc:
            raise StepFailed(f"{name} step failed: {type(exc).__name__}: {exc}") from exc
    return task(run, name=name, **options)


def resumable(steps: dict, run_dir: str) -> dict:
    """`steps` cached by the hashes of their inputs, results kept (as JSON) in the run directory.

    A run that died is finished by running it again into the same directory (--resume):
    the steps that had completed come back Cached. See tasks/resume.py.
    """
    storage = Path(run_dir) / RESULTS_DIR  # a path: Prefect stores there without a saved storage block
    return {name: prefect_task.with_options(cache_key_fn=input_hash_key, persist_result=True,
                                            result_storage=storage, result_serializer="json")
            for name, prefect_task in steps.items()}
