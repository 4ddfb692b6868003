"""The technique registry: what the flow runs after the SHAP stage and what the report shows, in one list.

Each entry names its step (a plain function `step(run_dir, files, seed) -> result`, where `files` maps
the keys of `reads` to paths, see tasks/run/layout.py), the data kinds it applies to, the files it
reads and writes, the report section that shows it (a function of the report's data and the step's
result) and that section's template partial (templates/sections/). A result holds the step's
`files` (`file_ref`s), its `checks` (tasks/run/checks.py) and the numbers its section prints.

The flow (flows/compliance_report.py) runs the entries in `run_order`; the report
(tasks/report/build.py) shows them in list order, each where its `place` says. A new technique is
its module, its partial, one entry here, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from tasks.report.sections import global_shap_section
from tasks.techniques.agreement import agreement_section, measure_agreement
from tasks.techniques.calibration import calibration_section, check_calibration
from tasks.techniques.challenger import challenger_section, compare_with_challenger
from tasks.techniques.data_quality import assess_data_quality, data_quality_section
from tasks.techniques.fairness import assess_fairness, fairness_section
from tasks.techniques.faithfulness import check_faithfulness, faithfulness_section
from tasks.techniques.floors import check_floors, floors_section
from tasks.techniques.gradients import gradient_attributions, gradient_section
from tasks.techniques.kernel_shap import explain_kernel_shap, kernel_shap_section
from tasks.techniques.lime_surrogates import explain_lime, lime_section
from tasks.techniques.partial_dependence import compute_partial_dependence, partial_dependence_section
from tasks.techniques.permutation import compute_permutation_importance, permutation_section
from tasks.techniques.robustness import measure_robustness, robustness_section
from tasks.techniques.slices import analyse_slices, slices_section
from tasks.techniques.weights import inspect_weights, weights_section

MODALITIES = ("image", "table")
PLACES = {  # where in the report a technique's section goes
    "design": "2. Design and data, after model and training",
    "performance": "3. Performance and testing, after the validation metrics",
    "global": "4. Explanations: global explanations",
    "local": "4. Explanations: individual decisions, after DeepSHAP",
    "quality": "4. Explanations: their quality, after the table of checks",
}
CORE_FILES = ("run_record", "train", "validation", "metrics", "metrics_per_class", "model", "card_record", "plan",
              "background", "predictions", "shap_values", "explained")  # written by load, train, model card, SHAP
US, EU, UK = "SR 26-2 (and SR 11-7)", "EU AI Act", "PRA SS1/23"  # the regimes of `clauses`
MATERIALITY = ("low", "medium", "high")  # the model card's materiality: a technique runs at its level and above


@dataclass(frozen=True)
class Technique:
    name: str  # the step's task name in Prefect (and its key among the run's results)
    title: str  # how the report names it
    step: Callable[..., dict] | None  # (run_dir, files, seed) -> result; None: shown from the SHAP stage's files
    section: Callable[..., dict]  # (ReportData, result) -> what its partial shows; beside the step in its module
    partial: str  # templates/sections/<partial>
    place: str  # a key of PLACES
    reads: tuple[str, ...] = ()  # layout keys of the files the step reads (its cache key hashes them)
    writes: tuple[str, ...] = ()  # layout keys of the files the step writes
    modalities: tuple[str, ...] = MODALITIES  # the data kinds it applies to
    tags: tuple[str, ...] = ()  # Prefect task tags ("gpu": run it where the SHAP stage runs)
    requires: tuple[str, ...] = ()  # what the model must allow: keys of tasks.model.run_model.CAPABILITIES
    materiality: str = "low"  # the lowest model-card materiality at which it runs (MATERIALITY)
    checks: tuple[str, ...] = ()  # ids of the checks its step makes (tasks/run/checks.py)
    clauses: dict[str, str] = field(default_factory=dict)  # regime -> clauses it answers (tasks/report/traceability.py)


EXPLAINS = {US: "conceptual soundness: the model's logic, tested",
            EU: "Annex IV 2(b) general logic; Art. 13 transparency",
            UK: "principle 4 (validation of outputs)"}
TESTS_EXPLANATIONS = {US: "conceptual soundness: the explanations themselves tested",
                      EU: "Art. 13 transparency; Annex IV 2(g) validation", UK: "principle 4 (validation of outputs)"}
MEASURES_OUTCOMES = {US: "outcomes analysis", EU: "Annex IV 2(g) accuracy metrics; 3 degrees of accuracy",
                     UK: "principle 4 (independent validation)"}

TECHNIQUES: tuple[Technique, ...] = (
    Technique("data-quality", "Data quality", assess_data_quality, data_quality_section, "data_quality.html.j2",
              "design", reads=("model", "train", "validation", "card_record"), writes=("data_quality",),
              checks=("data.leakage",),
              clauses={US: "conceptual soundness: data quality and relevance",
                       EU: "Annex IV 2(d) data requirements; Art. 10(2)-(3) data governance, examination for bias",
                       UK: "principle 3 (data used in development)"}),
    Technique("weights", "Weights and biases", inspect_weights, weights_section, "weights.html.j2",
              "design", reads=("model",), writes=("weight_statistics",),
              clauses={US: "conceptual soundness: design and construction",
                       EU: "Annex IV 2(b)-(c) design and architecture", UK: "principle 3 (model development)"}),
    Technique("floors", "Performance floors", check_floors, floors_section, "floors.html.j2", "performance",
              reads=("model", "train", "validation", "card_record"), writes=("floors",),
              checks=("performance.no_information", "performance.class_recall", "performance.degenerate",
                      "performance.flat_probabilities", "model.untrained", "data.lineage"), clauses=MEASURES_OUTCOMES),
    Technique("slices", "Sliced analysis", analyse_slices, slices_section, "slices.html.j2", "performance",
              reads=("model", "train", "validation", "permutation_importance"), writes=("slices",),
              checks=("slices.weak",),
              clauses={**MEASURES_OUTCOMES, US: "outcomes analysis by segment",
                       EU: "Annex IV 3 accuracy for specific groups of persons"}),
    Technique("calibration", "Calibration", check_calibration, calibration_section, "calibration.html.j2",
              "performance", reads=("model", "train", "validation", "run_record", "card_record"),
              writes=("calibration",),
              checks=("calibration.ece",), clauses=MEASURES_OUTCOMES),
    Technique("fairness", "Fairness across protected groups", assess_fairness, fairness_section, "fairness.html.j2",
              "performance", reads=("model", "validation", "run_record", "card_record"),
              writes=("fairness", "fairness_groups"),
              checks=("fairness.selection_rate_ratio", "fairness.equalized_odds", "fairness.equal_opportunity"),
              clauses={**MEASURES_OUTCOMES, US: "outcomes analysis across groups (fair lending review)",
                       EU: "Annex IV 2(g) potentially discriminatory impacts; Art. 10(2)(f) bias"}),
    Technique("robustness", "Robustness to perturbations", measure_robustness, robustness_section,
              "robustness.html.j2", "performance", reads=("model", "train", "validation", "card_record"),
              writes=("robustness", "robustness_missing"), materiality="medium", checks=("robustness.min_strength",),
              clauses={**MEASURES_OUTCOMES, US: "conceptual soundness: sensitivity analysis",
                       EU: "Annex IV 2(g) robustness metrics; Art. 15"}),
    Technique("challenger", "Challenger model", compare_with_challenger, challenger_section, "challenger.html.j2",
              "performance", reads=("model", "train", "validation", "run_record", "card_record"),
              writes=("challenger", "challenger_weights", "challenger_model"), materiality="medium",
              checks=("challenger.margin",),
              clauses={US: "effective challenge: benchmarking against alternative models",
                       EU: "Annex IV 2(g) validation and testing", UK: "4.2 (challenger models and benchmarking)"}),
    Technique("permutation-importance", "Permutation feature importance", compute_permutation_importance,
              permutation_section, "permutation.html.j2", "global", reads=("model", "validation"),
              writes=("permutation_importance",), clauses=EXPLAINS),
    Technique("global-shap", "Global SHAP importance", None, global_shap_section, "global_shap.html.j2",
              "global", reads=("shap_values", "validation"), clauses=EXPLAINS),
    Technique("partial-dependence", "Partial dependence and ICE", compute_partial_dependence,
              partial_dependence_section, "partial_dependence.html.j2", "global",
              reads=("model", "validation", "permutation_importance"), writes=("partial_dependence",),
              modalities=("table",), materiality="medium", clauses=EXPLAINS),
    Technique("gradients", "Saliency and Integrated Gradients", gradient_attributions, gradient_section,
              "gradients.html.j2", "local", reads=("model", "validation", "explained", "background"),
              writes=("gradients",), requires=("torch_graph",), materiality="high",
              checks=("integrated-gradients.completeness",), clauses=EXPLAINS),
    Technique("kernel-shap", "Kernel SHAP", explain_kernel_shap, kernel_shap_section, "kernel_shap.html.j2",
              "local", reads=("model", "validation", "explained", "background", "shap_values"), writes=("kernel_shap",),
              materiality="medium", checks=("kernel-shap.additivity",), clauses=EXPLAINS),
    Technique("lime", "LIME", explain_lime, lime_section, "lime.html.j2", "local",
              reads=("model", "train", "validation", "explained"), writes=("lime",), materiality="high",
              clauses=EXPLAINS),
    Technique("faithfulness", "Faithfulness: randomisation, deletion and insertion, stability", check_faithfulness,
              faithfulness_section, "faithfulness.html.j2", "quality",
              reads=("model", "train", "validation", "explained", "shap_values", "background"),
              writes=("randomisation", "deletion_insertion", "stability"), tags=("gpu",), requires=("deepshap",),
              checks=("deepshap.randomisation", "deepshap.deletion", "deepshap.insertion", "deepshap.stability"),
              clauses=TESTS_EXPLANATIONS),
    Technique("method-agreement", "Method agreement", measure_agreement, agreement_section,
              "agreement.html.j2", "quality",
              reads=("validation", "explained", "shap_values", "gradients", "lime", "kernel_shap",
                     "permutation_importance"), writes=("agreement",), materiality="high",
              checks=("method-agreement.disagreement",), clauses=TESTS_EXPLANATIONS),
)


def applicable(modality: str) -> list[Technique]:
    """The registry's techniques that apply to data of this kind, in report order."""
    return [t for t in TECHNIQUES if modality in t.modalities]


