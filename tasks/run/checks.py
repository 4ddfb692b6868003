"""Checks as data: every pass/fail rule of a run is one `Check` record, made where the value is measured.

A technique's step returns its checks with its files. The report's verdict (tasks/run/verdict.py), its table of
checks, the findings register, the manifest and the flow run's summary artifact are all generated
from the one list, so a check cannot fail in one place and be missing from another.

Each check carries the severity it has when it fails (SEVERITIES: material, moderate or minor; the model card's
`severities` may change it), and a check that cannot judge (too few rows, a degenerate model, an undefined
statistic) says so in `not_assessable`: its status is "not assessable", never "passed".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

SECTION_QUALITY = "4. Explanations and their quality"
SECTION_PERFORMANCE = "3. Performance and testing"
SECTION_MONITORING = "6. Monitoring and changes"

MATERIAL, MODERATE, MINOR = "material", "moderate", "minor"
SEVERITY_LEVELS = (MATERIAL, MODERATE, MINOR)
SEVERITIES = {  # check id -> the severity of its finding when it fails (a model card's `severities` may change it)
    "performance.no_information": MATERIAL, "performance.class_recall": MATERIAL,
    "performance.degenerate": MATERIAL, "model.finite_outputs": MATERIAL, "performance.flat_probabilities": MATERIAL,
    "model.untrained": MATERIAL,
    "data.lineage": MATERIAL, "deepshap.additivity": MODERATE, "calibration.ece": MODERATE,
    "slices.weak": MODERATE, "fairness.selection_rate_ratio": MODERATE, "fairness.equalized_odds": MODERATE,
    "fairness.equal_opportunity": MODERATE,
    "challenger.margin": MODERATE, "robustness.min_strength": MODERATE, "comparison.data-shift": MODERATE,
    "integrated-gradients.completeness": MINOR, "kernel-shap.additivity": MINOR, "deepshap.randomisation": MINOR,
    "deepshap.deletion": MINOR, "deepshap.insertion": MINOR, "deepshap.stability": MINOR,
    "method-agreement.disagreement": MINOR, "governance.monitoring_plan": MODERATE, "data.leakage": MODERATE,
}
PASSED, FAILED, NOT_ASSESSABLE = "passed", "failed", "not assessable"


@dataclass(frozen=True)
class Check:
    """One measured property against its threshold, and the verdict."""

    id: str  # stable name: "<technique>.<property>", e.g. "deepshap.additivity"
    method: str  # what was checked: "DeepSHAP", "Integrated Gradients", "Sliced analysis", ...
    property: str  # which property: "additivity", "completeness", "randomisation", ...
    value: float  # what the run measured
    threshold: float  # the bound it is held to
    passes_when: str  # "at most" (value <= threshold passes) or "at least" (value >= threshold passes)
    section: str  # the report section that shows the evidence
    finding: str  # one sentence for Limitations (and the summary) when the check fails
    details: tuple[str, ...] = field(default=())  # further lines for Limitations (e.g. each weak slice)
    unit: str = ""  # how to print value and threshold: "" (general), "count" or "share"
    not_assessable: str = ""  # why the check cannot judge this run (too few rows, ...); "" when it can
    severity: str = ""  # material | moderate | minor when it fails; "" means SEVERITIES[id]

    @property
    def grade(self) -> str:
        """The severity of the finding this check makes when it fails."""
        return self.severity or SEVERITIES.get(self.id, MODERATE)

    @property
    def status(self) -> str:
        if self.not_assessable:
            return NOT_ASSESSABLE
        return PASSED if self.passed else FAILED

    @property
    def passed(self) -> bool:
        """True only for a check that could judge and found the property held."""
        if self.not_assessable:
            return False
        if self.passes_when == "at most":
            return self.value <= self.threshold
        if self.passes_when == "at least":
            return self.value >= self.threshold
        raise ValueError(f"passes_when must be 'at most' or 'at least', not {self.passes_when!r}")

    @property
    def key(self) -> str:
        return f"{self.method}: {self.property}"

    def to_json(self) -> dict:
        return {**asdict(self), "details": list(self.details), "passed": self.passed, "status": self.status,
                "severity": self.grade}

    @classmethod
    def from_json(cls, data: dict) -> Check:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "details": tuple(fields.get("details", ()))})


def failed(checks: list[Check]) -> list[Check]:
    """The checks that judged and found the property did not hold (not those that could not judge)."""
    return [c for c in checks if c.status == FAILED]


def unassessed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == NOT_ASSESSABLE]


def graded(checks: list[Check], overrides: dict[str, str]) -> list[Check]:
    """The checks with the model card's severities (check id -> severity) in place of the defaults."""
    return [replace(c, severity=overrides.get(c.id, c.grade)) for c in checks]
