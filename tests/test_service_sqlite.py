"""The default stack, `deploy/stack.sh up` on SQLite: it refuses a second start or a taken port in one line, says
what runs (`status`), gets the monthly schedule's runs, and `down` leaves no process. (The deployed report, the
UI and Prefect's CLI are tested on the PostgreSQL stack: test_service.py.)"""

import subprocess

import pytest

from tests.stacks import STACK_SH, check_monthly_schedule, free_port, stack_up

pytestmark = [pytest.mark.slow, pytest.mark.stack]  # after the rest (see the Makefile)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with stack_up(tmp_path_factory.mktemp("stack")) as running:
        yield running


def stack_sh(stack, command: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(STACK_SH), command], env={**stack["env"], **env}, timeout=120,
                          capture_output=True, text=True)


def test_up_twice_or_on_a_taken_port_is_refused_in_one_line_and_status_reports(stack):
    state = stack["base"] / "state"
    pids = {p.name: p.read_text() for p in state.glob("*.pid")}
    assert set(pids) == {"server.pid", "reports.pid", "worker-cpu.pid", "worker-gpu.pid"}
    again = stack_sh(stack, "up")
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "stack.sh: already running (server, pid" in again.stderr
    assert {p.name: p.read_text() for p in state.glob("*.pid")} == pids  # the running stack is untouched
    assert (state / "server.log").read_text().count("=== ") == 1  # its log too (a start appends, never truncates)

    other = stack_sh(stack, "up", STACK_DIR=str(stack["base"] / "other"))  # another stack, the same port
    port = stack["env"]["PORT"]
    assert other.returncode == 1 and f"port {port} on 127.0.0.1 is taken by another program" in other.stderr
    reports_port = stack_sh(stack, "up", STACK_DIR=str(stack["base"] / "other"), PORT=str(free_port()),
                            REPORTS_PORT=str(int(port) + 1))
    assert reports_port.returncode == 1 and "set REPORTS_PORT=... to use another" in reports_port.stderr
    assert not list((stack["base"] / "other").glob("*.pid"))

    status = stack_sh(stack, "status")
    assert status.returncode == 0, status.stdout
    for name in ("server", "reports", "worker-cpu", "worker-gpu"):
        assert f"{name}: running (pid {pids[name + '.pid'].strip()})" in status.stdout
    assert f"server: answers at {stack['api']}" in status.stdout
    assert f"reports: served at {stack['reports']}" in status.stdout
    stopped = stack_sh(stack, "status", STACK_DIR=str(stack["base"] / "other"), PORT=str(free_port()))
    assert stopped.returncode == 1 and "server: stopped" in stopped.stdout


def test_the_monthly_deployment_gets_scheduled_runs_from_the_cron(stack):
    check_monthly_schedule(stack)
    assert list((stack["base"] / "home").glob("*.db"))  # kept in SQLite, in PREFECT_HOME


BAD_PARAMETER_RUN = """
import asyncio, json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment

run = run_deployment("compliance_report/monthly", parameters={"epochs": 0}, timeout=240)

async def logs():
    async with get_client() as client:
        for _ in range(20):  # the worker's process sends its log lines in batches
            entries = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            if any("Finished in state" in e.message for e in entries):
                break
            await asyncio.sleep(1)
        return [e.message for e in entries]

print(json.dumps({"state": run.state.type.value, "message": run.state.message, "logs": asyncio.run(logs())}))
"""


def test_a_deployed_run_with_a_bad_parameter_fails_in_one_line_without_a_traceback_in_its_log(stack):
    import json
    import sys

    done = subprocess.run([sys.executable, "-c", BAD_PARAMETER_RUN], env=stack["env"], timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["state"] == "FAILED" and run["message"] == "bad parameter: --epochs must be a positive integer, got 0"
    assert run["logs"] and not any("Traceback" in line or "Engine execution exited" in line for line in run["logs"]), \
        run["logs"]
