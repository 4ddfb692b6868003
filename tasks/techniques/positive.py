"""Which class a binary model's "positive" outcome is: the class its scores, SHAP values and reason codes speak
for. The second label by default (scikit-learn's convention for 0/1 targets), or `--positive-class NAME`.

A binary model's two probabilities sum to one, so the other class's SHAP values are exactly the
negatives of the positive class's: showing both doubles the page and halves the clarity.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.run.errors import InputError


def positive_index(class_names: list[str], positive_class: str | None) -> int | None:
    """The index of the positive class of a binary model; None for more than two classes."""
    if len(class_names) != 2:
        if positive_class is not None:
            raise InputError(f"--positive-class {positive_class!r} applies to two classes; this data has "
                             f"{len(class_names)}")
        return None
    if positive_class is None:
        return 1
    if positive_class not in class_names:
        raise InputError(f"--positive-class {positive_class!r} is not a class; the classes are {class_names}")
    return class_names.index(positive_class)


def run_positive_index(run_record: str | Path, class_names: list[str]) -> int | None:
    """`positive_index` for a run, from the parameters it recorded in run.json."""
    return positive_index(class_names, json.loads(Path(run_record).read_text()).get("positive_class"))
