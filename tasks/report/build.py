"""The report step: figures and a PDF compliance report from the run's files, then the manifest.

The technique sections come from the registry (tasks/techniques/registry.py), each from its step's
result; every verdict comes from the run's one list of checks (tasks/run/checks.py), which also
makes the summary's warnings, the table of checks, Limitations and the manifest's `checks`.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data.dataset import group_names
from tasks.deepshap.stage import shard_workers
from tasks.model.run_model import CAPABILITIES, RunModel, load_run_model
from tasks.report import figures
from tasks.report.findings import findings_register
from tasks.report.narrative import (describe_mistake, describe_table_mistake, feature_summary, model_description,
                                    reason_codes)
from tasks.report.render import RunFilesFetcher, render_pdf
from tasks.report.sections import ReportData, comparison_section
from tasks.report.traceability import traceability
from tasks.report.validator_figures import outcomes_over_time
from tasks.run import layout
from tasks.run.artifacts import build_manifest, write_json_atomic, write_manifest
from tasks.run.checks import Check, failed, graded
from tasks.run.formats import file_ref, read_shap_values, read_split, write_frame
from tasks.run.history import key_metrics
from tasks.run.verdict import derive
from tasks.steps.model_card import store_model_card
from tasks.techniques import registry
from tasks.techniques.positive import run_positive_index

MAX_SAMPLE_IMAGES = 8
LEAST_CONFIDENT = 3  # correct rows drawn for being the least confident, beside one per class


def drawn_positions(explained: pd.DataFrame) -> list[int]:
    """The explained rows a reader needs to see drawn: every misclassified one, the most confident correct one of
    each class (what the model sees in it) and the LEAST_CONFIDENT least confident correct ones. The others' values
    stay in the run's files, and the report says so in one line."""
    correct = explained[explained["label"] == explained["predicted"]]
    chosen = set(explained.loc[explained["label"] != explained["predicted"], "position"])
    chosen |= set(correct.sort_values("confidence", ascending=False).groupby("label").head(1)["position"])
    chosen |= set(correct.nsmallest(LEAST_CONFIDENT, "confidence")["position"])
    return [p for p in explained["position"] if p in chosen]  # in the explained rows' order


def run_checks(results: dict) -> list[Check]:
    """Every check the run's steps made, in the order the report shows the steps, graded with the model card's
    severities where it sets them."""
    order = ["model-card", "deepshap", *(t.name for t in registry.TECHNIQUES), "compare"]
    checks = [Check.from_json(c) for name in order if name in results
              for c in (results[name] or {}).get("checks", [])]
    return graded(checks, (results.get("model-card") or {}).get("severities") or {})


def case_studies(data: ReportData, expected: list[float]) -> list[dict]:
    """Each explained row: its DeepSHAP figure, reason codes (tables) and, when misclassified, a narrative."""
    names, val, is_table = data.names, data.validation, data.modality == "table"
    cases = []
    plots = None if is_table else figures.ShapImagePlots(len(names))
    short = figures.short_labels(names, 12)
    drawn = data.explained[data.explained["position"].isin(drawn_positions(data.explained))]
    for row, x in zip(drawn.itertuples(index=False), val.rows_of(drawn["source_id"])):
        probs = np.asarray(row.probabilities)
        values = data.values[row.position]
        path = data.figure(f"shap_{row.position:04d}.png")
        shown = row.predicted  # the reasons for the decision taken, binary models included
        if is_table:
            title = f"{row.source_id}: SHAP values for '{names[shown]}' ({probs[shown]:.2f})"
            figures.feature_bars(values[shown], val.feature_names, title, path)
        else:
            titles = [f"{label} {probs[k]:.2f}" for k, label in enumerate(short)]
            heading = f"true {short[row.label]}\npred {short[row.predicted]}"
            plots.draw(x, values, titles, path, heading)
        case = {"position": row.position, "source_id": row.source_id, "true": names[row.label],
                "predicted": names[row.predicted], "confidence": float(row.confidence),
                "correct": row.label == row.predicted, "additivity_error": float(row.additivity_error),
                "figure": data.rel(path), "shown": names[shown], "expected": float(expected[shown]),
                "probability": float(probs[shown]),
                "reasons": reason_codes(values[shown], x, val.feature_names) if is_table else []}
        if not case["correct"]:
            case["narrative"] = (
                describe_table_mistake(values, x, row.label, row.predicted, names, probs, val.feature_names)
                if is_table else describe_mistake(values, row.label, row.predicted, names, probs, expected))
        cases.append(case)
    if plots is not None:
        plots.close()
    return cases


