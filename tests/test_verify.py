import os
import shutil
import stat
import subprocess
import sys

import pytest

from tasks.report.render import render_pdf
from tasks.run import layout
from tasks.run.artifacts import build_manifest, current_umask, write_json_atomic, write_manifest
from tasks.run.errors import InputError
from tasks.run.verify import verify_run


@pytest.fixture
def run_dir(tmp_path):
    """A run directory in miniature: data, the files the PDF embeds, a real PDF/A-3b, the manifest."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train.parquet").write_bytes(b"PAR1 some data PAR1")
    attachments = {layout.FILES[key]: text for key, text in layout.ATTACHMENTS.items()}
    for rel in attachments:
        if rel != layout.FILES["artifacts"]:
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_bytes(f"contents of {rel}".encode())
    # as the report step does: the list of every file so far, then the PDF that carries it, then the manifest
    later = tuple(layout.FILES[k] for k in ("manifest", "artifacts", "report"))
    write_json_atomic(layout.path(run, "artifacts"), build_manifest(run, exclude=later))
    render_pdf("audit_probe.html.j2", {"name": "run", "figure": "none.png", "escape": "none.png", "css": ""}, run,
               run / "report.pdf", attachments=attachments)
    write_manifest(run)
    return run


def test_intact_run_verifies(run_dir):
    assert verify_run(run_dir) == []


@pytest.mark.parametrize("name", ["report.pdf", "data/train.parquet", layout.FILES["artifacts"]])
def test_one_changed_byte_in_any_artifact_is_caught(run_dir, name):
    path = run_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert f"changed: {name}" in [p.split(" (")[0] for p in verify_run(run_dir)]


def test_a_file_changed_and_re_manifested_still_differs_from_the_pdfs_copy(run_dir):
    (run_dir / layout.FILES["artifacts"]).write_text('{"files": {}}')
    write_manifest(run_dir)  # the tamperer rewrites the manifest too; the PDF still carries the original
    assert verify_run(run_dir) == ["report.pdf carries a artifacts.json that differs from the run directory's"]


def test_missing_and_added_files_are_caught(run_dir):
    (run_dir / "data" / "train.parquet").unlink()
    shutil.copy(run_dir / "report.pdf", run_dir / "extra.pdf")
    assert verify_run(run_dir) == ["missing: data/train.parquet", "not in the manifest: extra.pdf",
                                   "missing: data/train.parquet (listed in the list report.pdf carries)",
                                   "not in the list report.pdf carries: extra.pdf"]


def test_cli_exit_codes(run_dir, tmp_path):
    command = [sys.executable, "-m", "flows.cli", "verify", str(run_dir)]
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    (run_dir / "report.pdf").write_bytes(b"%PDF-1.7 a different report")
    tampered = subprocess.run(command, capture_output=True, text=True)
    assert tampered.returncode == 1 and "changed: report.pdf" in tampered.stdout and "TAMPERED" in tampered.stdout
    not_a_run = subprocess.run([sys.executable, "-m", "flows.cli", "verify", str(tmp_path)],
                               capture_output=True, text=True)
    assert not_a_run.returncode == 2 and "no manifest.json" in not_a_run.stderr


def test_not_a_run_directory(tmp_path):
    with pytest.raises(InputError, match="not a finished run directory"):
        verify_run(tmp_path)


def test_a_changed_file_listed_in_a_rewritten_manifest_differs_from_the_list_the_pdf_carries(run_dir):
    (run_dir / "data" / "train.parquet").write_bytes(b"PAR1 other data PAR1")
    write_manifest(run_dir)  # the tamperer rewrites the manifest; artifacts.json and the PDF are untouched
    (problem,) = verify_run(run_dir)
    assert problem.startswith("changed: data/train.parquet") and "the list report.pdf carries says" in problem


def test_a_file_replaced_by_a_link_to_an_identical_copy_is_caught(run_dir, tmp_path):
    copy = tmp_path / "elsewhere.parquet"
    shutil.copy(run_dir / "data" / "train.parquet", copy)
    (run_dir / "data" / "train.parquet").unlink()
    (run_dir / "data" / "train.parquet").symlink_to(copy)  # reads identical today, can change tomorrow
    assert verify_run(run_dir)[0] == "symbolic link: data/train.parquet (a run holds files, not links)"


def test_a_hidden_file_is_caught_but_prefects_cached_results_are_not(run_dir):
    (run_dir / ".prefect-results").mkdir()
    (run_dir / ".prefect-results" / "0123abcd").write_text("{}")
    assert verify_run(run_dir) == []
    (run_dir / "data" / ".sneaky").write_text("x")
    assert verify_run(run_dir) == ["hidden file not in the manifest: data/.sneaky"]


@pytest.mark.parametrize("manifest", ['{"files": ["report.pdf"]}', '{"files": {"report.pdf": "abc"}}', "[1, 2]",
                                      "not json", "directory"])
def test_a_malformed_manifest_is_one_clear_error(run_dir, manifest):
    path = run_dir / "manifest.json"
    path.unlink()
    if manifest == "directory":
        path.mkdir()
    else:
        path.write_text(manifest)
    with pytest.raises(InputError, match="manifest"):
        verify_run(run_dir)


def test_a_foreign_directory_under_out_does_not_break_finding_the_previous_run(run_dir, tmp_path):
    import json

    from tasks.run.history import earlier_runs, previous_run

    out = tmp_path / "out"
    foreign = out / "20250101T000000Z-digits-deadbeef"  # claims to be a run of digits; its file list is garbage
    foreign.mkdir(parents=True)
    (foreign / "manifest.json").write_text(json.dumps({"parameters": {"dataset": "digits"}, "layout": layout.VERSION,
                                                       "files": ["x"]}))
    current = out / "20260101T000000Z-digits-00000000"
    current.mkdir()
    assert previous_run(out, "digits", current) is None
    assert earlier_runs(out, "digits", current) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_files_are_written_atomically_with_the_mode_the_umask_gives(tmp_path, umask):
    """Not mkstemp's 0600: colleagues reading reports on shared storage need what their umask allows."""
    saved = os.umask(umask)
    try:
        assert current_umask() == umask
        path = write_json_atomic(tmp_path / "a" / "record.json", {"x": 1})
    finally:
        os.umask(saved)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temporary file left beside it