def unavailable(technique: Technique, capabilities: dict[str, str | None], materiality: str = "high") -> str | None:
    """Why `technique` does not run: the run's model cannot give it what it requires (the model record's
    capabilities), or the model card's materiality is below the technique's; None when it runs."""
    reasons = [capabilities[name] for name in technique.requires if capabilities.get(name)]
    if reasons:
        return f"Not available for this model: {reasons[0]}."
    if MATERIALITY.index(materiality) < MATERIALITY.index(technique.materiality):
        return (f"Not run: the model card states materiality {materiality}, and this review runs from materiality "
                f"{technique.materiality}.")
    return None


def model_result(results: dict) -> dict:
    """The result of the step that produced the model: "train" (the reference model) or "model" (supplied)."""
    return results["train"] if "train" in results else results["model"]


def run_order(techniques) -> list[Technique]:
    """The techniques with a step, each after those that write what it reads (stable otherwise)."""
    pending = [t for t in techniques if t.step is not None]
    written = set(CORE_FILES)
    ordered = []
    while pending:
        ready = [t for t in pending if set(t.reads) <= written]
        if not ready:
            missing = {t.name: sorted(set(t.reads) - written) for t in pending}
            raise ValueError(f"techniques read files nothing writes first: {missing}")
        ordered.append(ready[0])
        pending.remove(ready[0])
        written |= set(ready[0].writes)
    return ordered
