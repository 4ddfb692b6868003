"""The whole flow, end to end, on a real (temporary) Prefect server."""

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pypdf import PdfReader

from tasks.run import layout
from tasks.run.artifacts import current_umask, sha256_file
from tests.conftest import run_report, subflow_run, task_runs

SECTIONS = ("Model validation report", "1. Purpose and use", "Summary", "Model card", "2. Design and data",
            "Model and training", "Weights and biases", "3. Performance and testing", "Validation metrics",
            "Sliced analysis", "4. Explanations and their quality", "Permutation feature importance",
            "Global SHAP importance", "Explanations of individual decisions: DeepSHAP", "Gradient attribution",
            "Model-agnostic SHAP (Kernel SHAP)", "LIME", "The checks of this run", "Contents", "Additivity",
            "Randomisation sanity check", "Stability", "Method agreement", "5. Findings register and limitations",
            "Performance floors", "Data quality",
            "6. Monitoring and changes", "7. Reproducibility", "Wall time per step", "Where the SHAP values were computed",
            "Calibration", "Expected calibration error", "Robustness to perturbations", "Challenger model",
            "Fairness across protected groups", "Revalidation triggers",
            "Appendix: traceability to regulatory clauses", "What the owner documents", "Sign-off")
TASKS = ["calibration", "challenger", "compare", "data-quality", "deepshap", "fairness", "faithfulness", "floors",
         "gradients", "kernel-shap", "lime", "load", "method-agreement", "model-card", "permutation-importance", "report",
         "robustness", "slices", "train", "weights"]


def pdf_text(path) -> str:
    """The PDF's text with every run of whitespace (line breaks included) as one space."""
    return " ".join(" ".join(page.extract_text() for page in PdfReader(path).pages).split())


@pytest.fixture(scope="module")
def flow_result(digits_run):
    return digits_run


