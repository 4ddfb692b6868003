"""Checks as data: one list of Check records feeds the verdict, the table of checks, the findings register, the
manifest and the flow's summary; a check forced to fail shows in every one of them."""

import json

import pytest

from tasks.run import layout
from tasks.run.checks import Check, failed
from tests.conftest import run_report
from tests.test_flow import pdf_text


def check(value, threshold, passes_when="at most", details=()):
    return Check("x.y", "Method", "property", value, threshold, passes_when, "section", "It failed.", details)


def test_verdicts_follow_the_direction_of_the_threshold():
    assert check(0.1, 0.1).passed and not check(0.11, 0.1).passed
    assert check(0.5, 0.5, "at least").passed and not check(0.49, 0.5, "at least").passed
    with pytest.raises(ValueError, match="passes_when"):
        check(1, 1, "about").passed


def test_failed_lists_the_checks_that_failed_and_a_check_survives_its_json():
    checks = [check(1, 0), check(0, 1), check(2, 0, details=("Weak slice: a.", "Weak slice: b."))]
    assert failed(checks) == [checks[0], checks[2]]
    assert Check.from_json(json.loads(json.dumps(checks[2].to_json()))).to_json() == checks[2].to_json()


@pytest.fixture(scope="module")
def failing_run(prefect_server, tmp_path_factory):
    """A breast-cancer run whose Integrated Gradients must meet an impossible completeness bound."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("tasks.techniques.gradients.IG_THRESHOLD", 1e-300)
    try:
        _, result = run_report(tmp_path_factory.mktemp("failing"), dataset="breast-cancer", epochs=1, background=20,
                               explain_rows=4)
    finally:
        monkeypatch.undo()
    return result


def test_a_failed_check_shows_in_the_verdict_the_table_the_register_and_the_manifest(failing_run):
    text = " ".join(pdf_text(failing_run["pdf"]).split())
    start = text.index("1. Purpose and use Summary")  # the section (not its line on the contents page)
    summary = text[start:text.index("Model card", start)]
    assert f"Verdict: {failing_run['verdict']}" in summary and "minor finding(s)" in summary
    table = text[text.index("Every check of this run"):text.index("Additivity DeepSHAP values")]
    assert "Integrated Gradients completeness (largest error)" in table and "at most 1e-300 minor failed" in table
    start = text.index("5. Findings register and limitations Every check")  # the section, not the contents page
    register = text[start:text.index("6. Monitoring and changes", start)]
    assert "its maps do not account for the whole change in output" in register
    assert "integrated-gradients.completeness" in register.replace(" ", "")
    manifest = json.loads(layout.path(failing_run["run_dir"], "manifest").read_text())
    (ig,) = [c for c in manifest["checks"] if c["id"] == "integrated-gradients.completeness"]
    assert ig["passed"] is False and ig["threshold"] == 1e-300
    assert "Integrated Gradients: completeness (largest error)" in failing_run["failed"]
    assert failing_run["checks_failed"] == len([c for c in manifest["checks"] if not c["passed"]]) >= 1
