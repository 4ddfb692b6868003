"""Run as a service, for real: `DATABASE=postgres deploy/stack.sh up` brings up PostgreSQL, a Prefect server on
it, the cpu and gpu pools, the deployments of deploy/prefect.yaml, one worker per pool and the reports server;
a deployed report runs its SHAP stage on the gpu pool's worker, its PDF opens from the UI, and Prefect's own
CLI reads it all. Every process is stopped by the fixture, even when a test fails. (The default SQLite stack:
test_service_sqlite.py.) Needs Debian's postgresql and chromium packages (.ci/run installs them)."""

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.stacks import PREFECT, ROOT, api, check_monthly_schedule, report_link, run_deployment, stack_up

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.postgres]  # after the rest (Makefile)
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


def test_the_server_runs_on_its_own_postgres_whose_password_stays_with_it(stack):
    assert "database postgres" in stack["up"]
    state = stack["base"] / "state"
    assert {p.name for p in state.glob("*.pid")} == {"postgres.pid", "server.pid", "reports.pid", "worker-cpu.pid",
                                                     "worker-gpu.pid"}
    assert stat.S_IMODE((state / "postgres.password").stat().st_mode) == 0o600
    password = (state / "postgres.password").read_text().strip()
    assert password not in Path(f"/proc/{int((state / 'server.pid').read_text())}/cmdline").read_text()  # not in ps
    worker_environment = Path(f"/proc/{int((state / 'worker-cpu.pid').read_text())}/environ").read_bytes()
    assert b"PREFECT_API_DATABASE_CONNECTION_URL" not in worker_environment  # nor given to the flows
    assert not list((stack["base"] / "home").glob("*.db"))  # no SQLite database beside it


def test_the_monthly_deployment_gets_scheduled_runs_kept_in_postgres(stack):
    runs = check_monthly_schedule(stack)
    ids = ", ".join(f"'{r['id']}'" for r in runs)
    assert int(psql(stack, f"SELECT count(*) FROM flow_run WHERE id IN ({ids})")) == len(runs)


@pytest.fixture(scope="module")
def deployed_run(stack) -> dict:
    """An on-demand run of the monthly deployment (CLI `prefect deployment run`) validating a user's model (a
    torch.export archive), waited for."""
    import torch

    out, model = stack["base"] / "reports" / "on-demand", stack["base"] / "scorecard.pt2"  # under the served dir
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(30, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    torch.export.save(torch.export.export(mlp, (torch.rand(4, 30),), dynamic_shapes=({0: torch.export.Dim.AUTO},)),
                      str(model))
    parent = run_deployment(stack, "dataset=breast-cancer", f"model={model}", "background=20", "explain_rows=4",
                            f"out={out}")
    return {"flow_run": parent, "out": out}


def test_a_deployed_report_runs_its_shap_stage_on_the_gpu_worker(stack, deployed_run):
    parent, out = deployed_run["flow_run"], deployed_run["out"]
    flow_run_id = parent["id"]
    assert parent["state_type"] == "COMPLETED", parent["state"]["message"]
    assert parent["work_pool_name"] == "cpu"
    assert psql(stack, f"SELECT state_name FROM flow_run WHERE id = '{flow_run_id}'") == parent["state_name"]

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
    # One progress artifact, on the run the user watches, moved through every stage (the gpu worker's SHAP too)
    (progress,) = [a for a in artifacts if a["type"] == "progress"]
    assert progress["key"] == "run-progress" and progress["data"] == 100.0
    assert re.fullmatch(r"(\d+)/\1 done: [^,]+, 100%", progress["description"]), progress["description"]
    child_artifacts = api(stack, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [child["id"]]}}})
    assert not [a for a in child_artifacts if a["type"] == "progress"]
    (run_dir,) = out.iterdir()
    assert (run_dir / "report.pdf").is_file() and (run_dir / "manifest.json").is_file()
    assert (run_dir / "model" / "model.pt2").read_bytes() == (stack["base"] / "scorecard.pt2").read_bytes()
    assert not (run_dir / "model" / "model.safetensors").exists()  # validated as given, nothing trained


def test_the_report_link_answers_with_the_pdf_and_the_files_have_the_umasks_mode(stack, deployed_run):
    (run_dir,) = deployed_run["out"].iterdir()
    link = report_link(stack, deployed_run["flow_run"]["id"])
    assert link == f"{stack['reports']}/on-demand/{run_dir.name}/report.pdf"  # served by the stack, not file://
    pdf = httpx.get(link, timeout=30)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content == (run_dir / "report.pdf").read_bytes()
    # The stack was started under umask 027: the workers' runs write every file 0640, not mkstemp's 0600.
    modes = {path.relative_to(run_dir).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in run_dir.rglob("*") if path.is_file() and ".prefect-results" not in path.parts}
    assert len(modes) > 20 and set(modes.values()) == {0o640}, {k: oct(v) for k, v in modes.items() if v != 0o640}


def test_prefects_own_read_commands_work_against_the_stack(stack, deployed_run):
    """Prefect's CLI sends `"limit": null`; fastapi 0.151-0.154 answered 422 to it (constraints.txt pins 0.150)."""
    parent = deployed_run["flow_run"]
    expected = {("flow-run", "ls"): parent["id"][:8], ("deployment", "ls"): "compliance_report/monthly",
                ("work-pool", "ls"): "gpu", ("flow", "ls"): "compliance_report", ("artifact", "ls"): "report-pdf",
                ("flow-run", "logs", parent["id"]): "Finished in state"}
    started = {command: subprocess.Popen([str(PREFECT), *command], env={**stack["env"], "COLUMNS": "250"},
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for command in expected}  # side by side: each is a few seconds of Python start-up
    for command, process in started.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0 and expected[command] in stdout, (command, stdout[-2000:], stderr[-2000:])


def test_the_report_opens_from_the_flow_run_page_in_a_browser(stack, deployed_run):
    """Headless Chromium (Debian's package, driven by Playwright): the flow run page, its Artifacts tab, the
    report-pdf artifact, then its link, which opens the PDF in a new tab."""
    from playwright.sync_api import sync_playwright

    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    base, parent = stack["api"].removesuffix("/api"), deployed_run["flow_run"]
    shots = ROOT / "test-output"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/runs/flow-run/{parent['id']}", wait_until="networkidle")
            body = page.inner_text("body")
            assert parent["name"] in body and parent["state_name"] in body and "compliance_report" in body
            assert parent["state_name"] == "Completed" and "verdict: " in body  # the verdict, as a tag
            page.screenshot(path=shots / "flow-run.png")  # kept as a test output
            # The deployment's Runs tab lists the run (a custom state name would leave it out: prefect#12006)
            page.goto(f"{base}/deployments/deployment/{parent['deployment_id']}", wait_until="networkidle")
            page.get_by_text(parent["name"]).first.wait_for()
            page.screenshot(path=shots / "deployment-runs.png")
            page.goto(f"{base}/runs/flow-run/{parent['id']}", wait_until="networkidle")
            page.get_by_text("Artifacts", exact=True).click()
            for key in ("report-pdf", "compliance-summary", "validation-metrics"):
                page.locator("a", has_text=key).wait_for()
            page.locator("a", has_text="report-pdf").click()
            link = page.get_by_role("link", name="report.pdf")
            href = link.get_attribute("href")
            assert href == report_link(stack, parent["id"])
            with page.context.expect_event("response", predicate=lambda r: r.url == href) as opened:
                link.click()
            assert opened.value.status == 200 and opened.value.headers["content-type"] == "application/pdf"
        finally:
            browser.close()