def shown_parameters(params: dict) -> dict:
    """The parameters as the appendix lists them: a size the run chose says why (a default cut to a small split)."""
    why = params.get("chosen") or {}
    return {key: f"{value} ({why[key]})" if key in why else value for key, value in params.items() if key != "chosen"}


def render_report(run_dir: Path, results: dict, params: dict, environment: dict, flow_run: dict,
                  timings: dict | None = None, fetcher: RunFilesFetcher | None = None) -> dict:
    """Make the figures, render ``report.pdf`` and write ``manifest.json``; return their `file_ref`s.

    `results` holds each step's result by name: "load", "train", "deepshap", the registry's
    techniques, "model-card" and "compare"; a technique without a result leaves its section out.
    `timings` (step name -> wall seconds) goes to section 7 and the manifest. `fetcher` (default:
    a fresh one for `run_dir`) is the only way the renderer reads files.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    load, train, shap = results["load"], registry.model_result(results), results["deepshap"]
    model = load_run_model(layout.path(run_dir, "model"))
    supplied = model.record["source"] == "supplied"
    values, values_meta = read_shap_values(layout.path(run_dir, "shap_values"))
    expected = json.loads(values_meta["accountability.expected_values"])
    validation = read_split(layout.path(run_dir, "validation"))
    data = ReportData(run_dir, read_split(layout.path(run_dir, "train")), validation,
                      pd.read_parquet(layout.path(run_dir, "explained")), values, model,
                      run_positive_index(layout.path(run_dir, "run_record"), validation.class_names))
    names, is_table = data.names, data.modality == "table"
    metrics = pd.read_parquet(layout.path(run_dir, "metrics"))
    per_class = pd.read_parquet(layout.path(run_dir, "metrics_per_class"))
    if supplied:  # measured on all the data: every row's prediction
        evaluation = pd.read_parquet(layout.path(run_dir, "evaluation"))
        labels, val_pred = evaluation["label"].to_numpy(), evaluation["predicted"].to_numpy()
    else:
        labels = data.validation.labels
        val_pred = pd.read_parquet(layout.path(run_dir, "predictions"))["predicted"].to_numpy()  # validation order
    errors = data.explained["additivity_error"].to_numpy()
    model_card = results.get("model-card") or store_model_card(None, run_dir)
    results = {**results, "model-card": model_card}  # (a run without one is held to the defaults)
    checks = run_checks(results)
    additivity = next(c for c in checks if c.id == "deepshap.additivity")
    verdict = derive(checks, model_card.get("intended_use_declared", False))
    register = findings_register(checks, results, run_dir)
    write_frame(layout.path(run_dir, "findings"), register)

    samples = None if is_table else figures.sample_grid(data.train.inputs, data.train.labels, names,
                                                        data.figure("samples.png"), MAX_SAMPLE_IMAGES)
    shown = [t for t in registry.applicable(data.modality) if t.name in results or t.step is None]
    measured = "all" if supplied else "validation"
    last_val = per_class[(per_class["split"] == measured) & (per_class["epoch"] == per_class["epoch"].max())]
    final = train["final_validation"]
    cases = case_studies(data, expected)
    context = {
        "title": {"model": (f"{model.record['format']} model {Path(model.record['original_path']).name}"
                            if supplied else model_description(model.file.meta["config"])),
                  "dataset": load["dataset"], "run_id": run_dir.name,
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "flow_run_id": flow_run.get("id") or "not run under Prefect",
                  **population_of(results.get("floors"), supplied, int(sum(load["class_counts"]["validation"])))},
        "summary": {
            "accuracy": final["accuracy"], "f1_macro": final["f1_macro"], "n_classes": len(names),
            "n_train": int(sum(load["class_counts"]["train"])),
            "n_validation": int(sum(load["class_counts"]["validation"])),
            "epochs": params["epochs"], "n_explained": len(data.explained), "supplied": supplied,
            "n_rows": int(sum(load["class_counts"]["train"]) + sum(load["class_counts"]["validation"])),
            "n_misclassified": sum(not c["correct"] for c in cases),
            "engine": shap["engine"], "device": shap["device"], "background": params["background"],
            "weakest_class": (last_val.sort_values("f1").iloc[0]["class_name"]
                              if last_val["f1"].min() < last_val["f1"].max() else None),  # none when all alike
        },
        "data": {
            "classes": [{"name": n, "train": t, "validation": v} for n, t, v in
                        zip(names, load["class_counts"]["train"], load["class_counts"]["validation"])],
            "input_shape": load["input_shape"], "provenance": load["provenance"],
            "protected": load.get("protected") or {"attributes": [], "kept_as_features": False},
            "samples": data.rel(samples) if samples else None,
            "features": feature_summary(data.train) if is_table else [],
        },
        "training": model_section(model, metrics) if supplied else {
            "supplied": False, "curves": data.rel(figures.training_curves(metrics, data.figure("training_curves.png"))),
            "epochs": metrics.pivot(index="epoch", columns="split", values=["loss", "accuracy"]).reset_index()
                             .to_dict("records"),
            "settings": model.file.meta["training"],
        },
        "validation": {
            "classes": last_val.to_dict("records"), "final": final,
            "measured": measured,
            "confusion": data.rel(figures.confusion_matrix(labels, val_pred, names,
                                                           data.figure("confusion_matrix.png"))),
        },
        "cases": cases, "cases_not_drawn": len(data.explained) - len(cases),
        "techniques": [{"name": t.name, "title": t.title, "partial": t.partial, "place": t.place} for t in shown],
        "sections": {t.name: (results[t.name] if "skipped" in results.get(t.name, {}) else
                              t.section(data, results.get(t.name))) for t in shown},
        "comparison": comparison_section(results.get("compare")),
        "outcomes": outcomes_section(data, results.get("history") or [], final, checks),
        "model_card": model_card,
        "positive": names[data.positive] if data.positive is not None else None,
        "quality": {
            "max": float(errors.max()), "mean": float(errors.mean()), "threshold": additivity.threshold,
            "over": int((errors > additivity.threshold).sum()), "expected": expected,
            "histogram": data.rel(figures.additivity_histogram(errors, additivity.threshold,
                                                               data.figure("additivity.png"))),
        },
        "verdict": verdict.to_json(),
        "findings": register.to_dict("records"),
        "checks": [c.to_json() for c in checks],
        "failed_checks": [c.to_json() for c in failed(checks)],
        "check": {c.id: c.to_json() for c in checks},
        "limitations": (model_card_limitations(model_card)  # the checks' findings are in the register
                        + undrawn_names({"class": names, "feature": data.train.feature_names if is_table else [],
                                         "protected attribute or group": group_names(data.train.groups)})),
        "appendix": {
            "parameters": shown_parameters(params), "environment": environment, "flow_run": flow_run,
            "attachments": {layout.FILES[key]: text for key, text in layout.ATTACHMENTS.items()},
            "shard_workers": shard_workers(run_dir), "timings": timings or {},
        },
        "class_names": names,
        "modality": data.modality,
        "shap_method": "Kernel SHAP" if shap["engine"] == "kernel" else "DeepSHAP",
        "shap_values_are": ("Kernel SHAP estimates (the SHAP stage's model-agnostic fallback: the model has no exact "
                            "DeepSHAP graph)" if shap["engine"] == "kernel" else "exact DeepSHAP values"),
    }
    skipped = {name: result["skipped"] for name, result in results.items()
               if isinstance(result, dict) and "skipped" in result}
    context["traceability"] = traceability(context["checks"], skipped, model_card["fields"], data.modality)
    extra = {"parameters": params, "flow_run": flow_run, "checks": context["checks"], "step_seconds": timings or {}}
    # Every file so far (figures included), hashed: the PDF embeds this list; manifest.json, written
    # after the PDF, adds the PDF itself.
    pre_manifest = build_manifest(run_dir, extra, exclude=tuple(layout.FILES[k] for k in ("manifest", "artifacts",
                                                                                          "report")))
    write_json_atomic(layout.path(run_dir, "artifacts"), pre_manifest)
    context["appendix"]["artifacts"] = [{"path": p, **info} for p, info in pre_manifest["files"].items()]
    pdf = render_pdf("report.html.j2", context, run_dir, layout.path(run_dir, "report"), fetcher=fetcher,
                     attachments=context["appendix"]["attachments"])
    extra["step_seconds"] = {**extra["step_seconds"], "report": round(time.perf_counter() - started, 3)}
    manifest = write_manifest(run_dir, {**extra, "environment": environment})
    return {"files": {"report": file_ref(pdf), "manifest": file_ref(manifest)},
            "checks_failed": len(context["failed_checks"]), "n_checks": len(checks), "verdict": verdict.to_json(),
            "findings": register[["id", "check", "severity", "status", "meaning"]].to_dict("records"),
            "failed": [f"{c['method']}: {c['property']}" for c in context["failed_checks"]],
            "limitations": len(context["limitations"])}


def population_of(floors: dict | None, supplied: bool, n_validation: int) -> dict:
    """The evaluation population and its lineage, as page 1 states them (from the performance floors' step)."""
    if floors and "population" in floors:
        return {"population": floors["population"], "lineage": floors["lineage"]}
    return {"population": "every evaluation row" if supplied else f"the validation split ({n_validation} rows)",
            "lineage": "unknown" if supplied else "independent: a held-out split made by this run"}


def outcomes_section(data: ReportData, history: list[str], final: dict, checks: list[Check]) -> dict | None:
    """Key metrics across the earlier runs of the dataset and this one (None: no earlier run)."""
    if not history:
        return None
    rows = [{"run": Path(run).name, **key_metrics(Path(run))} for run in history]
    rows.append({"run": data.run_dir.name, "accuracy": float(final["accuracy"]), "f1_macro": float(final["f1_macro"]),
                 "checks_failed": len(failed(checks))})
    table = pd.DataFrame(rows)
    table.insert(1, "date", [f"{r[:4]}-{r[4:6]}-{r[6:8]} {r[9:11]}:{r[11:13]}" for r in table["run"]])
    write_frame(layout.path(data.run_dir, "outcomes"), table)
    figure = outcomes_over_time(table[["run", "date", "accuracy", "f1_macro"]], data.figure("outcomes.png"))
    return {"rows": table.to_dict("records"), "figure": data.rel(figure)}


MAX_OPERATIONS = 20  # rows of the model section's operation table


def model_section(model: RunModel, metrics: pd.DataFrame) -> dict:
    """The supplied model under validation: its file, what it says about itself, what it allows, how it scores."""
    record = model.record
    shape = ", ".join(str(d) for d in record["input_shape"])
    return {
        "supplied": True, "record": record,
        "signature": {"input": f"{record.get('input_name') or 'input'}: (batch, {shape}) float32",
                      "output": f"(batch, {record['n_outputs']}) {record['outputs']} "
                                f"({'as declared by --outputs' if record['outputs_declared'] else 'detected'})"},
        "operations": record["operations"][:MAX_OPERATIONS],
        "more_operations": max(0, len(record["operations"]) - MAX_OPERATIONS),
        "capabilities": [{"name": name, "what": text, "reason": record["capabilities"].get(name)}
                         for name, text in CAPABILITIES.items()],
        "metrics": metrics.to_dict("records"),
    }


def undrawn_names(names: dict[str, list[str]]) -> list[str]:
    """A line per kind of name (class, feature, ...) with characters the report's font cannot draw: figures and
    text show boxes in their place, so the line gives each such name spelled out in escapes."""
    family = figures.font()[0]
    lines = []
    for kind, kind_names in names.items():
        undrawn = {n: chars for n in kind_names if (chars := figures.undrawable(n))}
        bad = sorted(undrawn)
        if bad:
            missing = "".join(dict.fromkeys("".join(undrawn[n] for n in bad)))
            shown = ", ".join(ascii(n) for n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            lines.append(f"{len(bad)} {kind} name(s) use characters that the report's font ({family}) cannot draw "
                         f"({', '.join(f'U+{ord(c):04X}' for c in missing[:8])}{', ...' if len(missing) > 8 else ''}):"
                         f" figures (and text, unless another installed font has them) show boxes in their place. "
                         f"Spelled out: {shown}.")
    return lines


def model_card_limitations(model_card: dict) -> list[str]:
    """The limitations the model owner stated in the model card, as report lines."""
    found = []
    for field in model_card.get("fields", []):
        if field["key"] == "limitations" and not field["missing"]:
            value = field["value"]
            found += [f"Stated by the model owner: {v}" for v in (value if isinstance(value, list) else [value])]
    return found
