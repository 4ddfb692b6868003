"""The `compliance_report` flow: load -> train -> explain (DeepSHAP, gradients, permutation importance, PDP,
Kernel SHAP, LIME, slices, method agreement) -> report, one Prefect task each.

Thin wiring only: the steps are plain functions in `tasks/`; they hand each other paths
and SHA-256 hashes of Parquet and safetensors files, never pickled objects.
"""

from __future__ import annotations

import functools
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from tasks.agreement import measure_agreement
from tasks.compare import compare_runs, previous_run
from tasks.config import RunConfig
from tasks.explain import explain_model, explain_outputs
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
from tasks.resume import RESULTS_DIR, input_hash_key, record_run
from tasks.slices import analyse_slices
from tasks.errors import InputError
from tasks.train import train_model


class StepFailed(RuntimeError):
    """A step failed with something other than a clear InputError; the message names the step."""


def step(fn, name: str, **options):
    """`fn` as a Prefect task whose failure says which step failed and why (the flow run's state message)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            raise InputError(f"{name} step: {exc}") from None
        except Exception as exc:
            raise StepFailed(f"{name} step failed: {type(exc).__name__}: {exc}") from exc
    return task(run, name=name, **options)


load_step = step(load_data, "load")
STEPS = {  # the steps after load, by the name the flow uses; each a Prefect task named as in the UI
    "train": step(train_model, "train"),
    "explain": step(explain_model, "explain", tags=["gpu"]),
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


def resumable_steps(run_dir: str) -> dict:
    """The steps after load, cached by the hashes of their inputs, results kept (as JSON) in the run directory.

    A run that died is finished by running it again into the same directory (--resume):
    the steps that had completed come back Cached. See tasks/resume.py.
    """
    storage = Path(run_dir) / RESULTS_DIR  # a path: Prefect stores there without a saved storage block
    return {name: prefect_task.with_options(cache_key_fn=input_hash_key, persist_result=True,
                                            result_storage=storage, result_serializer="json")
            for name, prefect_task in STEPS.items()}


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
    explain_deployment: str | None = None,
) -> dict:
    """Train the model, explain it and render a PDF compliance report into a new run directory.

    `resume` finishes an unfinished run directory instead (its finished steps come back Cached);
    `explain_deployment` (e.g. "explain/gpu") sends the SHAP stage to that deployment's workers.
    """
    config = RunConfig(dataset=dataset, label=label, epochs=epochs, background=background, explain=explain, seed=seed,
                       out=Path(out), shap_engine=shap_engine, model_card=model_card, compare=compare,
                       resume=resume)
    loaded = load_step(config.dataset, config.out, config.seed, config.val_fraction, config.background, config.explain,
                       config.label, config.resume)
    run_dir = loaded["run_dir"]
    record_run(run_dir, {k: v for k, v in config.to_json().items() if k != "resume"})
    steps = resumable_steps(run_dir)
    trained = steps["train"](loaded["train"]["path"], loaded["validation"]["path"], run_dir,
                             config.epochs, config.batch_size, config.seed)
    explain_args = (trained["weights"]["path"], loaded["train"]["path"], loaded["validation"]["path"], run_dir,
                    config.background, config.explain, config.seed, config.shap_engine)
    explained = (explain_on_deployment(explain_deployment, *explain_args) if explain_deployment
                 else steps["explain"](*explain_args))
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


def explain_on_deployment(name: str, weights_path: str, train_path: str, validation_path: str, run_dir: str,
                          background: int, explain: int, seed: int, engine: str) -> dict:
    """Run the SHAP stage as the deployment `name` (e.g. on the `gpu` work pool) and wait for it."""
    from prefect.deployments import run_deployment

    child = run_deployment(name, parameters={
        "weights_path": weights_path, "train_path": train_path, "validation_path": validation_path,
        "run_dir": run_dir, "background": background, "explain": explain, "seed": seed, "engine": engine})
    if not child.state.is_completed():
        raise StepFailed(f"explain step failed: deployment {name} ended {child.state.name}: {child.state.message}")
    return explain_outputs(run_dir)


def explain_further(run_dir: str, loaded: dict, trained: dict, explained: dict, seed: int,
                    steps: dict | None = None) -> dict:
    """The techniques beside DeepSHAP, each a task writing its own Parquet file; returns their results by name."""
    steps = steps or STEPS
    weights, train, validation = trained["weights"]["path"], loaded["train"]["path"], loaded["validation"]["path"]
    rows, background = explained["explained"]["path"], explained["background"]["path"]
    analyses = {"gradients": steps["gradients"](weights, train, validation, rows, background, run_dir),
                "permutation": steps["permutation"](weights, validation, run_dir, seed)}
    importance = analyses["permutation"]["permutation_importance"]["path"]
    if loaded["modality"] == "table":
        analyses["partial_dependence"] = steps["partial_dependence"](weights, validation, importance, run_dir)
    analyses["kernel_shap"] = steps["kernel_shap"](weights, train, validation, rows, background, run_dir, seed)
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
