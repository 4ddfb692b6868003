"""The SHAP stage as a flow of its own, for the `explain` deployment on a GPU work pool.

The main flow calls it through `run_deployment` when its `explain_deployment` parameter names
it; it reads and writes the run directory (a path both workers reach), so nothing but paths
crosses between the two flow runs.
"""

from __future__ import annotations

from prefect import flow

from flows.compliance_report import STEPS


@flow(name="explain", log_prints=True)
def explain_flow(weights_path: str, train_path: str, validation_path: str, run_dir: str, background: int,
                 explain: int, seed: int, engine: str = "fast") -> None:
    """DeepSHAP values for `explain` validation rows against `background` training rows, into run_dir/explain/."""
    STEPS["explain"](weights_path, train_path, validation_path, run_dir, background, explain, seed, engine)


if __name__ == "__main__":
    import sys

    sys.exit("explain_flow is started by the compliance_report flow through its deployment (deploy/prefect.yaml)")
