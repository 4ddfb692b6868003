"""An auditor's view of a run: PDF/A-3b metadata and attachments, and determinism for a seed."""

import json

import pytest
from pypdf import PdfReader

from tasks.run.artifacts import ATTACHMENTS, sha256_file
from tasks.deepshap.stage import explain_model
from tasks.steps.load import load_data
from tasks.run.provenance import environment
from tasks.report.build import render_report
from tasks.steps.train import train_model


def run_once(out, seed: int = 0) -> dict:
    loaded = load_data("breast-cancer", out, seed=seed, val_fraction=0.2)
    trained = train_model(loaded["train"]["path"], loaded["validation"]["path"], loaded["run_dir"], 2, 64, seed)
    explained = explain_model(trained["weights"]["path"], loaded["train"]["path"], loaded["validation"]["path"],
                              loaded["run_dir"], background=30, explain=6, seed=seed)
    return {"loaded": loaded, "trained": trained, "explained": explained}


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    run = run_once(tmp_path_factory.mktemp("out"))
    params = {"dataset": "breast-cancer", "epochs": 2, "background": 30, "explain": 6, "seed": 0}
    report = render_report(run["loaded"]["run_dir"], run["loaded"], run["trained"], run["explained"], params,
                           environment(), {"id": None})
    return run, report


def test_two_seeded_runs_give_identical_weights_and_shap_values(tmp_path, reported):
    first, _ = reported
    second = run_once(tmp_path)
    for step, key in (("trained", "weights"), ("trained", "metrics"), ("explained", "shap_values"),
                      ("explained", "explained"), ("explained", "predictions")):
        assert first[step][key]["sha256"] == second[step][key]["sha256"], key
    assert first["loaded"]["train"]["sha256"] == second["loaded"]["train"]["sha256"]


def test_the_pdf_is_pdf_a_3b_with_metadata_and_attachments(reported):
    run, report = reported
    reader = PdfReader(report["pdf"]["path"])
    xmp = reader.xmp_metadata.rdf_root.toxml()
    assert 'pdfaid:part="3"' in xmp and 'pdfaid:conformance="B"' in xmp
    assert "/OutputIntents" in reader.trailer["/Root"]  # the colour profile PDF/A requires
    info = reader.metadata
    assert info.title.startswith("Compliance report: breast-cancer") and info.author == "accountability"
    assert info.subject and "SR 11-7" in info["/Keywords"]
    run_dir = run["loaded"]["run_dir"]
    embedded = {name: data[0] for name, data in reader.attachments.items()}
    from pathlib import Path

    for rel in ATTACHMENTS:
        assert embedded[Path(rel).name] == (Path(run_dir) / rel).read_bytes(), rel
    listed = json.loads(embedded["artifacts.json"])["files"]
    assert listed["model/model.safetensors"]["sha256"] == sha256_file(Path(run_dir) / "model" / "model.safetensors")
    assert "report.pdf" not in listed
