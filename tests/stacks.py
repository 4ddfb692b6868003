"""Bring deploy/stack.sh up for a test module, talk to its server, and run its deployment: shared by the
SQLite stack tests (test_service_sqlite.py) and the PostgreSQL ones (test_service.py)."""

import contextlib
import os
import re
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
STACK_SH = ROOT / "deploy" / "stack.sh"
PREFECT = ROOT / ".venv" / "bin" / "prefect"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (stack.sh puts the reports and PostgreSQL after the API)."""
    for _ in range(50):
        first = free_port()
        if first + count <= 65536 and all(_free(first + i) for i in range(1, count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@contextlib.contextmanager
def stack_up(base: Path, umask: int = 0o027, **settings: str):
    """`stack.sh up` with its state under `base` (its processes get `umask`), then `down`, which must leave none of
    its processes."""
    port = free_ports(3)
    env = {**os.environ, "PORT": str(port), "STACK_DIR": str(base / "state"), "PREFECT_HOME": str(base / "home"),
           "ACCOUNTABILITY_REPORTS": str(base / "reports"), "PREFECT_WORKER_QUERY_SECONDS": "2", **settings}
    env.pop("PREFECT_API_URL", None)
    try:
        up = subprocess.run([str(STACK_SH), "up"], env=env, timeout=300, capture_output=True, text=True, umask=umask)
        assert up.returncode == 0, up.stderr
        yield {"api": f"http://127.0.0.1:{port}/api", "reports": f"http://127.0.0.1:{port + 1}",
               "env": {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}, "base": base, "up": up.stdout}
    finally:
        started = [int(p.read_text()) for p in (base / "state").glob("*.pid")]
        subprocess.run([str(STACK_SH), "down"], env=env, timeout=120)
    assert started and not [pid for pid in started if group_alive(pid)]  # down leaves no process


def api(stack, path: str, body: dict | None = None):
    """The server's REST API."""
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


def run_deployment(stack, *parameters: str, timeout: float = 480) -> dict:
    """`prefect deployment run compliance_report/monthly -p ...` (Prefect's CLI, as an operator would), waited
    for until it ends; the flow run as the server has it."""
    started = subprocess.run([str(PREFECT), "deployment", "run", "compliance_report/monthly",
                              *[arg for p in parameters for arg in ("-p", p)]],
                             env=stack["env"], capture_output=True, text=True, timeout=120, check=True)
    flow_run_id = started.stdout.split("/runs/flow-run/")[1].split()[0].strip()
    deadline = time.monotonic() + timeout
    while (flow_run := api(stack, f"/flow_runs/{flow_run_id}"))["state_type"] not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline, f"the deployed run is still {flow_run['state_type']}"
        time.sleep(3)
    return flow_run


def check_monthly_schedule(stack, wait: float = 60) -> list[dict]:
    """The monthly deployment's runs the scheduler created from its cron (waits up to `wait` seconds for the
    first), each at 06:00 on the first of a month."""
    deployment = api(stack, "/deployments/name/compliance_report/monthly")
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 6 1 * *"
    deadline = time.monotonic() + wait
    while True:
        runs = api(stack, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                                                               "state": {"type": {"any_": ["SCHEDULED"]}}},
                                                "limit": 10, "sort": "EXPECTED_START_TIME_ASC"})
        if runs or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert runs, "the scheduler created no runs for the cron schedule"
    starts = [datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in runs]
    assert all(s.day == 1 and s.hour == 6 and s.minute == 0 for s in starts)
    return runs


def report_link(stack, flow_run_id: str) -> str:
    """The address the run's `report-pdf` link artifact points to (stored as markdown: `[report.pdf](URL)`)."""
    (artifact,) = api(stack, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]},
                                                                 "key": {"any_": ["report-pdf"]}}})
    return re.fullmatch(r"\[report\.pdf\]\((.+)\)", artifact["data"]).group(1)
