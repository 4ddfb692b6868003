"""Progress: a rich bar on the terminal for each long step (quiet when output is not a terminal), and in a Prefect
flow run one progress artifact, `run-progress`, on the run the user watches. The flow moves it through its
stages (`RunProgress.stage`); the bars of the steps inside a stage move it within the stage, and its description
says where the run is ("5/17 SHAP, 40%"), which the UI shows on the artifact's card without a click. The SHAP
stage run as a child deployment moves the parent's artifact through the `RunStage` it is given."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

RUN_PROGRESS_KEY = "run-progress"
MIN_INTERVAL = 1.0  # seconds between two updates of the artifact from inside a stage (each is an API call)


@dataclass(frozen=True)
class RunStage:
    """Where a stage sits in its run, and the artifact that shows it (a flow parameter of the SHAP stage)."""

    artifact_id: str  # the run's `run-progress` artifact
    index: int  # 0-based position among the run's stages
    count: int | None  # the run's number of stages (None until the data is loaded: it depends on the data)
    name: str  # what the UI shows: "SHAP", "LIME", ...

    def show(self, fraction: float) -> None:
        """Move the artifact to `fraction` (0..1) of this stage. Progress is for people: an API error is logged
        and the run goes on."""
        from prefect.artifacts import update_progress_artifact

        fraction = min(max(fraction, 0.0), 1.0)
        overall = 0.0 if self.count is None else 100.0 * (self.index + fraction) / self.count
        try:
            # one percentage, the run's: the card's text and the bar on the artifact's page say the same
            update_progress_artifact(self.artifact_id, progress=overall, description=f"{self.index + 1}/"
                                     f"{self.count or '?'} {self.name}, {overall:.0f}%")
        except Exception as exc:  # noqa: BLE001 - whatever the client raised
            logging.getLogger(__name__).warning("progress artifact not updated: %s", exc)

    def to_json(self) -> dict:
        return asdict(self)


_CURRENT: contextvars.ContextVar[RunStage | None] = contextvars.ContextVar("run_stage", default=None)


@contextlib.contextmanager
def in_stage(stage: RunStage | dict | None) -> Iterator[None]:
    """The progress bars opened inside (this thread, and the task runs it starts) move `stage`."""
    if isinstance(stage, dict):
        stage = RunStage(**stage)
    token = _CURRENT.set(stage)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_stage() -> RunStage | None:
    return _CURRENT.get()


class RunProgress:
    """The `run-progress` artifact of the current flow run, over `count` stages (None: set later, once known);
    inert outside a flow run."""

    def __init__(self, count: int | None = None):
        from prefect.artifacts import create_progress_artifact
        from prefect.context import FlowRunContext

        self.count, self.index, self.artifact_id = count, -1, None
        if FlowRunContext.get() is not None:
            self.artifact_id = str(create_progress_artifact(0.0, key=RUN_PROGRESS_KEY, description="starting, 0%"))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[RunStage | None]:
        """The next stage: the artifact shows it from its start to its end; the bars inside move it."""
        self.index += 1
        if self.artifact_id is None:
            yield None
            return
        index = self.index if self.count is None else min(self.index, self.count - 1)
        stage = RunStage(self.artifact_id, index, self.count, name)
        stage.show(0.0)
        with in_stage(stage):
            yield stage
        stage.show(1.0)

    def done(self, message: str = "done") -> None:
        """The last stage's end, under `message`."""
        if self.artifact_id is not None:
            count = self.count or self.index + 1
            RunStage(self.artifact_id, count - 1, count, message).show(1.0)


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[callable]:
    """Yield `advance(n=1, status="")`; the bar shows done/total, elapsed and remaining time, and moves the run's
    progress artifact within the current stage (at most every MIN_INTERVAL seconds)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    stage, lock, last = current_stage(), threading.Lock(), [time.monotonic()]
    with Progress(*columns, transient=False) as progress:
        task_id = progress.add_task(description, total=total, status="")
        done = 0

        def advance(n: int = 1, status: str = "") -> None:
            nonlocal done
            with lock:
                done += n
                progress.update(task_id, advance=n, status=status)
                due = stage is not None and done < total and time.monotonic() - last[0] >= MIN_INTERVAL
                if due:
                    last[0] = time.monotonic()
            if due:
                stage.show(done / max(total, 1))

        yield advance
