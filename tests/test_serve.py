"""The reports server (tasks/run/serve.py, `accountability serve-reports`): a real HTTP server on a free port,
read with httpx. It serves run files read-only, behind basic auth when asked, and nothing outside the root."""

import base64
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tasks.run.errors import InputError
from tasks.run.serve import make_server, resolve_served

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def reports(tmp_path) -> Path:
    """A reports directory with one run (a PDF, a figure, a hostile name), Prefect's hidden results, and a
    secret next to it that a link points to."""
    root = tmp_path / "reports"
    run = root / "digits-2026-12-01 <b>&"
    (run / "figures").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "report.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(4096))
    (run / "figures" / "shap.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    (root / ".prefect-results").mkdir()
    (root / ".prefect-results" / "result.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("not yours")
    (run / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "outside").symlink_to(tmp_path)
    return root


def serving(root: Path, auth: str | None = None):
    server = make_server(root, port=0, auth=auth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def served(reports):
    server, url = serving(reports)
    yield url
    server.shutdown()
    server.server_close()


def test_a_report_is_served_as_a_pdf_with_its_exact_bytes(reports, served):
    pdf = httpx.get(f"{served}/digits-2026-12-01%20%3Cb%3E%26/report.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content == (reports / "digits-2026-12-01 <b>&" / "report.pdf").read_bytes()
    assert pdf.headers["x-content-type-options"] == "nosniff" and "content-security-policy" not in pdf.headers
    head = httpx.head(f"{served}/digits-2026-12-01%20%3Cb%3E%26/report.pdf")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == 4105


def test_listings_escape_names_and_hide_what_is_not_served(served):
    index = httpx.get(f"{served}/")
    assert index.status_code == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
    assert "digits-2026-12-01 &lt;b&gt;&amp;/" in index.text and "<b>" not in index.text.split("<h1>")[1]
    assert 'href="digits-2026-12-01%20%3Cb%3E%26/"' in index.text
    assert ".prefect-results" not in index.text and "outside" not in index.text
    run = httpx.get(f"{served}/digits-2026-12-01%20%3Cb%3E%26")
    assert run.status_code == 301 and run.headers["location"].endswith("%26/")
    listing = httpx.get(f"{served}/digits-2026-12-01%20%3Cb%3E%26/").text
    assert "report.pdf" in listing and "figures/" in listing and "escape.txt" not in listing


def test_hard_links_and_directories_that_are_not_runs_are_neither_served_nor_listed(reports, tmp_path):
    run = reports / "digits-2026-12-01 <b>&"
    os.link(tmp_path / "secret.txt", run / "linked.txt")  # a hard link to a file outside the root
    os.link(tmp_path / "secret.txt", reports / "passwd")
    (reports / "notes").mkdir()
    (reports / "notes" / "private.txt").write_text("a file outside any run")
    (reports / "monthly" / "2026-11-run").mkdir(parents=True)  # a folder that leads to a run is listed
    (reports / "monthly" / "2026-11-run" / "run.json").write_text("{}")
    (run / "50%.txt").write_text("a name a URL would decode")
    server, url = serving(reports)
    try:
        for path in ("/digits-2026-12-01%20%3Cb%3E%26/linked.txt", "/passwd", "/notes/", "/notes/private.txt"):
            assert httpx.get(url + path).status_code == 404, path
        index = httpx.get(f"{url}/").text
        assert "notes" not in index and "passwd" not in index and "monthly/" in index
        run_listing = httpx.get(f"{url}/digits-2026-12-01%20%3Cb%3E%26/").text
        assert "linked.txt" not in run_listing and "50%.txt" in run_listing
        assert "2026-11-run/" in httpx.get(f"{url}/monthly/").text
    finally:
        server.shutdown()
        server.server_close()


def test_an_aborted_download_prints_no_traceback(reports, capsys):
    import socket
    import struct
    import time

    (reports / "digits-2026-12-01 <b>&" / "big.bin").write_bytes(os.urandom(32 << 20))
    server, url = serving(reports)
    try:
        for _ in range(3):
            client = socket.create_connection(server.server_address)
            client.sendall(b"GET /digits-2026-12-01%20%3Cb%3E%26/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(1024)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not close
            client.close()
        time.sleep(1)
        assert httpx.get(f"{url}/").status_code == 200  # still serving
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/digits-2026-12-01%20%3Cb%3E%26/..%2F..%2Fsecret.txt",
    "/digits-2026-12-01%20%3Cb%3E%26/escape.txt", "/outside/secret.txt", "/.prefect-results/result.json",
    "/missing.pdf", "/%ff%fe", "/a%00b", "/..%5c..%5csecret.txt"])
def test_nothing_outside_the_root_or_hidden_is_served(reports, served, path):
    response = httpx.get(served + path)  # (a client may normalise the path: the function is asked as sent too)
    assert response.status_code == 404 and "not yours" not in response.text
    assert resolve_served(reports, path) is None


def test_only_reading_is_allowed(reports, served):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = httpx.request(method, f"{served}/digits-2026-12-01%20%3Cb%3E%26/report.pdf", content=b"x")
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
    assert (reports / "digits-2026-12-01 <b>&" / "report.pdf").read_bytes().startswith(b"%PDF-1.7\n")


def test_active_content_cannot_run_in_the_browser(served):
    svg = httpx.get(f"{served}/digits-2026-12-01%20%3Cb%3E%26/figures/shap.svg")
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.headers["content-security-policy"].startswith("sandbox")


def test_with_an_auth_string_every_request_needs_it(reports):
    server, url = serving(reports, auth="auditor:s3cret:with-colon")
    try:
        assert httpx.get(f"{url}/").status_code == 401
        refused = httpx.get(f"{url}/digits-2026-12-01%20%3Cb%3E%26/report.pdf", auth=("auditor", "wrong"))
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic realm=")
        assert refused.content == b""
        ok = httpx.get(f"{url}/digits-2026-12-01%20%3Cb%3E%26/report.pdf", auth=("auditor", "s3cret:with-colon"))
        assert ok.status_code == 200 and ok.content.startswith(b"%PDF")
        token = base64.b64encode(b"auditor:s3cret:with-colon").decode()
        assert httpx.head(f"{url}/", headers={"Authorization": f"Basic {token}"}).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_bad_settings_are_refused_in_one_line(reports, tmp_path):
    with pytest.raises(InputError, match="does not exist or is not a directory"):
        make_server(tmp_path / "nowhere", port=0)
    with pytest.raises(InputError, match="must be user:password"):
        make_server(reports, port=0, auth="no-colon")
    with pytest.raises(InputError, match=r"serving reports on 0\.0\.0\.0 \(beyond this machine\) needs an auth"):
        make_server(reports, host="0.0.0.0", port=0)
    server, url = serving(reports)
    try:
        port = url.rsplit(":", 1)[1]
        taken = subprocess.run([sys.executable, "-m", "flows.cli", "serve-reports", str(reports), "--port", port],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert taken.returncode == 2 and taken.stderr.count("\n") == 1
        assert taken.stderr.startswith(f"accountability: error: cannot serve on 127.0.0.1:{port}: ")
    finally:
        server.shutdown()
        server.server_close()
