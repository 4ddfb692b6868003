"""Check a run directory against its manifest: every file's SHA-256, no file missing or added, and the
files embedded in report.pdf identical to those in the directory."""

from __future__ import annotations

import json
from pathlib import Path

from pypdf import PdfReader
from pypdf.errors import PdfReadError

from tasks.run import layout
from tasks.run.artifacts import build_manifest
from tasks.run.errors import InputError


def verify_run(run_dir: Path) -> list[str]:
    """The differences between `run_dir` and its manifest.json, one line each (empty: intact)."""
    run_dir = Path(run_dir).expanduser().resolve()
    manifest_path = layout.path(run_dir, "manifest")
    try:
        recorded = json.loads(manifest_path.read_text())["files"]
    except FileNotFoundError:
        raise InputError(f"{run_dir} has no {manifest_path.name}: not a finished run directory") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{manifest_path} is not a manifest written by accountability: {exc}") from None
    actual = build_manifest(run_dir)["files"]
    problems = []
    for rel in sorted(set(recorded) | set(actual)):
        if rel not in actual:
            problems.append(f"missing: {rel}")
        elif rel not in recorded:
            problems.append(f"not in the manifest: {rel}")
        elif actual[rel]["sha256"] != recorded[rel].get("sha256"):
            problems.append(f"changed: {rel} (SHA-256 {actual[rel]['sha256'][:16]}..., "
                            f"manifest says {str(recorded[rel].get('sha256'))[:16]}...)")
    return problems + _embedded_differences(run_dir)


def _embedded_differences(run_dir: Path) -> list[str]:
    """The PDF's attachments that differ from (or are missing beside) the run's own files."""
    pdf = layout.path(run_dir, "report")
    if not pdf.is_file():
        return []
    try:
        embedded = {name: contents[0] for name, contents in PdfReader(pdf).attachments.items()}
    except (PdfReadError, OSError, ValueError, KeyError) as exc:
        return [f"report.pdf: cannot read its attachments ({exc})"]
    problems = []
    for rel in (layout.FILES[key] for key in layout.ATTACHMENTS):
        name = Path(rel).name
        if name not in embedded:
            problems.append(f"report.pdf does not carry {rel}")
        elif not (run_dir / rel).is_file() or embedded[name] != (run_dir / rel).read_bytes():
            problems.append(f"report.pdf carries a {rel} that differs from the run directory's")
    return problems
