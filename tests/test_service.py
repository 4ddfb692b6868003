"""Run as a service, for real: deploy/stack.sh brings up a Prefect server, the cpu and gpu pools, the
deployments of deploy/prefect.yaml and one worker per pool; a deployed report runs its SHAP stage on
the gpu pool's worker. Every process is stopped by the fixture, even when a test fails."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.stack]  # run alone, after the rest (see the Makefile)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    port = free_port()
    env = {**os.environ, "PORT": str(port), "STACK_DIR": str(base / "state"), "PREFECT_HOME": str(base / "home"),
           "ACCOUNTABILITY_REPORTS": str(base / "reports"), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)
    try:
        subprocess.run([str(ROOT / "deploy" / "stack.sh"), "up"], env=env, check=True, timeout=300,
                       capture_output=True, text=True)
        yield {"api": f"http://127.0.0.1:{port}/api", "env": {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"},
               "base": base}
    finally:
        started = [int(p.read_text()) for p in (base / "state").glob("*.pid")]
        subprocess.run([str(ROOT / "deploy" / "stack.sh"), "down"], env=env, timeout=120)
    assert len(started) == 3 and not [pid for pid in started if group_alive(pid)]  # down leaves no process


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stack_sh(stack, command: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "deploy" / "stack.sh"), command], env={**stack["env"], **env}, timeout=120,
                          capture_output=True, text=True)


def test_up_twice_or_on_a_taken_port_is_refused_in_one_line_and_status_reports(stack):
    state = stack["base"] / "state"
    pids = {p.name: p.read_text() for p in state.glob("*.pid")}
    again = stack_sh(stack, "up")
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "stack.sh: already running (server, pid" in again.stderr
    assert {p.name: p.read_text() for p in state.glob("*.pid")} == pids  # the running stack is untouched
    assert (state / "server.log").read_text().count("=== ") == 1  # its log too (a start appends, never truncates)

    other = stack_sh(stack, "up", STACK_DIR=str(stack["base"] / "other"))  # another stack, the same port
    port = stack["env"]["PORT"]
    assert other.returncode == 1 and f"port {port} on 127.0.0.1 is taken by another program" in other.stderr
    assert not list((stack["base"] / "other").glob("*.pid"))

    status = stack_sh(stack, "status")
    assert status.returncode == 0, status.stdout
    for name in ("server", "worker-cpu", "worker-gpu"):
        assert f"{name}: running (pid {pids[name + '.pid'].strip()})" in status.stdout
    assert f"server: answers at {stack['api']}" in status.stdout
    stopped = stack_sh(stack, "status", STACK_DIR=str(stack["base"] / "other"), PORT=str(free_port()))
    assert stopped.returncode == 1 and "server: stopped" in stopped.stdout


def api(stack, path: str, body: dict | None = None):
    """The server's REST API; filters are sent without nulls (this server answers 422 to them)."""
    url = stack["api"] + path
    for attempt in range(3):  # a 2-core machine running the server, two workers and a flow can be slow to answer
        try:
            response = httpx.post(url, json=body, timeout=60) if body is not None else httpx.get(url, timeout=60)
            break
        except httpx.TimeoutException:
            if attempt == 2:
                raise
    response.raise_for_status()
    return response.json()


def test_the_monthly_deployment_gets_scheduled_runs_from_the_cron(stack):
    deployment = api(stack, "/deployments/name/compliance_report/monthly")
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 6 1 * *"
    deadline = time.monotonic() + 60
    while True:
        runs = api(stack, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                                                               "state": {"type": {"any_": ["SCHEDULED"]}}},
                                                "limit": 10, "offset": 0, "sort": "EXPECTED_START_TIME_ASC"})
        if runs or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert runs, "the scheduler created no runs for the cron schedule"
    starts = [datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in runs]
    assert all(s.day == 1 and s.hour == 6 and s.minute == 0 for s in starts)


