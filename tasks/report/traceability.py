"""Traceability: which regulatory clauses each section and check of the report answers, and what only the model's
owner can document. Generated from the technique registry (each technique's `checks` and `clauses`) and the
report's own sections below, so a new check cannot be left out of the appendix (tests/test_validators.py).

US: SR 26-2 (April 2026, superseding SR 11-7; the elements of validation named here are common to
both), EU: the AI Act's Annex IV technical documentation (and the articles it points to), UK: PRA
SS1/23's principles. The mapping is this tool's reading of those texts; the validator confirms it
for their institution.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.run.checks import MODERATE, SEVERITIES
from tasks.steps.model_card import NOT_PROVIDED, OWNER_ITEMS
from tasks.techniques import registry

US, EU, UK = "SR 26-2 (and SR 11-7)", "EU AI Act", "PRA SS1/23"
TO_BE_PROVIDED = "to be provided by the owner"


@dataclass(frozen=True)
class Trace:
    section: str  # the report's section
    checks: tuple[str, ...]  # ids of the checks it shows (tasks/run/checks.py)
    clauses: dict[str, str]  # regime (US, EU, UK) -> the clauses it answers


CORE = (
    Trace("1. Purpose and model card", ("governance.monitoring_plan",), {
        US: "model inventory; materiality drives the depth of review", EU: "Annex IV 1(a) intended purpose",
        UK: "principle 1 (model identification and risk classification)"}),
    Trace("2. Data", (), {
        US: "conceptual soundness: data quality and relevance",
        EU: "Annex IV 2(d) data requirements and provenance; Art. 10", UK: "principle 3 (data used in development)"}),
    Trace("2. Model and training (or the model under validation)", ("model.finite_outputs",), {
        US: "conceptual soundness: design and construction; validation of the model in use",
        EU: "Annex IV 2(a)-(c) development, design, architecture", UK: "principle 3 (model development)"}),
    Trace("3. Validation metrics and confusion matrix", (), {
        US: "outcomes analysis", EU: "Annex IV 2(g) accuracy metrics; 3 degrees of accuracy",
        UK: "principle 4 (independent validation)"}),
    Trace("4. DeepSHAP explanations and their additivity", ("deepshap.additivity",), {
        US: "conceptual soundness: the model's logic, tested", EU: "Annex IV 2(b) general logic; Art. 13 transparency",
        UK: "principle 4 (validation of outputs)"}),
    Trace("5. Limitations", (), {
        US: "limitations and assumptions reported to users", EU: "Annex IV 3 limitations and foreseeable risks",
        UK: "principle 3 (limitations documented); principle 5 (mitigants)"}),
    Trace("6. Monitoring and changes since the previous run, outcomes over time", ("comparison.data-shift",), {
        US: "ongoing monitoring; outcomes analysis over time; revalidation triggers",
        EU: "Annex IV 6 changes over the lifecycle; Art. 72 post-market monitoring (in part)",
        UK: "5.2 (performance monitoring and outcomes analysis)"}),
    Trace("7. Reproducibility, audit trail and sign-off", (), {
        US: "documentation sufficient for an independent party; governance",
        EU: "Annex IV 2(g) test logs, signed; Art. 12",
        UK: "principle 2 (governance); principle 3 (implementation controls)"}),
)

OWNER_CLAUSES = {  # model-card fields (tasks/steps/model_card.py OWNER_ITEMS) -> what they answer
    "human_oversight": {EU: "Annex IV 2(e) human oversight (Art. 14)", US: "use and controls around the model",
                        UK: "principle 3 (model use)"},
    "risk_management": {EU: "Annex IV 5 risk-management system (Art. 9)", US: "governance, policies and controls",
                        UK: "principle 2 (governance)"},
    "post_market_monitoring": {EU: "Annex IV 9 post-market monitoring plan (Art. 72)", US: "ongoing monitoring plan",
                               UK: "5.2 (performance monitoring)"},
}


def traces(modality: str | None = None) -> list[Trace]:
    """Every section of the report with its checks and clauses: the core sections, then the registry's (those
    that apply to `modality`; all when None)."""
    techniques = registry.TECHNIQUES if modality is None else registry.applicable(modality)
    return [*CORE, *(Trace(t.title, t.checks, t.clauses) for t in techniques)]


def traceability(checks: list[dict], skipped: dict[str, str], card_fields: list[dict], modality: str) -> dict:
    """The appendix: per section its checks (with this run's verdict) and clauses; the owner's items."""
    verdicts = {c["id"]: c["status"] for c in checks}
    severities = {**SEVERITIES, **{c["id"]: c["severity"] for c in checks}}
    titles = {t.title: t.name for t in registry.TECHNIQUES}
    rows = []
    for trace in traces(modality):
        status = skipped.get(titles.get(trace.section, ""))
        rows.append({"section": trace.section, "clauses": trace.clauses, "not_run": status,
                     "checks": [{"id": c, "verdict": verdicts.get(c, "not measured"),
                                 "severity": severities.get(c, MODERATE)} for c in trace.checks]})
    values = {f["key"]: f for f in card_fields}
    owner = [{"item": values[key]["heading"], "clauses": OWNER_CLAUSES[key],
              "value": TO_BE_PROVIDED if values[key]["value"] == NOT_PROVIDED else values[key]["value"]}
             for key in OWNER_ITEMS]
    return {"rows": rows, "owner": owner, "regimes": [US, EU, UK]}
