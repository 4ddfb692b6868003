"""Checks as data: every pass/fail rule of a run is one `Check` record, made where the value is measured.

A technique's step returns its checks with its files. The report's summary warnings, its table of
checks, section 5 (Limitations), the manifest and the flow run's summary artifact are all generated
from the one list, so a check cannot fail in one place and be missing from another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SECTION_QUALITY = "4. Explanations and their quality"
SECTION_PERFORMANCE = "3. Performance and testing"
SECTION_MONITORING = "6. Monitoring and changes"


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

    @property
    def passed(self) -> bool:
        if self.passes_when == "at most":
            return self.value <= self.threshold
        if self.passes_when == "at least":
            return self.value >= self.threshold
        raise ValueError(f"passes_when must be 'at most' or 'at least', not {self.passes_when!r}")

    @property
    def key(self) -> str:
        return f"{self.method}: {self.property}"

    def to_json(self) -> dict:
        return {**asdict(self), "details": list(self.details), "passed": self.passed}

    @classmethod
    def from_json(cls, data: dict) -> Check:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "details": tuple(fields.get("details", ()))})


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


def limitations(checks: list[Check]) -> list[str]:
    """What the failed checks say, in words: one line per finding (or per detail, where a check has them)."""
    lines = []
    for check in failed(checks):
        lines += list(check.details) or [check.finding]  # details, where given, say it line by line
    return lines
