"""Benchmark: the SHAP stage's shards on a local Dask cluster of 2 workers against 1 worker, and in-process.

Not collected by pytest. Run: ``.venv/bin/python tests/benchmarks/bench_dask_shards.py [IMAGES] [SHARD_SIZE]``
(default 48 images in shards of 4, background 200, CIFAR-shaped images, the reference CNN).

Each configuration runs the real `deepshap` flow (plan -> shards -> merge, on Prefect's local ephemeral
server) into its own run directory from the same weights and splits, and is timed end to end, the
Dask cluster's start and stop included. The values must be the same bits in every configuration.
Last line, machine-readable: seconds_inprocess=A seconds_dask1=B seconds_dask2=C speedup_2_over_1=B/C
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import numpy as np

    from bench_explain_streaming import prepare
    from flows.deepshap import deepshap_flow
    from tasks.run.formats import read_shap_values

    n_images = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    shard_size = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    configurations = {"inprocess": {}, "dask1": {"dask_workers": 1}, "dask2": {"dask_workers": 2}}
    with tempfile.TemporaryDirectory() as tmp:
        seconds, values = {}, {}
        for name, options in configurations.items():
            run_dir = Path(tmp) / name
            prepare(run_dir, n_images)  # the same splits and weights (seeded) in each configuration's run directory
            start = time.perf_counter()
            result = deepshap_flow(run_dir=str(run_dir), background=200, rows=n_images, seed=0, shard_size=shard_size,
                                   **options)
            seconds[name] = time.perf_counter() - start
            values[name], _ = read_shap_values(result["files"]["shap_values"]["path"])
            print(f"{name:>9}: {seconds[name]:6.1f} s for {n_images} images in shards of {shard_size} "
                  f"({seconds[name] / n_images:.2f} s/image), largest additivity error "
                  f"{result['max_additivity_error']:.1e}")
    same = all(np.array_equal(values["inprocess"], v) for v in values.values())
    print(f"values identical (bit for bit) in all three: {same}; cores: {os.cpu_count()}")
    print(f"seconds_inprocess={seconds['inprocess']:.1f} seconds_dask1={seconds['dask1']:.1f} "
          f"seconds_dask2={seconds['dask2']:.1f} speedup_2_over_1={seconds['dask1'] / seconds['dask2']:.2f}")
    if not same:
        sys.exit("the values differ between configurations")


if __name__ == "__main__":
    main()
