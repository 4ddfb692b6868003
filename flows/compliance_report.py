"""The `compliance_report` flow: load -> train -> explain (DeepSHAP, gradients, permutation importance, PDP,
Kernel SHAP, LIME, slices, method agreement) -> report, one Prefect task each; DeepSHAP is a subflow of
its own (flows/explain.py), run in-process or on the `explain` deployment's GPU workers.

Thin wiring only: the steps are plain functions in `tasks/`; they hand each other paths
and SHA-256 hashes of Parquet and safetensors files, never pickled objects.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.explain import check_dask_options, explain_flow
from flows.steps import StepFailed, resumable, step
from tasks.agreement import measure_agreement
from tasks.compare import compare_runs, previous_run
from tasks.config import RunConfig
from tasks.explain import explain_outputs
from tasks.faithfulness import check_faithfulness
from tasks.gradients import gradient_attributions
from tasks.kernel_shap import explain_kernel_shap
from tasks.lime_explain import explain_lime
from tasks.load import load_data
from tasks.model_card import store_model_card
from tasks.partial_dependence import compute_partial_dependence
from tasks.permutation import compute_permutation_importance
from tasks.provenance import environment
from tasks.report import render_report
from tasks.resume import record_run
from tasks.slices import analyse_slices
from tasks.train import train_model


load_step = step(load_data, "load")
STEPS = {  # the steps after load but SHAP (flows/explain.py), by the name the flow uses; tasks named as in the UI
    "train": step(train_model, "train"),
    "gradients": step(gradient_attributions, "gradients"),
    "permutation": step(compute_permutation_importance, "permutation-importance"),
    "partial_dependence": step(compute_partial_dependence, "partial-dependence"),
    "kernel_shap": step(explain_kernel_shap, "kernel-shap"),
    "lime": step(explain_lime, "lime"),
    "slices": step(analyse_slices, "slices"),
    "agreement": step(measure_agreement, "method-agreement"),
    "faithfulness": step(check_faithfulness, "faithfulness", tags=["gpu"]),
    "model_card": step(store_model_card, "model-card"),
    "compare": step(compare_runs, "compare"),
    "report": step(render_report, "report"),
}


@flow(name="compliance_report", log_prints=True)
def compliance_report(
    dataset: str = "digits",
    label: str | None = None,
    epochs: int = RunConfig.epochs,
    background: int = RunConfig.background,
    explain: int = RunConfig.explain,
    seed: int = RunConfig.seed,
    out: str = "reports",
    shap_engine: str = RunConfig.shap_engine,
    model_card: str | None = None,
    compare: str | None = None,
    resume: str | None = None,
    shard_size: int = RunConfig.shard_size,
    explain_deployment: str | None = None,
    dask_address: str | None = None,
    dask_workers: int = 0,
) -> dict:
    """Train the model, explain it and render a PDF compliance report into a new run directory.

    `resume` finishes an unfinished run directory instead (its finished steps come back Cached);
    `explain_deployment` (e.g. "explain/gpu") sends the SHAP stage to that deployment's workers;
    `dask_address` / `dask_workers` spread its shards over Dask workers (see flows/explain.py).
    """
    config = RunConfig(dataset=dataset, label=label, epochs=epochs, background=background, explain=explain, seed=seed,
                       out=Path(out), shap_engine=shap_engine, model_card=model_card, compare=compare,
                       resume=resume, shard_size=shard_size)
    check_dask_options(dask_address, dask_workers)
    loaded = load_step(config.dataset, config.out, config.seed, config.val_fraction, config.background, config.explain,
                       config.label, config.resume)
    run_dir = loaded["run_dir"]
    record_run(run_dir, {k: v for k, v in config.to_json().items() if k != "resume"})
    steps = resumable(STEPS, run_dir)
    trained = steps["train"](loaded["train"]["path"], loaded["validation"]["path"], run_dir,
                             config.epochs, config.batch_size, config.seed)
    explain_args = {"weights_path": trained["weights"]["path"], "train_path": loaded["train"]["path"],
                    "validation_path": loaded["validation"]["path"], "run_dir": run_dir,
                    "background": config.background, "explain": config.explain, "seed": config.seed,
                    "engine": config.shap_engine, "shard_size": config.shard_size,
                    "dask_address": dask_address, "dask_workers": dask_workers}
    explained = (explain_on_deployment(explain_deployment, explain_args) if explain_deployment
                 else explain_flow(**explain_args))
    analyses = explain_further(run_dir, loaded, trained, explained, config.seed, steps)
    analyses["faithfulness"] = steps["faithfulness"](
        trained["weights"]["path"], loaded["train"]["path"], loaded["validation"]["path"],
        explained["explained"]["path"], explained["shap_values"]["path"], explained["background"]["path"], run_dir,
        config.seed, config.shap_engine)
    analyses["model_card"] = steps["model_card"](config.model_card, run_dir)
    previous = config.compare or previous_run(config.out, config.dataset, Path(run_dir))
    analyses["comparison"] = steps["compare"](run_dir, previous)
    run_info = {"id": flow_run.get_id(), "name": flow_run.get_name(), "url": flow_run.get_flow_run_ui_url()}
    report = steps["report"](run_dir, loaded, trained, explained, config.to_json(), environment(), run_info, analyses)
    publish_artifacts(run_dir, trained, explained, report)
    return {"run_dir": run_dir, "pdf": report["pdf"]["path"], "manifest": report["manifest"]["path"],
            "validation_accuracy": trained["final_validation"]["accuracy"],
            "max_additivity_error": explained["max_additivity_error"]}


def explain_on_deployment(name: str, parameters: dict) -> dict:
    """Run the SHAP stage (flows/explain.py) as the deployment `name`, e.g. on the `gpu` work pool; wait for it."""
    from prefect.deployments import run_deployment

    child = run_deployment(name, parameters=parameters)
    if not child.state.is_completed():
        raise StepFailed(f"explain step failed: deployment {name} ended {child.state.name}: {child.state.message}")
    return explain_outputs(parameters["run_dir"])


def explain_further(run_dir: str, loaded: dict, trained: dict, explained: dict, seed: int,
                    steps: dict | None = None) -> dict:
    """The techniques beside DeepSHAP, each a task writing its own Parquet file; returns their results by name."""
    steps = steps or STEPS
    weights, train, validation = trained["weights"]["path"], loaded["train"]["path"], loaded["validation"]["path"]
    rows, background = explained["explained"]["path"], explained["background"]["path"]
    analyses = {"gradients": steps["gradients"](weights, validation, rows, background, run_dir),
                "permutation": steps["permutation"](weights, validation, run_dir, seed)}
    importance = analyses["permutation"]["permutation_importance"]["path"]
    if loaded["modality"] == "table":
        analyses["partial_dependence"] = steps["partial_dependence"](weights, validation, importance, run_dir)
    analyses["kernel_shap"] = steps["kernel_shap"](weights, validation, rows, background, run_dir, seed)
    analyses["lime"] = steps["lime"](weights, train, validation, rows, run_dir, seed)
    analyses["slices"] = steps["slices"](weights, validation, importance, run_dir)
    analyses["agreement"] = steps["agreement"](run_dir, loaded, explained, analyses["gradients"], analyses["lime"],
                                               analyses["kernel_shap"], analyses["permutation"])
    return analyses


def publish_artifacts(run_dir: str, trained: dict, explained: dict, report: dict) -> None:
    """Attach a summary, the validation metrics and a link to the PDF to the flow run (shown in the UI)."""
    final = trained["final_validation"]
    create_markdown_artifact(
        key="compliance-summary",
        markdown=(
            f"# Compliance report\n\n- run directory: `{run_dir}`\n"
            f"- validation accuracy: **{final['accuracy']:.3f}** (macro F1 {final['f1_macro']:.3f})\n"
            f"- SHAP engine: {explained['engine']} on {explained['device']}; "
            f"largest additivity error {explained['max_additivity_error']:.2e}\n"
            f"- report: `{report['pdf']['path']}` (SHA-256 `{report['pdf']['sha256']}`)\n"
        ),
        description="Summary of the compliance report run",
    )
    create_table_artifact(
        key="validation-metrics",
        table=[{"metric": key, "value": round(float(value), 6)} for key, value in final.items()],
        description="Validation metrics of the final epoch",
    )
    create_link_artifact(key="report-pdf", link=Path(report["pdf"]["path"]).resolve().as_uri(),
                         link_text="report.pdf", description="The rendered compliance report")


if __name__ == "__main__":
    compliance_report()
