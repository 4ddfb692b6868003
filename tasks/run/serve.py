"""Serve a reports directory (the runs' --out) read-only over HTTP, so that the link of a run's `report-pdf`
artifact opens from the Prefect UI (browsers refuse `file://` links from a web page).

GET and HEAD only. What is served: the files of run directories (a directory holding the run's `run.json`) under
the root, each a plain file with one link (a hard link could bring in any file of the file system), reached without
a symbolic link or a hidden name (`.prefect-results/` holds Prefect's own result records). What is listed: the run
directories, the folders that lead to them, and a run directory's own files; nothing else. With an auth string
(`user:password`, the same as the Prefect API's) every request needs HTTP basic auth."""

from __future__ import annotations

import base64
import hmac
import html
import ipaddress
import mimetypes
import os
import shutil
import sys
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from tasks.run import layout
from tasks.run.errors import InputError, user_path

REPORTS_URL = "ACCOUNTABILITY_REPORTS_URL"  # where the workers' runs link their PDFs (flows/preflight.py) ...
REPORTS_DIR = "ACCOUNTABILITY_REPORTS"  # ... the directory served there (also the deployments' --out)
REPORTS_AUTH = "ACCOUNTABILITY_REPORTS_AUTH"  # user:password the server asks for (the CLI reads it)
REALM = "accountability reports"
# Nothing a served file holds runs in the browser; the PDF viewer and images are unaffected.
ACTIVE_TYPES = ("text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml")
CHUNK = 1 << 20


class ReportsHandler(BaseHTTPRequestHandler):
    """One request against `root`; `auth` is `user:password` or None (no auth)."""

    server_version = "accountability-reports"
    sys_version = ""

    def __init__(self, *args, root: Path, auth: str | None, **kwargs):
        self.root = root
        self.expected = None if auth is None else "Basic " + base64.b64encode(auth.encode()).decode()
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse_method(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _answer(self, body: bool) -> None:
        if self.expected is not None and not hmac.compare_digest(
                self.headers.get("Authorization", "").encode(), self.expected.encode()):
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        url_path = urlsplit(self.path).path
        target = resolve_served(self.root, url_path)
        if target is None:
            self.send_error(HTTPStatus.NOT_FOUND)
        elif target.is_dir() and not url_path.endswith("/"):
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", url_path + "/")  # as the client sent it (still quoted)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif target.is_dir():
            self._send(listing(self.root, target).encode(), "text/html; charset=utf-8", body,
                       policy="default-src 'none'; style-src 'unsafe-inline'")
        else:
            self._send_file(target, body)

    def _send(self, content: bytes, content_type: str, body: bool, policy: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self._common_headers(policy)
        if body:
            self.wfile.write(content)

    def _send_file(self, path: Path, body: bool) -> None:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())  # the file being sent, not whatever the name holds by now
            if info.st_nlink != 1:  # a hard link made since the name was checked
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(info.st_size))
            self.send_header("Last-Modified", formatdate(info.st_mtime, usegmt=True))
            self._common_headers("sandbox; default-src 'none'" if content_type in ACTIVE_TYPES else None)
            if body:
                shutil.copyfileobj(handle, self.wfile, CHUNK)

    def _common_headers(self, policy: str | None) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")  # reports may hold personal data: no copies in caches
        if policy:
            self.send_header("Content-Security-Policy", policy)
        self.end_headers()


def resolve_served(root: Path, url_path: str) -> Path | None:
    """The file or directory a URL path names under `root` (resolved), or None when it is not served:
    missing, hidden, reached through a symbolic link, or neither a plain file nor a directory."""
    try:
        parts = [part for part in unquote(url_path, errors="strict").split("/") if part]
    except UnicodeDecodeError:
        return None
    if not all(map(served_name, parts)):
        return None
    candidate = root.joinpath(*parts)
    try:
        if candidate.resolve(strict=True) != candidate:  # a symbolic link on the way
            return None
        info = candidate.stat()
    except (OSError, RuntimeError):
        return None
    in_run = any(is_run(p) for p in (candidate, *candidate.parents) if p.is_relative_to(root))
    if candidate.is_file():
        return candidate if in_run and info.st_nlink == 1 else None
    if candidate.is_dir() and (candidate == root or in_run or leads_to_run(candidate)):
        return candidate
    return None


RUN_MARKER = layout.FILES["run_record"]  # what makes a directory a run directory
RUN_DEPTH = 3  # folders a run directory may sit below the root (--out inside the served directory)


def is_run(directory: Path) -> bool:
    return (directory / RUN_MARKER).is_file()


def leads_to_run(directory: Path, depth: int = RUN_DEPTH) -> bool:
    """A folder with a run directory at most `depth` levels below it (not through hidden names or links)."""
    if depth <= 0:
        return False
    try:
        children = [c for c in directory.iterdir() if served_name(c.name) and not c.is_symlink() and c.is_dir()]
    except OSError:
        return False
    return any(is_run(c) or leads_to_run(c, depth - 1) for c in children)


def served_name(name: str) -> bool:
    """A path component that may be served: not hidden ("..", ".prefect-results"), no backslash or NUL."""
    return not name.startswith(".") and "\\" not in name and "\x00" not in name


def listing(root: Path, directory: Path) -> str:
    """An HTML index of a served directory: the entries `resolve_served` would serve, names escaped."""
    entries = sorted(entry for entry in directory.iterdir()
                     if resolve_served(root, "/" + quote(entry.relative_to(root).as_posix())) is not None)
    title = html.escape("/" if directory == root else f"/{directory.relative_to(root).as_posix()}/")
    rows = "".join(f'<li><a href="{quote(e.name)}{"/" if e.is_dir() else ""}">{html.escape(e.name)}'
                   f'{"/" if e.is_dir() else ""}</a></li>' for e in entries)
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(REALM)}: {title}</title>"
            f"<h1>{title}</h1><ul>{rows}</ul>")


class ReportsServer(ThreadingHTTPServer):
    """Quiet about clients that go away mid-download (an aborted PDF download is not the server's error)."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)


def make_server(root: Path, host: str = "127.0.0.1", port: int = 4201, auth: str | None = None) -> ReportsServer:
    """A threaded server of `root`, bound but not yet serving (call `serve_forever`)."""
    root = user_path(root)
    if not root.is_dir():
        raise InputError(f"reports directory {root} does not exist or is not a directory")
    if auth is not None and ":" not in auth:
        raise InputError("the reports' auth string must be user:password")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and auth is None:
        raise InputError(f"serving reports on {host} (beyond this machine) needs an auth string: "
                         "set ACCOUNTABILITY_REPORTS_AUTH=user:password, or serve on 127.0.0.1")
    try:
        server = ReportsServer((host, port), partial(ReportsHandler, root=root, auth=auth))
    except OSError as exc:
        raise InputError(f"cannot serve on {host}:{port}: {exc.strerror}") from None
    server.daemon_threads = True
    return server


def serve_reports(root: Path, host: str, port: int, auth: str | None) -> None:
    """Serve until interrupted (SIGINT)."""
    server = make_server(root, host, port, auth)
    print(f"serving {user_path(root)} read-only at http://{host}:{server.server_address[1]}/"
          f"{' (basic auth)' if auth else ''}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
