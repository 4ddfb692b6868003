"""An auditor's view of a run: PDF/A-3b metadata and attachments, and determinism for a seed."""

import json

import pytest
from pypdf import PdfReader

from tasks.run import layout
from tasks.run.artifacts import sha256_file
from tests.conftest import run_report

PARAMETERS = {"dataset": "breast-cancer", "epochs": 2, "background": 30, "explain_rows": 6}


@pytest.fixture(scope="module")
def reported(prefect_server, tmp_path_factory):
    _, result = run_report(tmp_path_factory.mktemp("out"), **PARAMETERS)
    return result


def test_two_seeded_runs_give_identical_weights_and_shap_values(tmp_path, reported):
    _, again = run_report(tmp_path, **PARAMETERS)
    for key in ("train", "weights", "metrics", "shap_values", "explained", "predictions", "lime", "kernel_shap",
                "gradients"):
        first, second = layout.path(reported["run_dir"], key), layout.path(again["run_dir"], key)
        assert sha256_file(first) == sha256_file(second), key


def test_the_pdf_is_pdf_a_3b_with_metadata_and_attachments(reported):
    reader = PdfReader(reported["pdf"])
    xmp = reader.xmp_metadata.rdf_root.toxml()
    assert 'pdfaid:part="3"' in xmp and 'pdfaid:conformance="B"' in xmp
    assert "/OutputIntents" in reader.trailer["/Root"]  # the colour profile PDF/A requires
    info = reader.metadata
    assert info.title.startswith("Compliance report: breast-cancer") and info.author == "accountability"
    assert info.subject and "SR 11-7" in info["/Keywords"]
    run_dir = reported["run_dir"]
    embedded = {name: data[0] for name, data in reader.attachments.items()}
    for key in layout.ATTACHMENTS:
        assert embedded[layout.path(run_dir, key).name] == layout.path(run_dir, key).read_bytes(), key
    listed = json.loads(embedded["artifacts.json"])["files"]
    weights = layout.FILES["weights"]
    assert listed[weights]["sha256"] == sha256_file(layout.path(run_dir, "weights"))
    assert "report.pdf" not in listed
