"""Check a run directory against its manifest: every file's SHA-256, no file missing or added, and the
files embedded in report.pdf identical to those in the directory.

The manifest alone can be rewritten; the PDF cannot be without re-rendering it. So the file list the
PDF carries (artifacts.json: every file written before it, with its SHA-256) is checked against the
directory too: a file changed and re-listed in a rewritten manifest still differs from what the PDF
recorded. Symbolic links are differences (their target can change later); so is any hidden file but
Prefect's cached step results (`.prefect-results/`, what --resume reads).

Someone who can write the run directory can still edit the PDF's pages (keeping its attachments) and rewrite the
manifest to match. The seal closes that: when a run finishes, its flow run records the SHA-256 of report.pdf and
manifest.json in a Prefect artifact (`run-seal`), kept by the server, apart from the files; `verify --seal`
checks the directory against it.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from pypdf import PdfReader

from tasks.run import layout
from tasks.run.artifacts import build_manifest, sha256_file
from tasks.run.errors import InputError, user_path


def verify_run(run_dir: Path) -> list[str]:
    """The differences between `run_dir` and its manifest.json, one line each (empty: intact)."""
    run_dir = user_path(run_dir)
    recorded = _recorded_files(run_dir)
    problems = _links_and_hidden(run_dir)
    actual = build_manifest(run_dir)["files"]
    problems += _differences(recorded, actual, "the manifest")
    return problems + _embedded_differences(run_dir, actual)


SEAL_KEY = "run-seal"  # the Prefect artifact of a finished run: the SHA-256 of its report and manifest


class Seal(NamedTuple):
    rows: list[dict]  # {"run", "file", "sha256"} for report.pdf and manifest.json
    changed: datetime | None  # when it was updated through the API after it was made (None: never)
    created: datetime | None = None  # when the server recorded it
    run_ended: datetime | None = None  # when its flow run ended (None: it has not)


def seal_differences(run_dir: Path) -> list[str]:
    """report.pdf and manifest.json against the seal their flow run left on the Prefect server (the one at
    PREFECT_API_URL, or the local one); one line per difference, or saying why there is no seal to check."""
    run_dir = user_path(run_dir)
    _recorded_files(run_dir)  # (a manifest that is one)
    flow_run = json.loads(layout.path(run_dir, "manifest").read_text()).get("flow_run")
    flow_run_id = flow_run.get("id") if isinstance(flow_run, dict) else None
    try:
        flow_run_id = str(uuid.UUID(str(flow_run_id)))
    except ValueError:
        return [f"manifest.json names no flow run ({flow_run_id!r}): the run has no seal to check"]
    seals = _read_seals(flow_run_id)
    if not seals:
        return [f"the Prefect server has no seal for flow run {flow_run_id}, which manifest.json names"]
    problems = [] if len(seals) == 1 else [f"the Prefect server holds {len(seals)} seals for flow run {flow_run_id}: "
                                           "a run makes one, the others were added later (the first is checked)"]
    if seals[0].changed:
        problems.append(f"the seal of flow run {flow_run_id} was changed through the API on "
                        f"{seals[0].changed:%Y-%m-%d %H:%M} UTC, after the run made it")
    if seals[0].created is None or seals[0].run_ended is None or seals[0].created > seals[0].run_ended:
        made = f"{seals[0].created:%Y-%m-%d %H:%M:%S} UTC" if seals[0].created else "at an unknown time"
        ended = f"{seals[0].run_ended:%Y-%m-%d %H:%M:%S} UTC" if seals[0].run_ended else "has not ended"
        problems.append(f"the seal of flow run {flow_run_id} was made {made}, and the flow run {ended}: a seal is "
                        "made by the run itself before it ends (this one was added through the API)")
    sealed = {layout.FILES["report"], layout.FILES["manifest"]}
    if sorted(str(row.get("file")) for row in seals[0].rows) != sorted(sealed):
        problems.append(f"the seal of flow run {flow_run_id} does not list {' and '.join(sorted(sealed))} once each")
    for row in seals[0].rows:
        path = run_dir / str(row.get("file"))
        if row.get("file") not in sealed:
            continue
        if not path.is_file():
            problems.append(f"missing: {row['file']} (sealed by flow run {flow_run_id})")
        elif (actual := sha256_file(path)) != row.get("sha256"):
            problems.append(f"changed since the run sealed it: {row['file']} (SHA-256 {actual[:16]}..., "
                            f"flow run {flow_run_id} sealed {str(row.get('sha256'))[:16]}...)")
    return problems


def _read_seals(flow_run_id: str) -> list[Seal]:
    """Each `run-seal` artifact of the flow run, oldest first."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def query():
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[SEAL_KEY]),
                                               flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])),
                sort=ArtifactSort.CREATED_DESC)
            try:
                ended = (await client.read_flow_run(uuid.UUID(flow_run_id))).end_time
            except Exception:  # noqa: BLE001 - a flow run the server does not know: no end to compare with
                ended = None
            return artifacts, ended

    seals = []
    artifacts, ended = asyncio.run(query())
    for artifact in reversed(artifacts):
        try:
            rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        except ValueError:
            rows = None
        changed = (artifact.updated if artifact.updated and artifact.created
                   and (artifact.updated - artifact.created).total_seconds() > 1 else None)
        seals.append(Seal([row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else [], changed,
                          artifact.created, ended))
    return seals


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
