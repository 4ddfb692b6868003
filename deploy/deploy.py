"""Create or update the deployments described in deploy/prefect.yaml on the server at PREFECT_API_URL.

`prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml` creates them too with the pins of
constraints.txt (prefect 3.8.8, fastapi 0.150: checked on 2026-12-04, both deployments made; with fastapi
0.154 its closing "are workers online?" query got 422 and it stopped after the first). This applies the
same file through Prefect's Python API (RunnerDeployment.apply), with no prompt and no CLI in the way;
`{{ $VAR }}` values are taken from the environment, as `prefect deploy` does.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.deployments.runner import RunnerDeployment

PREFECT_FILE = Path(__file__).resolve().parent / "prefect.yaml"
ROOT = PREFECT_FILE.parent.parent


def expand(value):
    """Replace every {{ $NAME }} with the environment variable NAME (which must be set)."""
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, str):
        def lookup(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                sys.exit(f"deploy/prefect.yaml needs the environment variable {name}")
            return os.environ[name]
        return re.sub(r"\{\{\s*\$(\w+)\s*\}\}", lookup, value)
    return value


def main() -> int:
    config = expand(yaml.safe_load(PREFECT_FILE.read_text()))
    os.chdir(ROOT)  # entrypoints are relative to the repository root, where workers run them
    for spec in config["deployments"]:
        pool = spec["work_pool"]
        deployment = RunnerDeployment.from_entrypoint(
            spec["entrypoint"], name=spec["name"], description=spec.get("description"),
            cron=[s["cron"] for s in spec.get("schedules", [])] or None,
            parameters=spec.get("parameters"), concurrency_limit=spec.get("concurrency_limit"),
            work_pool_name=pool["name"], job_variables=pool.get("job_variables"))
        deployment_id = deployment.apply(work_pool_name=pool["name"])
        # apply() stores no pull steps, and a worker then copies the deployment's path (this whole checkout,
        # .venv included: minutes per flow run) into a temporary directory. prefect.yaml's pull steps run
        # the flow where it is instead.
        with get_client(sync_client=True) as client:
            client.update_deployment(deployment_id, DeploymentUpdate(pull_steps=config["pull"]))
        print(f"deployment {deployment.flow_name}/{deployment.name} on pool {pool['name']}: {deployment_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
