"""The `compliance_report` flow: load -> train -> SHAP stage -> the registry's techniques -> report.

Thin wiring only. The steps are plain functions in `tasks/`; they hand each other paths and SHA-256
hashes of Parquet and safetensors files, never pickled objects. The techniques run after the SHAP
stage are the technique registry's (tasks/techniques/registry.py), in its run order; the SHAP stage
is a flow of its own (flows/deepshap.py), run in-process or on the `deepshap/gpu` deployment.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from urllib.parse import quote

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from flows.deepshap import deepshap_flow
from flows.preflight import preflight, published_reports, reports_url
from flows.steps import WALL_SECONDS, StepFailed, resumable, step, timings
from tasks.deepshap.stage import stage_outputs
from tasks.report.build import render_report
from tasks.run import layout
from tasks.run.config import RunConfig, run_name
from tasks.run.errors import InputError
from tasks.run.history import earlier_runs, previous_run
from tasks.run.progress import RunProgress
from tasks.run.provenance import environment
from tasks.run.resume import record_run
from tasks.run.verify import SEAL_KEY
from tasks.steps.compare import compare_runs
from tasks.steps.load import load_data
from tasks.steps.model_card import store_model_card
from tasks.steps.train import train_model
from tasks.steps.supplied import supplied_model
from tasks.techniques.registry import applicable, model_result, run_order, unavailable

load_step = step(load_data, "load")
train_step = step(train_model, "train")
model_step = step(supplied_model, "model")
model_card_step = step(store_model_card, "model-card")
compare_step = step(compare_runs, "compare")
report_step = step(render_report, "report")


class _BadParameterNotUnexpected(logging.Filter):
    """A deployed run with a bad parameter ends Failed with one line ("bad parameter: ..."); Prefect's process
    runner then logs every failed run's exception as "Engine execution exited with unexpected exception" with its
    traceback, which for the product's own refusal is neither unexpected nor useful in the run's Logs tab."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, InputError) and record.getMessage().startswith("Engine execution exited"))


logging.getLogger("prefect.flow_runs").addFilter(_BadParameterNotUnexpected())  # the runner's flow-run logger
FINDINGS_TAG = "findings"  # a run whose report has failed checks; its verdict is a tag too (verdict_tag)


def flow_run_name() -> str:
    """`run_name` of this run's parameters and the day it was scheduled for (a schedule's run keeps its
    month's date however late a worker picks it up)."""
    parameters = flow_run.parameters
    when = flow_run.scheduled_start_time
    return run_name(str(parameters.get("dataset", RunConfig.dataset)), parameters.get("model"),
                    when.strftime("%Y-%m-%d") if when else time.strftime("%Y-%m-%d", time.gmtime()))


