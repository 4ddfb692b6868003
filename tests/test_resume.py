"""kill -9 in the middle of a run, then --resume: finished steps are reused (Cached), nothing half-made is
ever published, and the result matches an uninterrupted run."""

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from tasks.run.artifacts import sha256_file
from tasks.run.errors import InputError
from tasks.run import layout
from tasks.run.resume import resumable_parameters
from tests.conftest import subflow_run, task_runs

PARAMS = ["--dataset", "breast-cancer", "--epochs", "2", "--background", "30", "--explain", "6", "--shard-size", "2"]
# (conftest's table_run is run with these parameters: the uninterrupted run the resumed ones must match)
COMPARED = ["weights", "shap_values", "lime", "kernel_shap", "permutation_importance", "stability"]


def task_states(flow_run_id) -> dict[str, list[str]]:
    """Each task's name (without its run suffix) -> the states of its runs."""
    states: dict[str, list[str]] = {}
    for t in task_runs(flow_run_id):
        states.setdefault(t.name.rsplit("-", 1)[0], []).append(t.state.name)
    return states


def run_flow(**parameters):
    from flows.compliance_report import compliance_report

    accepted = inspect.signature(compliance_report.fn).parameters
    state = compliance_report(**{k: v for k, v in parameters.items() if k in accepted}, return_state=True)
    return state, state.result()


@pytest.fixture(scope="module")
def uninterrupted(table_run):
    """conftest's table_run: an uninterrupted run with PARAMS."""
    return Path(table_run["run_dir"])


def recorded(out: Path, text: str) -> bool:
    """Whether a step result Prefect persisted in the run directory names `text` (e.g. a shard's file)."""
    return any(text.encode() in path.read_bytes() for path in out.glob(f"*/{layout.DIRS['results']}/*")
               if path.is_file())


def kill_when(trigger: str, out: Path, tmp_path: Path, after: str | None = None) -> Path:
    """Start `accountability run`, kill -9 it as soon as `trigger` exists in its run directory (and a persisted
    step result names `after`: shards run in parallel, so a shard's file can appear before another's result)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", *PARAMS, "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (list(out.glob(f"*/{trigger}")) and (after is None or recorded(out, after))):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"{trigger} never appeared"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    (run_dir,) = out.iterdir()
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["deepshap/shards/shard-000002-000004.parquet",  # the SHAP stage's second shard
                                     "figures/training_curves.png"])  # the report
def test_killed_run_resumes_with_cached_steps_and_matches_an_uninterrupted_one(uninterrupted, tmp_path, trigger):
    first_shard = "shard-000000-000002.parquet" if trigger.startswith("deepshap/") else None
    run_dir = kill_when(trigger, tmp_path / "reports", tmp_path, after=first_shard)
    assert not (run_dir / "report.pdf").exists() and not (run_dir / "manifest.json").exists()
    for path in run_dir.rglob("*"):  # every file under its final name is complete
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(run_dir).parts):
            if path.suffix == ".parquet":
                pq.read_table(path).validate(full=True)
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    assert handle.keys()

    parameters = resumable_parameters(run_dir)
    state, result = run_flow(**parameters, resume=str(run_dir))
    assert result["run_dir"] == str(run_dir)
    states = task_states(state.state_details.flow_run_id)
    assert states["train"] == ["Cached"] and states["report"] == ["Completed"]
    shap = task_states(subflow_run(state.state_details.flow_run_id, "deepshap").id)
    assert shap["deepshap-plan"] == ["Cached"] and len(shap["deepshap-shard"]) == 3
    if trigger.startswith("deepshap/"):  # killed among the shards: the finished ones are reused, any others run
        assert "Cached" in shap["deepshap-shard"] and set(shap["deepshap-shard"]) <= {"Cached", "Completed"}
    else:
        assert set(shap["deepshap-shard"]) == {"Cached"} and shap["deepshap-merge"] == ["Cached"]
    from tasks.run.verify import verify_run

    assert verify_run(run_dir) == []
    for key in COMPARED:
        assert sha256_file(layout.path(run_dir, key)) == sha256_file(layout.path(uninterrupted, key)), key
    assert not list(run_dir.rglob(".*.tmp"))


def test_a_finished_or_foreign_directory_cannot_be_resumed(tmp_path):
    with pytest.raises(InputError, match="no such run directory"):
        resumable_parameters(tmp_path / "missing")
    with pytest.raises(InputError, match="no run.json"):
        resumable_parameters(tmp_path)
    layout.path(tmp_path, "run_record").write_text(json.dumps({"dataset": "digits"}))
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="the run finished"):
        resumable_parameters(tmp_path)


def test_the_cache_key_changes_with_the_code_and_the_result_changing_packages(monkeypatch, tmp_path):
    """After an upgrade a resumed run must not reuse results the old code computed."""
    from types import SimpleNamespace

    from tasks.run import resume

    (tmp_path / "weights.bin").write_bytes(b"weights")
    context = SimpleNamespace(task=SimpleNamespace(name="lime"))
    parameters = {"run_dir": str(tmp_path), "files": {"weights": str(tmp_path / "weights.bin")}, "seed": 0}
    key = resume.input_hash_key(context, parameters)
    assert resume.input_hash_key(context, parameters) == key
    original = resume.code_key()
    monkeypatch.setattr(resume, "code_key", lambda: {**original, "code": "another commit"})
    assert resume.input_hash_key(context, parameters) != key
    monkeypatch.setattr(resume, "code_key", lambda: {**original, "packages": {**original["packages"], "torch": "9.9"}})
    assert resume.input_hash_key(context, parameters) != key
    monkeypatch.undo()
    (tmp_path / "weights.bin").write_bytes(b"other weights")  # and, as before, with the contents of its files
    assert resume.input_hash_key(context, parameters) != key


def test_a_long_text_parameter_is_hashed_as_text_not_opened_as_a_path():
    from tasks.run.resume import _digest

    name = "a column with a very long name " * 20  # over the file system's 255-byte name limit
    assert _digest({"label": name}) == {"label": name}


def test_a_result_that_names_a_changed_file_or_one_outside_the_run_is_refused(tmp_path):
    from tasks.run.resume import check_recorded_files
    from tasks.run.formats import file_ref

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(b"weights as trained")
    result = {"files": {"weights": file_ref(weights)}, "final": {"accuracy": 0.9}, "wall_seconds": 1.0}
    check_recorded_files(result, run, "train")  # as recorded: passes
    weights.write_bytes(b"weights swapped in")
    with pytest.raises(InputError, match="train step: model/model.safetensors changed since the step wrote it"):
        check_recorded_files(result, run, "train")
    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(b"x")
    with pytest.raises(InputError, match="outside the run directory"):
        check_recorded_files([{**file_ref(outside), "wall_seconds": 0.1}], run, "deepshap-shard")


@pytest.mark.slow
def test_a_shard_edited_between_the_kill_and_the_resume_stops_the_resumed_run(tmp_path):
    run_dir = kill_when("deepshap/shards/shard-000002-000004.parquet", tmp_path / "reports", tmp_path,
                        after="shard-000000-000002.parquet")
    shard = run_dir / "deepshap" / "shards" / "shard-000000-000002.parquet"
    shard.write_bytes(shard.read_bytes() + b"edited")
    with pytest.raises(InputError, match="shards/shard-000000-000002.parquet changed since the step wrote it"):
        run_flow(**resumable_parameters(run_dir), resume=str(run_dir))
    assert not (run_dir / "report.pdf").exists()
