"""The findings register: every check that failed or could not judge, graded, with its evidence, what it means, a
suggested remediation and the owner's response. Written to ``analysis/findings.parquet`` (and shown in the report
and as a Prefect table artifact); made from the run's one list of checks (tasks/run/checks.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.run.checks import FAILED, MATERIAL, MINOR, MODERATE, Check
from tasks.techniques import registry

AWAITING = "awaiting response"
REMEDIATION = {  # check id -> what the owner could do about the finding
    "performance.no_information": "Do not use the model; retrain or replace it, and validate it again.",
    "performance.class_recall": "Collect more data for the weak classes or rebalance training; revalidate.",
    "performance.degenerate": "Check the model file is the trained one (not an initial checkpoint) and that the data "
                              "is prepared as in training.",
    "performance.flat_probabilities": "Check the model file and the input preparation (scaling, channel order).",
    "model.untrained": "Export the trained model again (its normalisation statistics were not saved, or it was "
                       "never trained).",
    "data.lineage": "Evaluate on independent or out-of-time data, and state its lineage in the model card "
                    "(evaluation_data).",
    "deepshap.additivity": "Do not rely on the explanations until the additivity error is explained.",
    "calibration.ece": "Recalibrate the probabilities (temperature or isotonic scaling) or do not use them as "
                       "probabilities.",
    "slices.weak": "Review the weak slices with the business; restrict use there or improve the model.",
    "fairness.selection_rate_ratio": "Review the disparity with compliance; mitigate or document its justification.",
    "fairness.equalized_odds": "Review the error-rate gap with compliance; mitigate or document it.",
    "fairness.equal_opportunity": "Review the gap in true positive rates with compliance; mitigate or document it.",
    "challenger.margin": "Explain why the challenger does better, or adopt it.",
    "robustness.min_strength": "Set the operating conditions in the model card; harden the model or restrict its use.",
    "comparison.data-shift": "Investigate the shift; revalidate on current data.",
    "governance.monitoring_plan": "State the monitoring plan in the model card (post_market_monitoring).",
}
DEFAULT_REMEDIATION = "Review the evidence with the model owner and record the response."
ORDER = {MATERIAL: 0, MODERATE: 1, MINOR: 2}


def evidence(check: Check, results: dict, run_dir: Path) -> tuple[str, str]:
    """The run file that holds a check's evidence (relative to the run directory) and its SHA-256."""
    owner = next((t.name for t in registry.TECHNIQUES if check.id in t.checks), None)
    source = {"deepshap.additivity": "deepshap", "comparison.data-shift": "compare",
              "governance.monitoring_plan": "model-card"}.get(check.id, owner)
    files = list(((results.get(source) or {}).get("files") or {}).values())
    ref = next((f for f in files if str(f["path"]).endswith(".parquet")), files[0] if files else None)
    if not ref:
        return "", ""
    path = Path(ref["path"])
    return (path.relative_to(run_dir).as_posix() if path.is_relative_to(run_dir) else path.name), ref["sha256"]


def findings_register(checks: list[Check], results: dict, run_dir: Path) -> pd.DataFrame:
    """One row per failed or not assessable check, the most severe first."""
    rows = []
    for check in sorted((c for c in checks if not c.passed), key=lambda c: (ORDER.get(c.grade, 1), c.id)):
        file, sha = evidence(check, results, Path(run_dir))
        rows.append({"check": check.id, "title": f"{check.method}: {check.property}", "severity": check.grade,
                     "status": "open" if check.status == FAILED else "not assessable",
                     "section": check.section, "evidence_file": file, "evidence_sha256": sha,
                     "meaning": check.finding if check.status == FAILED else
                     f"Could not be judged: {check.not_assessable}.",
                     "details": " ".join(check.details), "remediation": REMEDIATION.get(check.id, DEFAULT_REMEDIATION),
                     "owner_response": AWAITING})
    columns = ["check", "title", "severity", "status", "section", "evidence_file", "evidence_sha256", "meaning",
               "details", "remediation", "owner_response"]
    table = pd.DataFrame(rows, columns=columns)
    table.insert(0, "id", [f"F-{i + 1:02d}" for i in range(len(table))])
    return table
