"""The stack on PostgreSQL (`DATABASE=postgres deploy/stack.sh up`): a cluster of its own, started by the script
on 127.0.0.1 with a generated password, holds the Prefect server's database; the schedule creates its runs and
a deployed report completes. Needs Debian's postgresql package (.ci/run installs it)."""

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.stacks import run_deployment, scheduled_runs, stack_up

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.postgres]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not PG_BIN:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL is not installed")
    # Run by root, the cluster belongs to the postgres user, who must reach its directory: not under pytest's
    # private (0700) temporary directory.
    shared = Path(tempfile.mkdtemp(prefix="accountability-pg-"))
    shared.chmod(0o755)
    try:
        with stack_up(tmp_path_factory.mktemp("stack"), DATABASE="postgres", PG_DATA=str(shared / "data")) as running:
            yield running
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def psql(stack, sql: str) -> str:
    """A query to the stack's own PostgreSQL, with the password stack.sh generated."""
    port = int(stack["env"]["PORT"]) + 2
    password = (stack["base"] / "state" / "postgres.password").read_text().strip()
    done = subprocess.run([str(PG_BIN[-1].parent / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect",
                           "-d", "prefect", "-tAc", sql], env={**os.environ, "PGPASSWORD": password},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_the_server_keeps_its_runs_in_postgres_and_a_deployed_report_completes(stack):
    assert "database postgres" in stack["up"]
    state = stack["base"] / "state"
    assert {p.name for p in state.glob("*.pid")} == {"postgres.pid", "server.pid", "reports.pid", "worker-cpu.pid",
                                                     "worker-gpu.pid"}
    assert stat.S_IMODE((state / "postgres.password").stat().st_mode) == 0o600
    server_pid = int((state / "server.pid").read_text())
    command_line = Path(f"/proc/{server_pid}/cmdline").read_bytes().decode()
    assert (state / "postgres.password").read_text().strip() not in command_line  # not shown by ps
    worker_environment = Path(f"/proc/{int((state / 'worker-cpu.pid').read_text())}/environ").read_bytes()
    assert b"PREFECT_API_DATABASE_CONNECTION_URL" not in worker_environment  # nor given to the flows

    runs = scheduled_runs(stack)
    assert runs, "the scheduler created no runs for the cron schedule"

    out = stack["base"] / "reports"
    flow_run = run_deployment(stack, "dataset=breast-cancer", "epochs=1", "background=20", "explain_rows=4",
                              f"out={out}")
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]["message"]
    (run_dir,) = out.iterdir()
    assert (run_dir / "report.pdf").read_bytes().startswith(b"%PDF")
    # The server wrote both into PostgreSQL (SQLite would have left a file in PREFECT_HOME).
    assert psql(stack, f"SELECT state_name FROM flow_run WHERE id = '{flow_run['id']}'") == flow_run["state_name"]
    ids = ", ".join(f"'{r['id']}'" for r in runs)
    assert int(psql(stack, f"SELECT count(*) FROM flow_run WHERE id IN ({ids})")) == len(runs)
    assert not list((stack["base"] / "home").glob("*.db"))
