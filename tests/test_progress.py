"""The run's one progress artifact (tasks/run/progress.py), read back from a real Prefect server: it moves through
the stages, a step's bar moves it within its stage, and a child flow given the stage moves the parent's."""

from uuid import UUID

import pytest
from prefect import flow

from tasks.run import progress as run_progress
from tasks.run.progress import RUN_PROGRESS_KEY, RunProgress, in_stage, progress_bar


def read_artifact(artifact_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[UUID(artifact_id)])))
    return artifact.data, artifact.description


@flow(name="progress-child")
def child(run_stage: dict | None = None) -> tuple:
    """A stage's work in a flow run of its own (as the SHAP stage on the gpu deployment): half done, read back."""
    with in_stage(run_stage), progress_bar("shards", total=2) as advance:
        advance(1)
        return read_artifact(run_stage["artifact_id"])


@flow(name="progress-parent")
def parent() -> dict:
    progress = RunProgress()
    seen = {}
    with progress.stage("load data"):
        seen["load"] = read_artifact(progress.artifact_id)
    progress.count = 3  # known once the data is
    with progress.stage("SHAP") as stage:
        seen["child, half of its bar"] = child(stage.to_json())
    seen["after SHAP"] = read_artifact(progress.artifact_id)
    with progress.stage("report"):
        pass
    progress.done("done, with findings")
    seen["done"] = read_artifact(progress.artifact_id)
    seen["artifact_id"] = progress.artifact_id
    return seen


def test_one_artifact_moves_through_the_stages_and_a_child_moves_the_parents(prefect_server, monkeypatch):
    monkeypatch.setattr(run_progress, "MIN_INTERVAL", 0.0)
    seen = parent()
    assert seen["load"] == (0.0, "1/? load data, 0%")  # the number of stages is not known before the data
    assert seen["child, half of its bar"] == (50.0, "2/3 SHAP, 50%")  # (1 + 1/2) / 3
    assert seen["after SHAP"] == (pytest.approx(200 / 3), "2/3 SHAP, 67%")  # the text's percentage is the bar's
    assert seen["done"] == (100.0, "3/3 done, with findings, 100%")

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keyed = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RUN_PROGRESS_KEY])))
    assert seen["artifact_id"] in {str(a.id) for a in keyed}  # under its key: the UI's Artifacts page lists it


def test_outside_a_flow_run_progress_is_the_terminal_bar_alone():
    progress = RunProgress(2)
    with progress.stage("train") as stage, progress_bar("train", total=3) as advance:
        advance(3)
    assert stage is None and progress.artifact_id is None
    progress.done()  # nothing to move, nothing raised
