"""The SHAP stage as a flow of its own: plan -> shards -> merge, each a Prefect task (tasks/deepshap/stage.py).

The compliance_report flow runs it in-process as a subflow, or through `run_deployment` on the
`deepshap/gpu` deployment (a GPU work pool) when its `shap_deployment` parameter names one. It reads
and writes the run directory (a path every worker reaches), so only paths cross between runs.

The shards are independent; where they run is this flow's `dask_address` / `dask_workers`:
- neither: in this process, as many side by side as torch had threads (the default);
- `dask_workers=N`: a temporary local Dask cluster of N single-threaded worker processes;
- `dask_address="tcp://host:8786"`: an existing Dask scheduler, whose workers may be other machines
  (they need this project installed and the run directory on the same path).
"""

from __future__ import annotations

import contextlib
import os

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.preflight import check_dask_options
from flows.steps import resumable, step
from tasks.deepshap.stage import explain_shard, merge_shards, plan_explanation, restoring_torch_threads
from tasks.run import layout
from tasks.run.progress import RunProgress, in_stage, progress_bar

STAGE_STEPS = {
    "plan": step(plan_explanation, "deepshap-plan", tags=["gpu"]),
    "shard": step(explain_shard, "deepshap-shard", tags=["gpu"]),
    "merge": step(merge_shards, "deepshap-merge"),
}


def shard_runner(dask_address: str | None = None, dask_workers: int = 0, threads: int = 1):
    """The task runner the shards are submitted to (see the module docstring); `threads`: in-process.
    The options were checked by `check_dask_options` before any work."""
    if not dask_address and not dask_workers:
        return ThreadPoolTaskRunner(max_workers=threads)
    import dask
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    # Dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive mmap
    # threshold: every large tensor is then mapped and unmapped, and a shard takes 1.6 times as long (measured
    # on this project's CNN). Workers started here keep glibc's default.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    # Processes, one thread each (a shard uses one torch thread), reporting to this run's Prefect server.
    return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": prefect_environment()})


def prefect_environment() -> dict[str, str]:
    """This run's Prefect settings as environment variables, with the API it reports to even when that is a
    local ephemeral server: without them each Dask worker process would start a server of its own."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    env = get_current_settings().to_environment_variables(exclude_unset=True)
    env["PREFECT_API_URL"] = str(get_client(sync_client=True).api_url)
    return env


@contextlib.contextmanager
def environment_kept():
    """Put this process's environment back afterwards: Dask's nannies write their pre-spawn variables
    (OMP_NUM_THREADS=1, ...) into it, and every later subprocess (another `accountability run`, say) would
    inherit them and train with one thread, into other weights."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@flow(name="deepshap", log_prints=True)
def deepshap_flow(run_dir: str, background: int, rows: int, seed: int, engine: str = "fast",
                  shard_size: int | None = None, dask_address: str | None = None, dask_workers: int = 0,
                  run_stage: dict | None = None) -> dict:
    """DeepSHAP values for `rows` validation rows against `background` training rows, into run_dir/deepshap/.

    The rows are cut into shards of `shard_size` (None: 8 on a CPU, 512 on a GPU), each a `deepshap-shard` task run on the runner that
    `dask_address` / `dask_workers` choose; the values do not depend on that choice. Deployed (deepshap/gpu),
    the options are checked here; in-process, the compliance_report flow's preflight checked them.
    `run_stage` (a `RunStage`): the parent run's progress artifact this stage moves; without it, one of its own.
    """
    check_dask_options(dask_address, dask_workers)  # before the plan (cheap; no file is read)
    steps = {name: resumable(prefect_task, run_dir) for name, prefect_task in STAGE_STEPS.items()}
    model_path = str(layout.path(run_dir, "model"))
    planned = steps["plan"](model_path, str(layout.path(run_dir, "train")), str(layout.path(run_dir, "validation")),
                            run_dir, background, rows, seed, engine, shard_size)
    plan_path = planned["plan"]["path"]
    shard_paths = []
    description = f"SHAP ({engine}, {len(planned['shards'])} shards)"
    with (in_stage(run_stage) if run_stage else RunProgress(1).stage("SHAP"),
          environment_kept(), restoring_torch_threads() as threads,
          shard_runner(dask_address, dask_workers, threads) as runner,
          progress_bar(description, total=rows) as advance):
        futures = [runner.submit(steps["shard"].task, {"model_path": model_path, "plan_path": plan_path,
                                                       "run_dir": run_dir, "start": start, "stop": stop})
                   for start, stop in planned["shards"]]
        for future, (start, stop) in zip(futures, planned["shards"]):
            shard_paths.append(steps["shard"].checked(future.result())["path"])
            advance(stop - start)
    return steps["merge"](plan_path, shard_paths, run_dir)


if __name__ == "__main__":
    import sys

    sys.exit("deepshap_flow is started by the compliance_report flow, or through its deployment (deploy/prefect.yaml)")