def breast_cancer_with_a_protected_column(root: Path) -> str:
    """breast-cancer as a CSV with text labels and a synthetic protected column, "site", tied to the label (most
    malignant rows from site A): a model that finds malignancy selects site A far more often. Its dataset spec."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    malignant = data.target == 0
    site = np.where(rng.random(len(malignant)) < np.where(malignant, 0.85, 0.25), "A", "B")
    frame = pd.DataFrame(data.data, columns=data.feature_names)
    frame["diagnosis"], frame["site"] = np.where(malignant, "malignant", "benign"), site
    path = root / "breast_cancer_sites.csv"
    frame.to_csv(path, index=False)
    return f"csv:{path}"


@pytest.fixture(scope="module")
def table_flow_result(prefect_server, tmp_path_factory):
    spec = breast_cancer_with_a_protected_column(tmp_path_factory.mktemp("table-data"))
    return run_report(tmp_path_factory.mktemp("table-reports"), dataset=spec, label="diagnosis", protected=["site"],
                      epochs=3, background=40, explain_rows=6)


@pytest.mark.slow
@pytest.mark.slow
def test_the_report_opens_with_its_verdict_then_a_contents_page_and_keeps_every_hash_whole(flow_result):
    """Page 1 the verdict, page 2 a printed contents with each section's page; every SHA-256 of the files the PDF
    lists is in its text whole (not clipped, not wrapped)."""
    _, result = flow_result
    pages = [" ".join(page.extract_text().split()) for page in PdfReader(result["pdf"]).pages]
    assert pages[0].startswith("Model validation report") and result["verdict"] in pages[0]
    contents = pages[1]
    assert contents.startswith("Contents")
    for heading in ("1. Purpose and use", "3. Performance and testing", "5. Findings register and limitations",
                    "7. Reproducibility", "Appendix: traceability to regulatory clauses", "Sign-off"):
        found = re.search(re.escape(heading) + r"[^.]*?\.{3,} ?(\d+)", contents)
        assert found, heading
        page = int(found.group(1))
        assert heading.split(":")[0] in pages[page - 1], (heading, page)  # the page it names holds the heading
    for number, page in enumerate(PdfReader(result["pdf"]).pages, 1):  # no near-empty page
        assert len(page.extract_text().split()) >= 30 or page.images, f"page {number} has no figure and few words"
    text = "".join(pages).replace(" ", "")
    listed = json.loads(layout.path(result["run_dir"], "artifacts").read_text())["files"]
    assert [name for name, info in listed.items() if info["sha256"] not in text] == []


def test_flow_writes_a_complete_run_directory(flow_result):
    _, result = flow_result
    run_dir = Path(result["run_dir"])
    text = pdf_text(result["pdf"])
    for section in SECTIONS + ("Misclassified images", "image region or colour channel", "Channel",
                               "Deletion and insertion", "nothing to compare with"):
        assert section in text, section
    assert "Partial dependence" not in text  # a table technique
    assert "after 1 epoch on" in text and "None/flow-runs" not in text  # (was "after 1 epochs")

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "report.pdf" in manifest["files"] and "model/model.safetensors" in manifest["files"]
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()
               and not any(part.startswith(".") for part in p.relative_to(run_dir).parts)} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk  # but the hidden .prefect-results/ cache (see tasks/resume.py)
    assert list((run_dir / ".prefect-results").iterdir())
    for rel, info in manifest["files"].items():
        assert sha256_file(run_dir / rel) == info["sha256"], rel
    readable = 0o666 & ~current_umask()  # the umask's mode, not mkstemp's 0600 (colleagues read the report)
    assert {p.relative_to(run_dir).as_posix(): oct(p.stat().st_mode & 0o777) for p in run_dir.rglob("*")
            if p.is_file() and p.stat().st_mode & 0o777 != readable} == {}
    from tasks.run.verify import verify_run

    assert verify_run(run_dir) == []
    assert manifest["flow_run"]["id"] and manifest["parameters"]["epochs"] == 1
    assert manifest["layout"] == layout.VERSION
    assert set(manifest["step_seconds"]) >= {"train", "deepshap", "lime", "report"}
    assert {c["id"] for c in manifest["checks"]} >= {"deepshap.additivity", "integrated-gradients.completeness",
                                                     "deepshap.randomisation", "deepshap.deletion"}

    assert pq.read_schema(layout.path(run_dir, "train")).field("inputs").type == pa.list_(pa.float32(), 1024)
    assert pq.read_schema(layout.path(run_dir, "shap_values")).names == [
        "position", "source_id", "class_index", "values"]
    assert pq.read_schema(layout.path(run_dir, "metrics")).names == [
        "epoch", "split", "loss", "accuracy", "precision_macro", "recall_macro", "f1_macro"]
    assert result["max_additivity_error"] < 1e-5


@pytest.mark.slow
def test_deep_shap_beats_random_order_in_deletion_and_insertion(flow_result):
    """Faithfulness on the digits model (tasks/techniques/faithfulness.py): removing pixels in DeepSHAP's order
    drops the prediction faster than in a random order, and adding them raises it faster."""
    from tasks.techniques.faithfulness import curve_areas, deep_shap_explainer, deletion_insertion
    from tests.test_faithfulness import model_and_rows

    model, background, rows, targets = model_and_rows(flow_result[1]["run_dir"])
    maps = deep_shap_explainer(background)(model, rows, targets)
    curves = deletion_insertion(lambda x: model.predict_proba(x), rows, maps, targets, background.mean(0), seed=0)
    assert set(curves["fraction"]) == {i / 16 for i in range(17)}
    full = curves[(curves["curve"] == "deletion") & (curves["fraction"] == 0)]
    np.testing.assert_allclose(full["probability"], np.repeat(model.predict_proba(rows)[np.arange(8), targets], 4))
    areas = curve_areas(curves)
    assert areas.loc["deletion", "attribution"] < areas.loc["deletion", "random"]
    assert areas.loc["insertion", "attribution"] > areas.loc["insertion", "random"]



@pytest.mark.slow
def test_the_server_recorded_the_task_runs_and_the_artifacts(flow_result):
    state, _ = flow_result
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.run.progress import RUN_PROGRESS_KEY

    flow_run_id = state.state_details.flow_run_id

    explain_run = subflow_run(flow_run_id, "deepshap")

    async def query():
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)

            async def artifacts(run_id):
                return await client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

            return flow_run, await artifacts(flow_run.id), await artifacts(explain_run.id)

    flow_run, artifacts, explain_artifacts = asyncio.run(query())
    # One progress artifact, on the run the user watches, moved through every stage (the SHAP subflow's included)
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert progress.key == RUN_PROGRESS_KEY and progress.data == 100.0
    assert re.fullmatch(r"(\d+)/\1 done: [^,]+, 100%", progress.description), progress.description
    assert not [a for a in explain_artifacts if a.type == "progress"]
    tasks = task_runs(flow_run_id)
    explain_tasks = task_runs(explain_run.id)
    assert flow_run.state.is_completed() and explain_run.state.is_completed()
    assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == TASKS  # "deepshap": the SHAP stage's subflow
    assert all(t.state.is_completed() for t in tasks + explain_tasks)
    shards = [t for t in explain_tasks if t.name.startswith("deepshap-shard")]
    assert len(shards) == 1 and len(explain_tasks) == 3  # 8 images, 8 per shard: plan, one shard, merge
    assert "gpu" in shards[0].tags
    assert {a.key for a in artifacts} >= {"compliance-summary", "validation-metrics", "report-pdf", "run-seal"}


@pytest.mark.slow
def test_a_report_edited_and_re_manifested_passes_verify_but_not_its_seal(flow_result, tmp_path):
    """Someone who can write the run's files edits the PDF's pages (its attachments kept) and rewrites the
    manifest: the files agree with each other again, and only the seal the flow run left on the server tells."""
    import shutil

    from pypdf import PdfWriter

    from tasks.run.artifacts import write_manifest
    from tasks.run.verify import seal_differences, verify_run

    _, result = flow_result
    run_dir = Path(shutil.copytree(result["run_dir"], tmp_path / Path(result["run_dir"]).name))
    assert verify_run(run_dir) == [] and seal_differences(run_dir) == []  # a copy of a sealed run is sealed
    pdf = layout.path(run_dir, "report")
    writer = PdfWriter(clone_from=pdf)
    writer.add_metadata({"/Title": "all checks passed"})  # (a page's text edited the same way)
    with open(pdf, "wb") as handle:
        writer.write(handle)
    manifest = json.loads(layout.path(run_dir, "manifest").read_text())

    def manifest_rewritten() -> None:  # as the run wrote it, with the files as they are now
        write_manifest(run_dir, {k: v for k, v in manifest.items() if k not in ("run_dir", "layout", "files")})

    manifest_rewritten()
    assert verify_run(run_dir) == []  # what the files alone can say
    problems = seal_differences(run_dir)
    assert sorted(p.split(" (")[0] for p in problems) == ["changed since the run sealed it: manifest.json",
                                                         "changed since the run sealed it: report.pdf"]
    assert all(manifest["flow_run"]["id"] in p for p in problems)

    # The manifest pointed at a flow run with no seal; a second seal added through the API for the real one.
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    from tasks.run.artifacts import write_json_atomic

    elsewhere = str(uuid.uuid4())
    write_json_atomic(layout.path(run_dir, "manifest"), {**manifest, "flow_run": {"id": elsewhere}})
    assert seal_differences(run_dir) == [f"the Prefect server has no seal for flow run {elsewhere}, which "
                                         "manifest.json names"]
    forged = [{"run": run_dir.name, "file": f, "sha256": sha256_file(run_dir / f)} for f in ("report.pdf",)]

    async def add_seal():
        async with get_client() as client:
            await client.create_artifact(ArtifactCreate(key="run-seal", type="table", data=json.dumps(forged),
                                                        flow_run_id=manifest["flow_run"]["id"]))

    asyncio.run(add_seal())
    manifest_rewritten()
    assert seal_differences(run_dir)[0].startswith(f"the Prefect server holds 2 seals for flow run "
                                                   f"{manifest['flow_run']['id']}: a run makes one")
    # Every seal deleted through the API and one re-created with the edited files' hashes: made after the run ended
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    forged = [{"run": run_dir.name, "file": f, "sha256": sha256_file(run_dir / f)} for f in ("report.pdf",
                                                                                            "manifest.json")]

    async def replace_seals():
        async with get_client() as client:
            for artifact in await client.read_artifacts(artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["run-seal"]))):
                if str(artifact.flow_run_id) == manifest["flow_run"]["id"]:
                    await client.delete_artifact(artifact.id)
            await client.create_artifact(ArtifactCreate(key="run-seal", type="table", data=json.dumps(forged),
                                                        flow_run_id=manifest["flow_run"]["id"]))

    asyncio.run(replace_seals())
    (problem,) = seal_differences(run_dir)
    assert "and the flow run" in problem and "a seal is made by the run itself before it ends" in problem


@pytest.mark.slow
def test_a_breast_cancer_report_has_every_technique_for_tables(table_flow_result):
    state, result = table_flow_result
    from sklearn.datasets import load_breast_cancer

    assert state.is_completed()
    assert result["failed"] and state.name == "Completed"  # a custom name would drop it from the UI's run lists
    assert state.message.startswith(f"{result['verdict']}. {result['checks_failed']} of {result['n_checks']} checks "
                                    "failed: ")
    assert all(name in state.message for name in result["failed"])
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert "findings" in flow_run.tags and flow_run.state.name == "Completed"
    assert f"verdict: {result['verdict'].split(':')[0].lower()}" in flow_run.tags
    assert flow_run.name == f"breast_cancer_sites-{flow_run.expected_start_time:%Y-%m-%d}"
    text = pdf_text(result["pdf"])
    for section in SECTIONS + ("Misclassified rows", "Partial dependence and ICE", "Features (training split)",
                               "Reason codes for '", "Reference MLP", "Demographic parity difference", "by site",
                               "the positive class 'malignant'"):
        assert section in text, section
    assert "mean radius" in text and "image region" not in text  # feature names flow into the report
    # Reason codes explain the decision taken: the predicted class, negative predictions included
    flat = " ".join(text.split())
    decisions = re.findall(r"predicted (\w+) \([\d.]+%\)[^;]*; additivity error \S+ Reason codes for '(\w+)'", flat)
    assert decisions and all(predicted == explained for predicted, explained in decisions), decisions
    assert "Base-rate ratio (labels)" in text and "Equal opportunity difference" in text
    assert "Gaussian noise" in text and "replaced by its training mean" in text
    assert "Protected attributes (section 3, fairness): site; not among the model's features" in text
    checks = {c["id"]: c for c in json.loads((Path(result["run_dir"]) / "manifest.json").read_text())["checks"]}
    assert set(checks) >= {"calibration.ece", "robustness.min_strength", "challenger.margin",
                           "fairness.selection_rate_ratio", "fairness.equalized_odds"}
    assert not checks["fairness.selection_rate_ratio"]["passed"]  # site A is selected far more often
    start = text.index("5. Findings register and limitations Every check")  # the section, not the contents page
    limitations = text[start:text.index("6. Monitoring and changes", start)]
    assert "fail the four-fifths rule" in limitations or "by site, the selection rate of 'malignant'" in limitations
    appendix = text[text.index("Appendix: traceability to regulatory clauses Each section"):]
    for check_id, check in checks.items():  # (table cells wrap long ids at their hyphens); each with its severity
        assert f"{check_id}({check['severity']})" in appendix.replace(" ", "").replace("\n", ""), check_id
    assert "Annex IV 2(g) potentially discriminatory impacts" in appendix
    assert "to be provided by the owner" in appendix
    run_dir = Path(result["run_dir"])
    for key in ("permutation_importance", "partial_dependence", "slices", "agreement", "kernel_shap", "lime",
                "gradients", "calibration", "robustness", "robustness_missing", "fairness", "fairness_groups",
                "challenger", "challenger_weights", "card_record"):
        assert layout.path(run_dir, key).is_file(), key
    importance = pq.read_table(layout.path(run_dir, "permutation_importance")).to_pandas()
    assert sorted(importance["name"]) == sorted(load_breast_cancer().feature_names)
    from tasks.run.verify import verify_run

    assert verify_run(run_dir) == []


@pytest.mark.slow
def test_the_second_run_compares_with_the_first_and_shows_the_model_card(table_flow_result, tmp_path):
    _, first = table_flow_result
    out = Path(first["run_dir"]).parent
    card = tmp_path / "card.yaml"
    card.write_text('owner: "<link rel=stylesheet href=file:///etc/passwd> risk team"\nrisk_tier: high\n')
    parameters = json.loads(layout.path(first["run_dir"], "run_record").read_text())
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tests.test_supplied import sklearn_onnx

    data = load_breast_cancer()  # the owner's challenger: a scikit-learn pipeline exported to ONNX
    challenger = sklearn_onnx(make_pipeline(StandardScaler(), LogisticRegression()), data.data.astype("float32"),
                              (data.target == 0).astype(int), tmp_path / "challenger.onnx")  # 1: malignant
    _, second = run_report(out, dataset=parameters["dataset"], label="diagnosis", protected=["site"], epochs=1,
                           background=40, explain_rows=6, model_card=str(card), challenger=str(challenger))
    text = pdf_text(second["pdf"])
    assert f"Compared with the previous run {Path(first['run_dir']).name}" in text
    before, now = first["validation_accuracy"], second["validation_accuracy"]
    assert before != now  # the test's change: 3 epochs, then 1
    assert f"accuracy {before:.3f} {now:.3f} {now - before:+.3f}" in text
    assert "<link rel=stylesheet href=file:///etc/passwd> risk team" in text and "Risk tier high" in text
    assert "Intended use not provided" in text
    assert "nothing to compare with" in pdf_text(first["pdf"])
    assert "Outcomes over time" in text and "Outcomes over time" not in pdf_text(first["pdf"])
    assert "The challenger named by the owner" in text and "challenger.onnx, onnx" in text
    assert layout.path(second["run_dir"], "challenger_model").read_bytes() == challenger.read_bytes()
    owner = second["results"]["challenger"]
    assert owner["owner_supplied"] and owner["metrics"][1]["accuracy"] > 0.9  # classes: benign, malignant
    outcomes = pq.read_table(layout.path(second["run_dir"], "outcomes")).to_pandas()
    assert list(outcomes["run"]) == [Path(first["run_dir"]).name, Path(second["run_dir"]).name]
    assert outcomes["accuracy"].round(6).tolist() == [round(before, 6), round(now, 6)]
    summary = json.loads(layout.path(second["run_dir"], "comparison_summary").read_text())
    assert summary["previous"] == Path(first["run_dir"]).name and summary["shared_rows"] == 114


@pytest.mark.slow
def test_a_small_table_runs_with_the_defaults_cut_to_its_splits(prefect_server, tmp_path):
    """60 rows: the default background (200) and explained rows (32) cannot fit; they adapt, and the report's
    parameters say what was used and why; permutation importance shuffles more often on 12 validation rows.
    (A number the user gives that cannot fit is refused: test_cli.)"""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame = pd.concat([frame[frame.target == 0].head(30), frame[frame.target == 1].head(30)])
    frame.to_csv(tmp_path / "small.csv", index=False)
    state, result = run_report(tmp_path / "reports", dataset=f"csv:{tmp_path / 'small.csv'}", label="target", epochs=1)
    assert state.is_completed()
    manifest = json.loads((Path(result["run_dir"]) / "manifest.json").read_text())
    assert (manifest["parameters"]["background"], manifest["parameters"]["explain_rows"]) == (48, 12)
    text = pdf_text(result["pdf"])
    assert "48 (default 200, cut to the training split's 48 rows)" in text
    assert "12 (default 32, cut to the validation split's 12 rows)" in text
    assert "50 shuffles each (default 10, raised for 12 validation rows (about 2,000 shuffled rows per group" in text
    importance = pd.read_parquet(layout.path(result["run_dir"], "permutation_importance"))
    assert set(importance["n_repeats"]) == {50}


def test_a_bad_parameter_fails_the_run_in_one_line_naming_it(prefect_server, tmp_path):
    """What a deployed run shows in the UI: a Failed state whose message names the parameter, no traceback in
    the run's log; a caller in Python gets the InputError itself."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from tasks.run.errors import InputError

    with pytest.raises(InputError, match="--epochs must be a positive integer, got 0"):
        run_report(tmp_path / "reports", epochs=0)
    from flows.compliance_report import compliance_report

    state = compliance_report(out=str(tmp_path / "reports"), shap_engine="lime", return_state=True)
    assert state.is_failed() and state.message == "bad parameter: --shap-engine must be one of fast, shap, got 'lime'"

    async def logs():
        from prefect.logging.handlers import APILogHandler

        await APILogHandler.aflush()  # the run's log lines are sent in batches
        async with get_client() as client:
            entries = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
                any_=[state.state_details.flow_run_id])))
            return [entry.message for entry in entries]

    messages = asyncio.run(logs())
    assert messages and not any("Traceback" in m for m in messages)
    assert not (tmp_path / "reports").exists()  # nothing was started


