"""Shared fixtures: tiny datasets in the real on-disk formats, a real (ephemeral) Prefect server."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: each worker its own Prefect home (profiles, local database)
    import tempfile

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"prefect-{os.environ['PYTEST_XDIST_WORKER']}-")

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 30, batches: tuple[str, ...] = ("data_batch_1", "test_batch"),
                  seed: int = 0) -> Path:
    """A tiny CIFAR-10 directory in the standard python format: root/cifar-10-batches-py/..."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    with open(base / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, handle)
    for name in batches:
        labels = [i % 10 for i in range(per_batch)]
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        payload = {"batch_label": name, "labels": labels, "data": data,
                   "filenames": [f"img_{i}.png" for i in range(per_batch)]}
        with open(base / name, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    return root


def write_imagefolder(root: Path, classes: dict[str, int], size=(40, 28), mode="RGB", seed: int = 0) -> Path:
    """root/<class>/<i>.png with random pixels; one brightness per class so a model can learn it."""
    rng = np.random.default_rng(seed)
    for k, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            channels = 3 if mode == "RGB" else 1
            pixels = rng.integers(0, 60, size=(size[1], size[0], channels)) + 60 * k
            pixels = pixels.clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(folder / f"{i}.png")
    return root


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "cifar")


@pytest.fixture
def imagefolder_dir(tmp_path: Path) -> Path:
    return write_imagefolder(tmp_path / "images", {"cats": 12, "dogs": 12, "owls": 12})


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect server and database for the whole session (Prefect's own test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def task_runs(flow_run_id) -> list:
    """The task runs of one flow run, oldest first, from the Prefect API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def query():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                               sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)

    return asyncio.run(query())


def subflow_run(flow_run_id, name: str):
    """The flow run that flow run `flow_run_id` started as its subflow `name` (e.g. "explain")."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId
    from prefect.client.schemas.sorting import FlowRunSort

    (parent_task,) = [t for t in task_runs(flow_run_id) if t.name.rsplit("-", 1)[0] == name]

    async def query():
        async with get_client() as client:
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[parent_task.id])),
                sort=FlowRunSort.START_TIME_ASC, limit=5)

    (run,) = asyncio.run(query())
    return run


def run_report(out: Path, **parameters):
    """The product's whole flow (in this process, on the test session's Prefect server); its state and result."""
    from flows.compliance_report import compliance_report

    state = compliance_report(out=str(out), return_state=True, **{"seed": 0, **parameters})
    return state, state.result()


@pytest.fixture(scope="session")
def image_run(prefect_server, tmp_path_factory):
    """A finished run of the flow on a small image folder (3 classes), shared by the tests that read one."""
    root = write_imagefolder(tmp_path_factory.mktemp("images"), {"dark": 10, "mid": 10, "light": 10})
    _, result = run_report(tmp_path_factory.mktemp("image-runs"), dataset=f"imagefolder:{root}", epochs=2,
                           background=6, explain_rows=5)
    return root, result


@pytest.fixture(scope="session")
def table_run(prefect_server, tmp_path_factory):
    """A finished run of the flow on breast-cancer, shared by the tests that read one (and the run that
    tests/test_resume.py's killed runs, made with the same parameters, must match)."""
    _, result = run_report(tmp_path_factory.mktemp("table-runs"), dataset="breast-cancer", epochs=2, background=30,
                           explain_rows=6, shard_size=2)
    return result


@pytest.fixture(scope="session")
def digits_run(prefect_server, tmp_path_factory):
    """A finished run of the flow on digits (1 epoch): an image model that has learned something. (The costliest
    fixture, 2-4 minutes: keep its users in one file, test_flow.py, or two xdist workers each make it.)"""
    state, result = run_report(tmp_path_factory.mktemp("digits-runs"), dataset="digits", epochs=1, background=40,
                               explain_rows=8)
    return state, result
