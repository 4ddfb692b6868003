"""Progress bars for long steps (rich); quiet when output is not a terminal. Inside a Prefect task or flow run the
same progress also moves a progress artifact, shown on the flow run's page in the Prefect UI."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[callable]:
    """Yield `advance(n=1, **fields)`; the bar shows done/total, elapsed and remaining time."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    artifact = _PrefectProgress(description)
    with Progress(*columns, transient=False) as progress:
        task_id = progress.add_task(description, total=total, status="")
        done = 0

        def advance(n: int = 1, status: str = "") -> None:
            nonlocal done
            done += n
            progress.update(task_id, advance=n, status=status)
            artifact.update(100.0 * done / max(total, 1))

        yield advance


class _PrefectProgress:
    """A Prefect progress artifact for the current task or flow run, updated at most every MIN_INTERVAL seconds."""

    MIN_INTERVAL = 1.0

    def __init__(self, description: str):
        self.artifact_id, self.last = None, 0.0
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import FlowRunContext, TaskRunContext
        except ImportError:  # pragma: no cover - prefect is a dependency
            return
        if TaskRunContext.get() is not None or FlowRunContext.get() is not None:
            self.artifact_id = create_progress_artifact(0.0, description=f"{description}: progress")

    def update(self, percent: float) -> None:
        if self.artifact_id is None or (time.monotonic() - self.last < self.MIN_INTERVAL and percent < 100.0):
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, progress=percent)
        self.last = time.monotonic()
