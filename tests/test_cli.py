"""The `accountability` command as a user runs it: a real subprocess."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.run.artifacts import sha256_file
from tests.conftest import write_imagefolder


def cli_env(prefect_home: Path | None = None) -> dict[str, str]:
    """The environment of a user's first run: Prefect's local ephemeral server (no PREFECT_API_URL)."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    return env


def run_cli(*args: str, cwd: Path, api_url: str | None = None) -> subprocess.CompletedProcess:
    env = cli_env()
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_help_explains_every_option_with_its_default(tmp_path):
    result = run_cli("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for option, default in (("--dataset", "digits"), ("--epochs", "8"), ("--background", "200"),
                            ("--explain", "32"), ("--seed", "0"), ("--out", "reports"), ("--shard-size", "8")):
        assert option in result.stdout
        assert f"(default: {default}" in " ".join(result.stdout.split())
    assert "cifar10:DIR" in result.stdout and "imagefolder:DIR" in result.stdout
    assert "--dask-workers N" in result.stdout and "--dask-address ADDRESS" in result.stdout
    assert "(default: None)" not in result.stdout and "(default: False)" not in result.stdout
    assert "(default: the newest intact run" in " ".join(result.stdout.split())  # described, not printed twice


@pytest.fixture
def earlier_run(tmp_path):
    """An output directory that already holds a finished run (its files must stay untouched)."""
    out = tmp_path / "reports"
    earlier = out / "20260101T000000Z-digits-00000000"
    (earlier / "data").mkdir(parents=True)
    (earlier / "report.pdf").write_bytes(b"%PDF-1.7 earlier report")
    (earlier / "data" / "train.parquet").write_bytes(b"PAR1 earlier")
    (earlier / "run.json").write_text("{}")
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "mnist"], "unknown dataset spec 'mnist'"),
        (["--dataset", "imagefolder:/no/such/dir"], "does not exist or is not a directory"),
        (["--dataset", "cifar10:{tmp}"], "no CIFAR-10 batches"),
        (["--dataset", "imagefolder:{corrupt}"], "cannot read image"),
        (["--dataset", "imagefolder:{single}"], "single class"),
        (["--explain", "100000", "--epochs", "1"], "--explain 100000 is larger than the validation split"),
        (["--epochs", "0"], "argument --epochs: 0 is not a positive integer"),
        (["--background", "-3"], "argument --background: -3 is not a positive integer"),
        (["--dask-workers", "2", "--dask-address", "tcp://127.0.0.1:8786"], "not allowed with argument"),
        (["--dask-address", "tcp://127.0.0.1:8786"], "must report to a Prefect server that they can reach"),
        (["--seed", str(2**32)], "argument --seed: 4294967296 is not between 0 and 4294967295"),
        (["--model-card", "~no-such-user-here/card.yaml"], "no such user's home directory"),
        (["--out", "{tmp}/" + "a" * 300 + "/reports"], "a directory name is longer than the file system's"),
        (["--out", "{tmp}/r\udce9ports"], "/r\\xe9ports' is not valid UTF-8 (names and paths reach the report)"),
        (["--dataset", "imagefolder:{latin1}"], "class folder b'caf\\xe9' is not valid UTF-8"),
        (["--dataset", "breast-cancer", "--model", "{tmp}/fifo.onnx"], "fifo.onnx: not a regular file"),
        (["--out", "{tmp}/" + ("d" * 200 + "/") * 20], "is too long a path: a run's files below it would pass"),
        (["--out", "{tmp}/reports/20260101T000000Z-digits-00000000/data/new"], "is inside the run directory"),
        (["--dataset", "csv:~no-such-user-here/x.csv", "--label", "y"], "no such user's home directory"),
    ],
    ids=["unknown-spec", "missing-dir", "no-cifar", "corrupt-image", "one-class", "explain-too-large",
         "zero-epochs", "negative-background", "two-dask-options", "dask-without-server", "huge-seed", "unknown-user",
         "name-too-long", "out-not-utf8", "class-not-utf8", "model-fifo", "path-too-long", "out-inside-a-run",
         "dataset-unknown-user"],
)
def test_bad_input_is_one_clear_line_and_leaves_earlier_runs_alone(tmp_path, earlier_run, args, message):
    corrupt = write_imagefolder(tmp_path / "corrupt", {"a": 3, "b": 3})
    (corrupt / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    single = write_imagefolder(tmp_path / "single", {"only": 4})
    latin1 = write_imagefolder(tmp_path / "latin1", {"a": 3, "caf\udce9": 3})  # b"caf\xe9" on disk
    os.mkfifo(tmp_path / "fifo.onnx")  # reading it would block
    args = [a.format(tmp=tmp_path, corrupt=corrupt, single=single, latin1=latin1) for a in args]
    before = tree_digest(earlier_run)
    result = run_cli("run", "--out", str(earlier_run), *args, cwd=tmp_path)  # (an --out in args comes last: wins)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert message in lines[-1]
    assert "Traceback" not in result.stderr + result.stdout
    if "argument" not in message:  # argparse errors print usage first; ours are a single line
        assert len(lines) == 1, result.stderr
    assert tree_digest(earlier_run) == before
    assert [p.name for p in earlier_run.iterdir()] == ["20260101T000000Z-digits-00000000"]


def test_an_unreachable_prefect_api_is_named(tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    result = run_cli("run", "--out", str(tmp_path / "out"), cwd=tmp_path, api_url=url)
    assert result.returncode == 2
    assert f"the Prefect API at {url} did not answer" in result.stderr
    assert "unset PREFECT_API_URL" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_malformed_prefect_api_url_is_named(tmp_path):
    result = run_cli("run", "--out", str(tmp_path / "out"), cwd=tmp_path, api_url="http://[::1:4200/api")
    assert result.returncode == 2 and "the Prefect API at http://[::1:4200/api did not answer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_runs_at_once_into_one_output_directory_both_finish(tmp_path):
    out = tmp_path / "reports"
    env = cli_env(tmp_path / "prefect")
    args = [sys.executable, "-m", "flows.cli", "run", "--dataset", "breast-cancer", "--epochs", "1",
            "--background", "5", "--explain", "3", "--out", str(out)]
    runs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    # Two runs on one Prefect home share its SQLite database: no "database is locked", no server shutdown
    # traceback, nothing at all on the console's error stream of a run that succeeded.
    assert [err for _, err in outputs] == ["", ""]
    run_dirs = sorted(out.iterdir())
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert "report.pdf" in manifest["files"]
        stdout = next(stdout for stdout, _ in outputs if f"run directory: {run_dir}" in stdout)
        n_failed = len([c for c in manifest["checks"] if not c["passed"]])
        assert f"checks: {n_failed} of {len(manifest['checks'])} failed" in stdout
        assert stdout.count("\n  failed: ") == n_failed  # the closing lines name each failed check
        for rel, info in manifest["files"].items():
            assert sha256_file(run_dir / rel) == info["sha256"], rel
    # The seal each run left in the local Prefect database (the one both runs used), read back by the CLI.
    sealed = subprocess.run([sys.executable, "-m", "flows.cli", "verify", "--seal", str(run_dirs[0])], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert (sealed.returncode, sealed.stdout, sealed.stderr) == (0, f"{run_dirs[0]}: intact, sealed\n", "")


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_the_command_alone_stops_the_run_and_says_how_to_resume(tmp_path, signal_name):
    """A supervisor or an IDE's stop button signals the CLI process only, not its group (SIGTERM); a script's
    background job (`&`) starts with SIGINT ignored, and `kill -INT` must still stop it."""
    import signal
    import time

    from tasks.run.resume import resumable_parameters

    out = tmp_path / "reports"
    env = cli_env()  # (the worker's Prefect home: its database is made once, not per test: 18 s)
    command = [sys.executable, "-m", "flows.cli", "run", "--dataset", "breast-cancer", "--epochs", "400",
               "--out", str(out)]
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if signal_name == "SIGINT" else None
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=ignore)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/training")):  # training has begun
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.poll() else ""
        time.sleep(0.1)
    process.send_signal(getattr(signal, signal_name))
    stopped = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and time.monotonic() - stopped < 30
    (run_dir,) = out.iterdir()
    assert stderr.strip().splitlines() == [f"accountability: interrupted; finish it with: accountability run "
                                           f"--resume {run_dir}"]  # the product's line alone
    assert resumable_parameters(run_dir)["epochs"] == 400 and not (run_dir / "manifest.json").exists()


@pytest.mark.parametrize("dataset, model, name", [
    ("digits", None, "digits-2026-12-01"),
    ("csv:/data/loans.csv", "/models/scorecard.onnx", "loans-scorecard-2026-12-01"),
    ("cifar10:/data/cifar-10", None, "cifar10-2026-12-01"),
    ("imagefolder:/data/chest x-ray/", "~/m/v2.1.pt2", "chest-x-ray-v2.1-2026-12-01"),
    ("parquet:/d/$(rm -rf).parquet", None, "rm--rf-2026-12-01"),
])
def test_flow_runs_are_named_after_the_data_the_model_and_the_day(dataset, model, name):
    from tasks.run.config import run_name

    assert run_name(dataset, model, "2026-12-01") == name
