"""The verdict: one of four sentences a validator can sign, derived from the graded checks by one written rule.

The rule (RULE, printed on page 1 of the report and in README.md) reads only each check's status and severity
(tasks/run/checks.py), so the report, the Prefect state message, the summary artifact and the findings register
say the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.run.checks import MATERIAL, MINOR, MODERATE, Check, failed, unassessed

FIT, CONDITIONS, NOT_FIT = "Fit for use", "Fit for use with conditions", "Not fit for use"
TECHNICAL = "Technical assessment only: no intended use declared"
RULE = ("Any failed material finding gives \"Not fit for use\". Otherwise, any failed moderate finding, or a material "
        "check that could not be assessed, gives \"Fit for use with conditions\". Otherwise the model is \"Fit for "
        "use\". Minor findings are listed and do not change the verdict. When the model card declares no intended "
        "use, the verdict is \"Technical assessment only: no intended use declared\" and the findings are still "
        "graded.")


@dataclass(frozen=True)
class Verdict:
    text: str  # one of FIT, CONDITIONS, NOT_FIT, TECHNICAL
    graded: str  # what the findings alone give (FIT, CONDITIONS or NOT_FIT): the same as `text` unless TECHNICAL
    counts: dict  # severity -> failed checks; "not assessable" -> checks that could not judge
    reasons: tuple[str, ...]  # the ids of the checks that decided it

    def to_json(self) -> dict:
        return {"verdict": self.text, "graded": self.graded, "counts": self.counts, "reasons": list(self.reasons),
                "rule": RULE}


def derive(checks: list[Check], intended_use_declared: bool) -> Verdict:
    """The verdict of RULE for these checks."""
    findings = failed(checks)
    by_severity = {level: [c.id for c in findings if c.grade == level] for level in (MATERIAL, MODERATE, MINOR)}
    material_unknown = [c.id for c in unassessed(checks) if c.grade == MATERIAL]
    if by_severity[MATERIAL]:
        graded, reasons = NOT_FIT, by_severity[MATERIAL]
    elif by_severity[MODERATE] or material_unknown:
        graded, reasons = CONDITIONS, by_severity[MODERATE] + material_unknown
    else:
        graded, reasons = FIT, []
    counts = {**{level: len(ids) for level, ids in by_severity.items()}, "not assessable": len(unassessed(checks))}
    return Verdict(graded if intended_use_declared else TECHNICAL, graded, counts, tuple(reasons))
