"""Run directories and the files in them: atomic writes, SHA-256 hashes, the manifest.

Every file is written under a temporary name in its final directory and renamed into
place, so a file with its final name is always complete, and a crash never leaves a
half-written report behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.run import layout
from tasks.run.errors import InputError, StorageError, storage_problem, user_path


def read_user_text(path: Path, what: str, max_bytes: int) -> str:
    """A small UTF-8 text file the user named (a model card, say), or InputError naming it: it must be a regular
    file, checked on the opened file (a FIFO or a device is refused without blocking on it), and is read up to
    `max_bytes` (a /proc file's size says 0: the size is what is read, not what stat says)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be opened: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{what} {path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise InputError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise InputError(f"{what} {path} is over {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing other threads' file creation)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere than Linux: set and put back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. A file system that
    refuses the write (full, read-only, ...) is a StorageError naming `path`, whichever writer met it."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as handle:
            # The umask's mode, not mkstemp's (or a writer's own, safetensors') 0600: colleagues read reports.
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as exc:  # asked while the partial file still fills the file system
        problem = storage_problem(path.parent, exc)
        if problem is None:
            raise
        raise StorageError(f"cannot write {path}: {problem}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # a read-only file system keeps it: --resume removes it
                tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_json_atomic(path: Path, payload: object) -> Path:
    return write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def write_parquet_atomic(path: Path, table: pa.Table) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def new_run_dir(out: Path, dataset_slug: str) -> Path:
    """Create a fresh, uniquely named run directory under `out` (never reuses one)."""
    out = user_path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    slug = layout.slug(dataset_slug)[:40].strip("-") or "data"
    while True:
        run_dir = out / f"{stamp}-{slug}-{secrets.token_hex(4)}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def build_manifest(run_dir: Path, extra: dict | None = None, exclude: tuple[str, ...] = (layout.FILES["manifest"],)) -> dict:
    """List every file in the run directory (but the manifest, or `exclude`) with its size and SHA-256."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        hidden = any(part.startswith(".") for part in rel.parts)  # temporary files, Prefect's cached results
        if path.is_file() and rel.as_posix() not in exclude and not hidden:
            files[rel.as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return {"run_dir": run_dir.name, "layout": layout.VERSION, "files": files, **(extra or {})}


def write_manifest(run_dir: Path, extra: dict | None = None) -> Path:
    return write_json_atomic(layout.path(run_dir, "manifest"), build_manifest(run_dir, extra))
