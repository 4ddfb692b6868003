"""File systems that refuse a run's files: read-only, full, out of inodes, before the work and in the middle of it.

Each case runs in a mount namespace of its own (`unshare -rm`: no root needed, nothing left mounted) over a real
tmpfs, so the kernel itself refuses the writes."""

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_cli import cli_env

ROOT = Path(__file__).resolve().parents[1]


def _namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -rm (user and mount namespaces)")


def on_tmpfs(mountpoint: Path, options: str, script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the bash `script` with a fresh tmpfs (mount `options`) on `mountpoint`, seen by the script alone."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    body = f"set -e\nmount -t tmpfs -o {options} tmpfs {mountpoint}\n{textwrap.dedent(script)}"
    return subprocess.run(["unshare", "-rm", "bash", "-c", body], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env or cli_env())


@pytest.mark.parametrize("options, message", [
    ("ro", r"cannot write in {fs} \(permission denied or a read-only file system\)"),
    ("size=8m", r"only 8 MiB free on its file system; a run needs at least 256 MiB"),
    ("size=512m,nr_inodes=300",
     r"its file system has room for only 2\d\d more files \(inodes\); a run needs at least 1000"),
], ids=["read-only", "full", "no-inodes"])
def test_a_file_system_that_cannot_take_a_run_is_refused_before_any_work(tmp_path, options, message):
    fs = tmp_path / "fs"
    result = on_tmpfs(fs, options, f"""
        {sys.executable} -m flows.cli run --dataset breast-cancer --out {fs}/reports
    """, cli_env(tmp_path / "prefect"))
    assert result.returncode == 2, result.stderr
    line, = result.stderr.strip().splitlines()
    prefix = re.escape(f"accountability: error: --out {fs}/reports: ")
    assert re.fullmatch(prefix + message.format(fs=re.escape(str(fs))), line), line


WRITERS = {  # each of the run's writers, through atomic_path, writing about 1 MB
    "parquet": "write_parquet_atomic(target, pa.table({'x': np.random.default_rng(0).random(130_000)}))",
    "safetensors": "save_weights(target, {'w': torch.rand(260_000)})",
    "png": "figure_to(target)",
    "pdf": "pdf_to(target)",
    "json": "write_json_atomic(target, {'x': list(range(200_000))})",
}
WRITER_SCRIPT = """
import json, os, sys
from pathlib import Path
import numpy as np, pyarrow as pa, torch
from safetensors.torch import save_file
from tasks.run.artifacts import atomic_path, write_json_atomic, write_parquet_atomic
from tasks.run.errors import StorageError

def save_weights(path, state):
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))

def figure_to(path):
    from tasks.report.figures import save_figure
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(np.random.default_rng(0).random((600, 600)))
    save_figure(fig, path)

def pdf_to(path):
    import base64, io, weasyprint
    from PIL import Image
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(noise, "png")
    html = f'<img src="data:image/png;base64,{base64.b64encode(noise.getvalue()).decode()}">'
    with atomic_path(path) as tmp:
        weasyprint.HTML(string=html).write_pdf(tmp)

said = {}
for name, call in json.loads(Path(sys.argv[2]).read_text()).items():
    target = Path(sys.argv[1]) / name
    try:
        exec(call)
    except StorageError as exc:
        said[name] = [str(exc), target.read_text(), sorted(os.listdir(target.parent))]
print(json.dumps(said))
"""


@pytest.mark.parametrize("options, problem", [("size=256k", "its file system is full"),
                                              ("size=4m", "its file system is read-only")], ids=["full", "read-only"])
def test_every_writer_meeting_a_refusing_file_system_says_so_and_keeps_the_file_it_replaces(tmp_path, options,
                                                                                            problem):
    """One mechanism (atomic_path asks the file system) for writers that report it differently (pyarrow's OSError
    without an errno, safetensors' own error type, matplotlib, WeasyPrint): a StorageError naming the file, the
    earlier version of the file untouched, no partial file left where there was room to remove it."""
    fs = tmp_path / "fs"
    (tmp_path / "writers.py").write_text(WRITER_SCRIPT)
    (tmp_path / "writers.json").write_text(json.dumps(WRITERS))
    make_read_only = f"mount -o remount,ro {fs}" if "read-only" in problem else ""
    result = on_tmpfs(fs, options, f"""
        mkdir {fs}/run
        for name in {' '.join(WRITERS)}; do echo earlier > {fs}/run/$name; done
        {make_read_only}
        {sys.executable} {tmp_path}/writers.py {fs}/run {tmp_path}/writers.json
    """)
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout)
    assert sorted(said) == sorted(WRITERS)
    for name, (message, kept, listing) in said.items():
        assert message.startswith(f"cannot write {fs}/run/{name}: {problem}"), message
        assert kept == "earlier\n" and listing == sorted(WRITERS), name


@pytest.mark.slow
def test_a_disk_that_fills_during_a_run_stops_it_in_one_line_and_the_run_resumes_to_an_intact_report(tmp_path):
    """Another process fills the file system once the run has begun: the CLI stops with one line naming the
    file and how to finish; with room again, --resume finishes a report that verify finds intact."""
    fs = tmp_path / "fs"
    cli = f"{sys.executable} -m flows.cli"
    result = on_tmpfs(fs, "size=300m", f"""
        {cli} run --dataset breast-cancer --epochs 3 --background 5 --explain 3 --out {fs}/reports \\
            > {tmp_path}/first.out 2> {tmp_path}/first.err &
        until ls {fs}/reports/*/run.json > /dev/null 2>&1; do sleep 0.05; done
        {sys.executable} -c "import os; f = os.statvfs('{fs}'); print(f.f_bavail * f.f_frsize - 64 * 1024)" \\
            | xargs fallocate {fs}/filler -l
        set +e; wait $!; echo $? > {tmp_path}/first.rc; set -e
        rm {fs}/filler
        ls -d {fs}/reports/*/ > {tmp_path}/run_dirs
        {cli} run --resume {fs}/reports/*/ > {tmp_path}/resume.out
        {cli} verify {fs}/reports/*/
        cp {fs}/reports/*/manifest.json {tmp_path}/
    """)  # (the worker's Prefect home, its database made once)
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first_err
    (run_dir,) = [Path(line.rstrip("/")) for line in (tmp_path / "run_dirs").read_text().split()]
    line, = first_err.strip().splitlines()
    head, _, hint = line.partition("; once it has room and can be written, finish the run with: ")
    assert head.startswith("accountability: error: ") and f"cannot write {run_dir}/" in head
    assert "its file system is full" in head or "No space left on device" in head, line
    assert hint == f"accountability run --resume {run_dir}"
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(f"{run_dir}: intact")
    assert "report.pdf" in json.loads((tmp_path / "manifest.json").read_text())["files"]