def test_the_report_link_points_under_the_published_reports_address(tmp_path, monkeypatch):
    from flows.compliance_report import report_link
    from flows.preflight import reports_url
    from tasks.run.errors import InputError

    pdf = tmp_path / "20261201T060000Z-digits-0a1b2c3d" / "report.pdf"
    assert report_link(pdf, None) == pdf.resolve().as_uri()
    assert report_link(pdf, "https://reports.bank.example/mrm/") == \
        "https://reports.bank.example/mrm/20261201T060000Z-digits-0a1b2c3d/report.pdf"
    odd = tmp_path / "run #1?" / "report.pdf"
    assert report_link(odd, "http://127.0.0.1:4280").endswith("/run%20%231%3F/report.pdf")
    # The published directory is ACCOUNTABILITY_REPORTS: a run under a folder of it keeps that folder in its
    # link; a run elsewhere is not served there, and links to its file.
    nested = tmp_path / "on demand" / "20261201T060000Z-digits-0a1b2c3d" / "report.pdf"
    assert report_link(nested, "http://127.0.0.1:4201", tmp_path) == \
        "http://127.0.0.1:4201/on%20demand/20261201T060000Z-digits-0a1b2c3d/report.pdf"
    assert report_link(pdf, "http://127.0.0.1:4201", tmp_path / "on demand") == pdf.resolve().as_uri()
    monkeypatch.setenv("ACCOUNTABILITY_REPORTS_URL", "javascript:alert(1)")  # refused before a run starts
    with pytest.raises(InputError, match="ACCOUNTABILITY_REPORTS_URL must be an http:// or https:// address"):
        reports_url()
