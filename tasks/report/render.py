"""HTML to PDF with WeasyPrint, reading nothing but the run's own files.

Jinja's environment is built here, once, with autoescape on; the URL fetcher serves only
regular files inside the run directory and refuses every other URL (file, http, data...).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jinja2
from weasyprint import CSS, HTML, Attachment
from weasyprint.urls import URLFetcher, URLFetcherResponse

from tasks.run.artifacts import atomic_path

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"


def fixed(value: float, digits: int) -> str:
    """`value` with `digits` decimals, without the minus sign of a value that rounds to zero ("-0.0000")."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def template_environment() -> jinja2.Environment:
    """The one Jinja environment: templates from `templates/`, everything autoescaped."""
    if not TEMPLATES_DIR.is_dir():
        raise RuntimeError(f"templates directory {TEMPLATES_DIR} is missing (install the project in editable mode)")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fixed"] = fixed
    return env


class RunFilesFetcher(URLFetcher):
    """A WeasyPrint URL fetcher that serves only regular files under `root`.

    Every URL asked for is recorded in `requested`, every one refused in `refused`,
    so a test (or an auditor) can see what the renderer tried to read.
    """

    def __init__(self, root: Path):
        super().__init__(allowed_protocols={"file"}, allow_redirects=False)
        self.root = Path(root).resolve()
        self.requested: list[str] = []
        self.refused: list[str] = []

    def fetch(self, url: str, headers=None) -> URLFetcherResponse:
        self.requested.append(url)
        parts = urlsplit(url)
        path = Path(unquote(parts.path)).resolve() if parts.scheme == "file" and not parts.netloc else None
        if path is None or not path.is_relative_to(self.root) or not path.is_file():
            self.refused.append(url)
            raise ValueError(f"refused to fetch {url!r}: only files of the run directory are readable")
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return URLFetcherResponse(path.as_uri(), body=path.read_bytes(), headers={"Content-Type": mime})


PDF_VARIANT = "pdf/a-3b"  # archival PDF that may carry embedded files (ISO 19005-3, level B)


def render_pdf(template: str, context: dict, run_dir: Path, pdf_path: Path, stylesheet: str = "report.css",
               fetcher: RunFilesFetcher | None = None, attachments: dict[str, str] | None = None) -> Path:
    """Render `template` with `context` to a PDF/A-3b `pdf_path`, resolving relative URLs against `run_dir`.

    `attachments` maps run-relative paths to descriptions; those files are embedded in the PDF,
    fetched through the same fetcher as everything else.
    """
    env = template_environment()
    html = env.get_template(template).render(**context)
    fetcher = fetcher or RunFilesFetcher(run_dir)
    base_url = run_dir.resolve().as_uri() + "/"
    css = CSS(string=(TEMPLATES_DIR / stylesheet).read_text(), url_fetcher=fetcher, base_url=base_url)
    document = HTML(string=html, base_url=base_url, url_fetcher=fetcher)
    embedded = [Attachment(url=(run_dir / rel).resolve().as_uri(), url_fetcher=fetcher, name=Path(rel).name,
                           description=text, relationship="Supplement") for rel, text in (attachments or {}).items()]
    with atomic_path(pdf_path) as tmp:
        document.write_pdf(tmp, stylesheets=[css], attachments=embedded, pdf_variant=PDF_VARIANT)
    return pdf_path
