"""Check a run directory against its manifest: every file's SHA-256, no file missing or added, and the
files embedded in report.pdf identical to those in the directory.

The manifest alone can be rewritten; the PDF cannot be without re-rendering it. So the file list the
PDF carries (artifacts.json: every file written before it, with its SHA-256) is checked against the
directory too: a file changed and re-listed in a rewritten manifest still differs from what the PDF
recorded. Symbolic links are differences (their target can change later); so is any hidden file but
Prefect's cached step results (`.prefect-results/`, what --resume reads).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pypdf import PdfReader

from tasks.run import layout
from tasks.run.artifacts import build_manifest
from tasks.run.errors import InputError


def verify_run(run_dir: Path) -> list[str]:
    """The differences between `run_dir` and its manifest.json, one line each (empty: intact)."""
    run_dir = Path(run_dir).expanduser().resolve()
    recorded = _recorded_files(run_dir)
    problems = _links_and_hidden(run_dir)
    actual = build_manifest(run_dir)["files"]
    problems += _differences(recorded, actual, "the manifest")
    return problems + _embedded_differences(run_dir, actual)


def _recorded_files(run_dir: Path) -> dict[str, dict]:
    """manifest.json's file list, or InputError saying why it is not one."""
    manifest_path = layout.path(run_dir, "manifest")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a directory")
    if not manifest_path.is_file():
        raise InputError(f"{run_dir} has no {manifest_path.name} file: not a finished run directory")
    try:
        recorded = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest_path} is not a manifest written by accountability: {exc}") from None
    if not isinstance(recorded, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                                 for v in recorded.values()):
        raise InputError(f"{manifest_path} is not a manifest written by accountability: its files are not "
                         "a mapping of path to SHA-256")
    return recorded


def _differences(recorded: dict[str, dict], actual: dict[str, dict], where: str) -> list[str]:
    problems = []
    for rel in sorted(set(recorded) | set(actual)):
        if rel not in actual:
            problems.append(f"missing: {rel}" + ("" if where == "the manifest" else f" (listed in {where})"))
        elif rel not in recorded:
            problems.append(f"not in {where}: {rel}")
        elif actual[rel]["sha256"] != recorded[rel].get("sha256"):
            problems.append(f"changed: {rel} (SHA-256 {actual[rel]['sha256'][:16]}..., "
                            f"{where} says {str(recorded[rel].get('sha256'))[:16]}...)")
    return problems


def _links_and_hidden(run_dir: Path) -> list[str]:
    """Symbolic links anywhere in the run, and hidden files outside Prefect's results folder."""
    problems, results = [], layout.DIRS["results"]
    for folder, dirs, files in os.walk(run_dir, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            rel = path.relative_to(run_dir)
            if path.is_symlink():
                problems.append(f"symbolic link: {rel.as_posix()} (a run holds files, not links)")
            elif name in files and any(p.startswith(".") for p in rel.parts) and rel.parts[0] != results:
                problems.append(f"hidden file not in the manifest: {rel.as_posix()}")
    return problems


def _embedded_differences(run_dir: Path, actual: dict[str, dict]) -> list[str]:
    """The PDF's attachments that differ from (or are missing beside) the run's own files, and the files that
    differ from the list the PDF carries (artifacts.json)."""
    pdf = layout.path(run_dir, "report")
    if not pdf.is_file():
        return []
    try:
        embedded = {name: contents[0] for name, contents in PdfReader(pdf).attachments.items()}
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds (unknown filters, bad streams): all "unreadable"
        return [f"report.pdf: cannot read its attachments ({type(exc).__name__}: {exc})"]
    problems = []
    for rel in (layout.FILES[key] for key in layout.ATTACHMENTS):
        name = Path(rel).name
        if name not in embedded:
            problems.append(f"report.pdf does not carry {rel}")
        elif not (run_dir / rel).is_file() or embedded[name] != (run_dir / rel).read_bytes():
            problems.append(f"report.pdf carries a {rel} that differs from the run directory's")
    artifacts = Path(layout.FILES["artifacts"]).name
    if artifacts in embedded:
        try:
            listed = json.loads(embedded[artifacts])["files"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return problems + [f"report.pdf carries an {artifacts} that is not a file list"]
        later = {layout.FILES[key] for key in ("report", "manifest", "artifacts")}  # written after the PDF's list
        problems += _differences(listed, {k: v for k, v in actual.items() if k not in later},
                                 "the list report.pdf carries")
    return problems