@flow(name="compliance_report", log_prints=True, flow_run_name=flow_run_name)
def compliance_report(
    dataset: str = RunConfig.dataset,
    label: str | None = None,
    model: str | None = None,
    outputs: str | None = None,
    epochs: int = RunConfig.epochs,
    background: int | None = RunConfig.background,
    explain_rows: int | None = RunConfig.explain_rows,
    seed: int = RunConfig.seed,
    out: str = str(RunConfig.out),
    shap_engine: str = RunConfig.shap_engine,
    model_card: str | None = None,
    compare: str | None = None,
    resume: str | None = None,
    shard_size: int | None = RunConfig.shard_size,
    protected: list[str] | None = None,
    metadata: str | None = None,
    keep_protected: bool = False,
    positive_class: str | None = None,
    challenger: str | None = None,
    shap_deployment: str | None = None,
    dask_address: str | None = None,
    dask_workers: int = 0,
) -> dict | State:
    """Train the reference model, or validate the user's `model` file, explain it and render a PDF compliance
    report into a new run directory.

    `resume` finishes an unfinished run directory instead (its finished steps come back Cached);
    `shap_deployment` (e.g. "deepshap/gpu") sends the SHAP stage to that deployment's workers;
    `dask_address` / `dask_workers` spread its shards over Dask workers (see flows/deepshap.py).
    """
    try:
        config = preflight(RunConfig(dataset=dataset, label=label, model=model, outputs=outputs, epochs=epochs,
                                     background=background, explain_rows=explain_rows, seed=seed, out=Path(out),
                                     shap_engine=shap_engine, model_card=model_card, compare=compare, resume=resume,
                                     shard_size=shard_size, protected=tuple(protected or ()), metadata=metadata,
                                     keep_protected=keep_protected, positive_class=positive_class,
                                     challenger=challenger),
                           dask_address, dask_workers)
    except InputError as exc:  # one line in the UI, no traceback: a deployed run's parameters are checked here
        return Failed(message=f"bad parameter: {exc}", data=exc)  # (a caller in Python gets the InputError)
    progress = RunProgress()  # one artifact on this run, moving through the stages below
    with progress.stage("load data"):
        loaded = load_step(config.dataset, config.out, config.seed, config.val_fraction, config.background,
                           config.explain_rows, config.label, config.resume, config.model, config.outputs,
                           config.protected, config.metadata, config.keep_protected, config.positive_class,
                           config.challenger)
    run_dir = loaded["run_dir"]
    record_run(run_dir, {k: v for k, v in config.to_json().items() if k != "resume"})
    techniques = run_order(applicable(loaded["modality"]))
    progress.count = 6 + len(techniques)  # load, model, model card, SHAP, the techniques, compare, report
    results = {"load": loaded}
    splits = str(layout.path(run_dir, "train")), str(layout.path(run_dir, "validation"))
    if config.model is not None:
        with progress.stage("validate the model"):
            results["model"] = resumable(model_step, run_dir)(str(config.model), *splits, run_dir,
                                                              loaded["model"]["outputs"],
                                                              loaded["model"]["outputs_declared"],
                                                              loaded["model"].get("sha256"))
    else:
        with progress.stage("train"):
            results["train"] = resumable(train_step, run_dir)(*splits, run_dir, config.epochs, config.batch_size,
                                                              config.seed)
    sizes = loaded["sizes"]  # the defaults cut to a small dataset's splits
    stage_parameters = {"run_dir": run_dir, "background": sizes["background"], "rows": sizes["explain_rows"],
                        "seed": config.seed, "engine": config.shap_engine, "shard_size": config.shard_size,
                        "dask_address": dask_address, "dask_workers": dask_workers}
    with progress.stage("model card"):
        results["model-card"] = resumable(model_card_step, run_dir)(config.model_card, run_dir)
    started = time.perf_counter()
    with progress.stage("SHAP") as shap_stage:  # a deployed SHAP stage moves this run's artifact too
        stage_parameters["run_stage"] = shap_stage.to_json() if shap_stage else None
        results["deepshap"] = (shap_on_deployment(shap_deployment, stage_parameters) if shap_deployment
                               else deepshap_flow(**stage_parameters))
    results["deepshap"][WALL_SECONDS] = round(time.perf_counter() - started, 3)
    capabilities = json.loads(layout.path(run_dir, "model").read_text())["capabilities"]
    for technique in techniques:
        with progress.stage(technique.title):
            if reason := unavailable(technique, capabilities, results["model-card"]["materiality"]):
                results[technique.name] = {"skipped": reason}
                continue
            technique_step = resumable(step(technique.step, technique.name, tags=list(technique.tags)), run_dir)
            results[technique.name] = technique_step(run_dir, layout.paths(run_dir, technique.reads), config.seed)
    previous = config.compare or previous_run(config.out, config.dataset, Path(run_dir))
    with progress.stage("compare with the last run"):
        results["compare"] = resumable(compare_step, run_dir)(run_dir, previous)
    results["history"] = [str(p) for p in earlier_runs(config.out, config.dataset, Path(run_dir))]
    url = flow_run.get_flow_run_ui_url()
    run_info = {"id": flow_run.get_id(), "name": flow_run.get_name(),
                "url": url if url and not url.startswith("None") else "none (Prefect's ephemeral server has no UI)"}
    parameters = {**config.to_json(), "background": sizes["background"], "explain_rows": sizes["explain_rows"],
                  "chosen": sizes["why"]}
    with progress.stage("report"):
        report = resumable(report_step, run_dir)(run_dir, results, parameters, environment(), run_info,
                                                 timings(results))
    publish_artifacts(run_dir, results, report)
    result = {"run_dir": run_dir, "pdf": report["files"]["report"]["path"],
              "manifest": report["files"]["manifest"]["path"],
              "validation_accuracy": model_result(results)["final_validation"]["accuracy"],
              "max_additivity_error": results["deepshap"]["max_additivity_error"],
              "checks_failed": report["checks_failed"], "n_checks": report["n_checks"], "failed": report["failed"],
              "limitations": report["limitations"], "verdict": report["verdict"]["verdict"], "results": results}
    progress.done(f"done: {report['verdict']['verdict']}")
    return completed_with_verdict(result)


def verdict_tag(verdict: str) -> str:
    """The verdict as a flow run tag: "verdict: not fit for use"."""
    return "verdict: " + verdict.split(":")[0].lower()


