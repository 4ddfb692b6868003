"""The evaluation population: the rows the headline metrics, the performance floors and the sliced analysis use,
said once. A supplied model is measured on every row of its data (it was not trained here); a model this tool trained,
on the validation split it never saw. And the interval the sample-size-aware checks use.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

from tasks.run.formats import Split, read_split

ALPHA = 0.05  # one-sided level of the tests and bounds of the sample-size-aware checks


def evaluation_population(files: dict[str, str], supplied: bool) -> tuple[Split, str]:
    """The rows the headline metrics use and how the report names them: all rows of a supplied model's data, or
    the validation split of a model this tool trained."""
    val = read_split(files["validation"])
    if not supplied:
        return val, f"the validation split ({len(val.labels)} rows held out from training)"
    train = read_split(files["train"])
    both = Split(np.concatenate([train.inputs, val.inputs]), np.concatenate([train.labels, val.labels]),
                 train.source_ids + val.source_ids, val.class_names, val.modality, val.feature_names,
                 {k: train.groups[k] + val.groups[k] for k in val.groups})
    return both, f"every evaluation row ({len(both.labels)}: the supplied model was not trained here)"


def upper_bound(successes: int, n: int, alpha: float = ALPHA) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of a proportion."""
    return 1.0 if successes >= n else float(beta.ppf(1 - alpha, successes + 1, n - successes))
