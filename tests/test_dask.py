"""The SHAP stage's shards on a real 2-worker Dask cluster (prefect-dask's DaskTaskRunner) give the same values
as the shards run side by side in this process (threads)."""

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.run import layout
from tasks.run.errors import InputError
from tests.conftest import task_runs


def trained_cifar_run(root: Path) -> Path:
    """A run directory under `root` with a tiny CIFAR-10 split and the reference CNN trained on it for one epoch."""
    from tasks.steps.load import load_data
    from tasks.steps.train import train_model
    from tests.conftest import write_cifar10

    loaded = load_data(f"cifar10:{write_cifar10(root / 'cifar', per_batch=40)}", root / "out", seed=0,
                       val_fraction=0.25)
    train_model(loaded["files"]["train"]["path"], loaded["files"]["validation"]["path"], loaded["run_dir"], 1, 16, 0)
    return Path(loaded["run_dir"])


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    return trained_cifar_run(tmp_path_factory.mktemp("dask"))


def stage_inputs(trained: Path, run_dir: Path) -> str:
    """A run directory holding what the SHAP stage reads (the splits, the weights and the model record) of the trained run."""
    for key in ("train", "validation", "weights", "model"):
        layout.path(run_dir, key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(layout.path(trained, key), layout.path(run_dir, key))
    return str(run_dir)


STAGE = {"background": 12, "rows": 7, "seed": 0, "shard_size": 2}


def workers(run_dir: Path) -> set[str]:
    """host:pid of every process that computed a shard of the run (what the report's section 7 lists)."""
    from tasks.deepshap.stage import shard_workers

    return {w["worker"] for w in shard_workers(run_dir)}


@pytest.mark.slow
def test_shards_on_a_two_worker_dask_cluster_equal_the_in_process_run(prefect_server, trained_cnn, tmp_path):
    import torch

    from flows.deepshap import deepshap_flow
    from tasks.run.formats import read_shap_values

    threads = torch.get_num_threads()
    here = deepshap_flow(**STAGE, run_dir=stage_inputs(trained_cnn, tmp_path / "here"))
    assert torch.get_num_threads() == threads  # shards pin torch to one thread; the flow gives the rest back
    environment = dict(os.environ)
    state = deepshap_flow(**STAGE, run_dir=stage_inputs(trained_cnn, tmp_path / "dask"), dask_workers=2,
                          return_state=True)
    assert dict(os.environ) == environment  # Dask's OMP_NUM_THREADS=1 etc. do not outlive the stage
    spread = state.result()
    shard_runs = [t for t in task_runs(state.state_details.flow_run_id) if t.name.startswith("deepshap-shard")]
    assert len(shard_runs) == 4 and all(t.state.is_completed() for t in shard_runs)  # reported to this server

    assert len(list(layout.folder(tmp_path / "dask", "shards").glob("*.parquet"))) == 4  # 7 rows, 2 per shard
    spread_over = workers(tmp_path / "dask")
    assert len(spread_over) == 2 and not any(w.endswith(f":{os.getpid()}") for w in spread_over)  # 2 other processes
    assert workers(tmp_path / "here") == {f"{os.uname().nodename}:{os.getpid()}"}

    values_here, meta_here = read_shap_values(here["files"]["shap_values"]["path"])
    values_spread, meta_spread = read_shap_values(spread["files"]["shap_values"]["path"])
    assert values_here.shape == (7, 10, 3, 32, 32)
    assert np.array_equal(values_spread, values_here)  # the same bits: one torch thread per shard everywhere
    assert meta_spread["accountability.expected_values"] == meta_here["accountability.expected_values"]
    explained_here = pq.read_table(here["files"]["explained"]["path"]).to_pandas()
    explained_spread = pq.read_table(spread["files"]["explained"]["path"]).to_pandas()
    assert explained_spread.drop(columns="additivity_error").equals(explained_here.drop(columns="additivity_error"))
    assert here["max_additivity_error"] < 1e-5 and spread["max_additivity_error"] < 1e-5


def test_merge_refuses_shards_that_do_not_cover_the_plan(trained_cnn, tmp_path):
    from tasks.deepshap.stage import explain_shard, merge_shards, plan_explanation, restoring_torch_threads

    stage_inputs(trained_cnn, tmp_path)
    weights = str(layout.path(tmp_path, "model"))
    planned = plan_explanation(weights, layout.path(tmp_path, "train"), layout.path(tmp_path, "validation"), tmp_path,
                               background=12, rows=7, seed=0, shard_size=3)
    assert planned["shards"] == [[0, 3], [3, 6], [6, 7]]
    plan = planned["plan"]["path"]
    with restoring_torch_threads():  # a shard pins torch to one thread; later tests get theirs back
        shards = [explain_shard(weights, plan, tmp_path, a, b)["path"]
                  for a, b in planned["shards"]]
    with pytest.raises(InputError, match="row 3 was next"):
        merge_shards(plan, [shards[0], shards[2]], tmp_path)
    with pytest.raises(InputError, match="cover rows 0..5 of the plan's 7"):
        merge_shards(plan, shards[:2], tmp_path)
    assert not layout.path(tmp_path, "shap_values").exists()  # nothing half-made is published
    with pytest.raises(InputError, match="outside the plan"), restoring_torch_threads():
        explain_shard(weights, plan, tmp_path, 7, 9)
    assert merge_shards(plan, shards, tmp_path)["max_additivity_error"] < 1e-5


def test_bad_dask_options_are_refused(monkeypatch):
    from flows.deepshap import check_dask_options

    with pytest.raises(InputError, match="not both"):
        check_dask_options("tcp://127.0.0.1:8786", 2)
    with pytest.raises(InputError, match="non-negative"):
        check_dask_options(None, -1)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server given: a local ephemeral one
        with pytest.raises(InputError, match="set PREFECT_API_URL"):  # which other machines cannot reach
            check_dask_options("tcp://127.0.0.1:8786", 0)


@pytest.mark.slow
def test_the_command_line_runs_the_shards_on_local_dask_workers_that_report_to_its_one_server(tmp_path):
    """With no PREFECT_API_URL the run's server is ephemeral; its Dask workers must use it, not start their own."""
    from tests.test_cli import run_cli

    result = run_cli("run", "--dataset", "breast-cancer", "--epochs", "1", "--background", "10", "--explain", "4",
                     "--shard-size", "2", "--dask-workers", "2", "--verbose", "--out", str(tmp_path / "reports"),
                     cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("Starting temporary server") == 1, output[-3000:]
    assert "Creating a new Dask cluster" in output
    (run_dir,) = (tmp_path / "reports").iterdir()
    assert len(workers(run_dir)) == 2 and (run_dir / "report.pdf").is_file()