def completed_with_verdict(result: dict) -> State:
    """The run ends Completed (the report is made), its message the verdict and the failed checks, tagged with the
    verdict and, where checks failed, `findings`. The state keeps Prefect's own name: the UI's run lists (a
    deployment's Runs tab among them) leave out states with custom names (PrefectHQ/prefect#12006)."""
    from prefect.client.orchestration import get_client

    tags = {*flow_run.tags, verdict_tag(result["verdict"]), *([FINDINGS_TAG] if result["failed"] else [])}
    with get_client(sync_client=True) as client:  # (the run's own tags are in its context: no read)
        client.update_flow_run(flow_run.get_id(), tags=sorted(tags))
    failed = (f" {result['checks_failed']} of {result['n_checks']} checks failed: {'; '.join(result['failed'])}."
              if result["failed"] else f" All {result['n_checks']} checks passed or are listed as not assessable.")
    return Completed(message=f"{result['verdict']}.{failed} The findings register is in section 5", data=result)


def shap_on_deployment(name: str, parameters: dict) -> dict:
    """Run the SHAP stage (flows/deepshap.py) as the deployment `name`, e.g. on the `gpu` work pool; wait for it."""
    from prefect.deployments import run_deployment

    child = run_deployment(name, parameters=parameters)
    if not child.state.is_completed():
        raise StepFailed(f"deepshap step failed: deployment {name} ended {child.state.name}: {child.state.message}")
    return stage_outputs(parameters["run_dir"])


def report_link(pdf: Path, base_url: str | None, published: Path | None = None) -> str:
    """Where the UI's link to the PDF points: under `base_url` (`reports_url()`), the address at which the
    directory `published` (`ACCOUNTABILITY_REPORTS`; unset: the run's --out) is served, when set and the PDF is
    inside it; else the file itself (which browsers refuse to open from a web page, but a desktop can)."""
    pdf = pdf.resolve()
    root = published.expanduser().resolve() if published else pdf.parent.parent
    if not base_url or not pdf.is_relative_to(root):
        return pdf.as_uri()
    return "/".join([base_url.rstrip("/"), *(quote(part) for part in pdf.relative_to(root).parts)])


def publish_artifacts(run_dir: str, results: dict, report: dict) -> None:
    """Attach a summary, the validation metrics and a link to the PDF to the flow run (shown in the UI)."""
    final, shap = model_result(results)["final_validation"], results["deepshap"]
    pdf = report["files"]["report"]
    failed = "".join(f"\n  - {name}" for name in report["failed"])
    verdict = report["verdict"]
    create_markdown_artifact(
        key="compliance-summary",
        markdown=(
            f"# {verdict['verdict']}\n\n"
            f"Findings: {verdict['counts']['material']} material, {verdict['counts']['moderate']} moderate, "
            f"{verdict['counts']['minor']} minor; {verdict['counts']['not assessable']} check(s) not assessable.\n\n"
            f"- run directory: `{run_dir}`\n"
            f"- validation accuracy: **{final['accuracy']:.3f}** (macro F1 {final['f1_macro']:.3f})\n"
            f"- SHAP engine: {shap['engine']} on {shap['device']}; "
            f"largest additivity error {shap['max_additivity_error']:.2e}\n"
            f"- checks: **{report['checks_failed']} of {report['n_checks']} failed**{failed}\n"
            f"- findings register: section 5 of the report, `analysis/findings.parquet`\n"
            f"- report: `{pdf['path']}` (SHA-256 `{pdf['sha256']}`)\n"
        ),
        description="Summary of the compliance report run",
    )
    create_table_artifact(  # kept by the server, apart from the run directory: `verify --seal` reads it
        key=SEAL_KEY,
        table=[{"run": Path(run_dir).name, "file": layout.FILES[key], "sha256": report["files"][key]["sha256"]}
               for key in ("report", "manifest")],
        description="SHA-256 of the report and its manifest when the run finished (accountability verify --seal)",
    )
    create_table_artifact(
        key="findings-register",
        table=report["findings"] or [{"id": "", "check": "", "severity": "", "status": "no findings", "meaning": ""}],
        description=f"Verdict: {verdict['verdict']}. Every check that failed or could not be assessed",
    )
    create_table_artifact(
        key="validation-metrics",
        table=[{"metric": key, "value": round(float(value), 6)} for key, value in final.items()],
        description="Validation metrics of the final epoch",
    )
    base_url, published = reports_url(), published_reports()
    link = report_link(Path(pdf["path"]), base_url, published)
    if base_url and link.startswith("file:"):
        print(f"the report is not under {published} (published at {base_url}): the UI links to the file itself")
    create_link_artifact(key="report-pdf", link=link, link_text="report.pdf",
                         description="The rendered compliance report")


if __name__ == "__main__":
    compliance_report()
