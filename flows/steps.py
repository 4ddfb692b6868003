"""What makes a plain function in `tasks/` a step of a flow: a Prefect task whose failure names the step and
whose result records its wall time, and, within a run, a cache keyed by the hashes of its inputs and of the
code, with results kept in the run directory."""

from __future__ import annotations

import functools
import time

from prefect import task

from tasks.run import layout
from tasks.run.checks import Check
from tasks.run.errors import InputError, NonFiniteOutputs, StorageError
from tasks.run.resume import check_recorded_files, input_hash_key

WALL_SECONDS = "wall_seconds"  # the key of a step's own wall time in its result


class StepFailed(RuntimeError):
    """A step failed with something other than a clear InputError or StorageError; the message names the step."""


def step(fn, name: str, **options):
    """`fn` as a Prefect task whose failure says which step failed and why (the flow run's state message)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except NonFiniteOutputs as exc:  # on inputs the step made: a finding of the run, not a crash of the step
            result = non_finite_result(name, exc)
        except (InputError, StorageError) as exc:  # one line for the user, with the step's name
            raise type(exc)(f"{name} step: {exc}") from None
        except Exception as exc:
            raise StepFailed(f"{name} step failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, dict):
            result[WALL_SECONDS] = round(time.perf_counter() - started, 3)
        return result
    return task(run, name=name, **options)


def non_finite_result(name: str, exc: NonFiniteOutputs) -> dict:
    """The result of a step whose model returned NaN or infinity on inputs it made: its section says so, and a
    material finding counts them; nothing was scored."""
    check = Check("model.finite_outputs", "Model outputs", f"inputs made by {name} with NaN or infinite outputs",
                  exc.count, 0, "at most", "3. Performance and testing",
                  f"The model returned NaN or infinite outputs on {exc.count} of {exc.total} inputs that the {name} "
                  "step made (perturbed, masked or sampled rows, none of them a real row); they were not scored.",
                  unit="count")
    return {"skipped": f"Not completed: {exc} that this step made (perturbed, masked or sampled rows); they are "
                       "not scored, and the findings register counts them.", "checks": [check.to_json()]}


def timings(results: dict) -> dict[str, float]:
    """Step name -> wall seconds, from the steps' results (in the order they ran)."""
    return {name: result[WALL_SECONDS] for name, result in results.items()
            if isinstance(result, dict) and WALL_SECONDS in result}


def resumable(prefect_task, run_dir: str) -> "Resumable":
    """`prefect_task` cached by the hashes of its inputs and the code, its result kept (as JSON) in the run directory.

    A run that died is finished by running it again into the same directory (--resume):
    the steps that had completed come back Cached. See tasks/run/resume.py.
    """
    return Resumable(prefect_task, run_dir)


class Resumable:
    """A step's cached task; calling it returns the result once the files it names are checked: inside the run
    directory and as the step recorded them (a Cached result's files may have been swapped since; see
    tasks/run/resume.py `check_recorded_files`). `task` is for task runners (`submit`), then `checked`."""

    def __init__(self, prefect_task, run_dir: str):
        storage = layout.folder(run_dir, "results")  # a path: Prefect stores there without a saved storage block
        self.task = prefect_task.with_options(cache_key_fn=input_hash_key, persist_result=True,
                                              result_storage=storage, result_serializer="json")
        self.run_dir = run_dir

    def __call__(self, *args, **kwargs):
        return self.checked(self.task(*args, **kwargs))

    def checked(self, result):
        check_recorded_files(result, self.run_dir, self.task.name)
        return result