@pytest.fixture(scope="module")
def deployed_run(stack) -> dict:
    """An on-demand run of the monthly deployment (CLI `prefect deployment run`) validating a user's model (a
    torch.export archive), waited for."""
    import torch

    out, model = stack["base"] / "on-demand", stack["base"] / "scorecard.pt2"
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(30, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    torch.export.save(torch.export.export(mlp, (torch.rand(4, 30),), dynamic_shapes=({0: torch.export.Dim.AUTO},)),
                      str(model))
    started = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "prefect"), "deployment", "run", "compliance_report/monthly",
         "-p", "dataset=breast-cancer", "-p", f"model={model}", "-p", "background=20", "-p", "explain_rows=4",
         "-p", f"out={out}"],
        env=stack["env"], capture_output=True, text=True, timeout=120, check=True)
    flow_run_id = started.stdout.split("/runs/flow-run/")[1].split()[0].strip()
    deadline = time.monotonic() + 480
    while (parent := api(stack, f"/flow_runs/{flow_run_id}"))["state_type"] not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline, f"the deployed run is still {parent['state_type']}"
        time.sleep(3)
    return {"flow_run": parent, "out": out}


def test_a_deployed_report_runs_its_shap_stage_on_the_gpu_worker(stack, deployed_run):
    parent, out = deployed_run["flow_run"], deployed_run["out"]
    flow_run_id = parent["id"]
    assert parent["state_type"] == "COMPLETED", parent["state"]["message"]
    assert parent["work_pool_name"] == "cpu"

    children = api(stack, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}},
                                                "limit": 5, "offset": 0, "sort": "START_TIME_DESC"})
    gpu_deployment = api(stack, "/deployments/name/deepshap/gpu")
    (child,) = [c for c in children if c["deployment_id"] == gpu_deployment["id"]]
    assert child["state_type"] == "COMPLETED" and child["work_pool_name"] == "gpu"
    gpu_log = (stack["base"] / "state" / "worker-gpu.log").read_text()
    assert f"Worker 'gpu-worker' submitting flow run '{child['id']}'" in gpu_log
    cpu_log = (stack["base"] / "state" / "worker-cpu.log").read_text()
    # prefect.yaml's pull step runs each flow in the checkout; without it a worker copies the whole checkout
    # (.venv included) into a temporary directory for every flow run, which took minutes.
    assert "Running 1 deployment pull step(s)" in cpu_log and "Running 1 deployment pull step(s)" in gpu_log
    assert "Downloading flow code from storage" not in cpu_log + gpu_log

    artifacts = api(stack, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}},
                                                 "limit": 50, "offset": 0, "sort": "KEY_ASC"})
    keys = {a["key"] for a in artifacts}
    assert {"compliance-summary", "validation-metrics", "report-pdf"} <= keys
    assert any(a["type"] == "progress" for a in artifacts)  # the long steps' progress
    (run_dir,) = out.iterdir()
    assert (run_dir / "report.pdf").is_file() and (run_dir / "manifest.json").is_file()
    assert (run_dir / "model" / "model.pt2").read_bytes() == (stack["base"] / "scorecard.pt2").read_bytes()
    assert not (run_dir / "model" / "model.safetensors").exists()  # validated as given, nothing trained


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's package, installed by .ci/run), with the flags that work on these machines."""
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp()}", "--virtual-time-budget=20000", "--window-size=1400,1000"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_the_prefect_ui_shows_the_run_and_its_artifacts(stack, deployed_run):
    base = stack["api"].removesuffix("/api")
    parent = deployed_run["flow_run"]
    page = chromium("--dump-dom", f"{base}/runs/flow-run/{parent['id']}").stdout
    assert parent["name"] in page and "compliance_report" in page and "Completed" in page and "Artifacts" in page
    for key in ("report-pdf", "compliance-summary", "validation-metrics"):
        assert key in chromium("--dump-dom", f"{base}/artifacts/key/{key}").stdout, key
    shots = ROOT / "test-output"
    shots.mkdir(exist_ok=True)
    chromium(f"--screenshot={shots / 'flow-run.png'}", f"{base}/runs/flow-run/{parent['id']}")
    assert (shots / "flow-run.png").stat().st_size > 10_000  # kept as a test output
