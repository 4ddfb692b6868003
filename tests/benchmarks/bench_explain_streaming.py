"""Benchmark: the SHAP stage's peak memory does not grow with the number of explained images.

Not collected by pytest. Run: ``.venv/bin/python tests/benchmarks/bench_explain_streaming.py 64 640``.
For each count it writes a run directory (synthetic CIFAR-shaped splits, the benchmark's trained
reference CNN as safetensors), then runs the real SHAP stage (flows/deepshap.py on Prefect's local
ephemeral server; fast engine, shards merged into Parquet one at a time) in a child process and prints
its peak RSS. Last line, machine-readable: images=N1,N2 peak_mb=M1,M2
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def explain_in_child(run_dir: str, n_images: int, queue: mp.Queue) -> None:
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.deepshap import deepshap_flow

    start = time.perf_counter()
    result = deepshap_flow(run_dir=run_dir, background=200, rows=n_images, seed=0)
    queue.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               result["max_additivity_error"]))


def prepare(run_dir: Path, n_images: int) -> None:
    import numpy as np
    import torch

    from bench_deep_shap import build, synthetic_images
    from tasks.model.reference import CNNConfig, save_weights
    from tasks.run import layout
    from tasks.run.artifacts import write_parquet_atomic
    from tasks.run.formats import split_table

    model, background, _ = build("cnn", 0, 256, 1)
    images, labels = synthetic_images(n_images, torch.Generator().manual_seed(7))
    names = [f"class {k}" for k in range(10)]
    for name, x, y in (("train", background, torch.arange(len(background)) % 10), ("validation", images, labels)):
        ids = [f"{name}:{i}" for i in range(len(x))]
        write_parquet_atomic(layout.path(run_dir, name), split_table(x.numpy(), y.numpy().astype(np.int64), ids, names))
    save_weights(layout.path(run_dir, "weights"), model[0], CNNConfig(in_channels=3, num_classes=10), {"seed": 0})


def main() -> None:
    counts = [int(arg) for arg in sys.argv[1:]] or [64, 640]
    peaks = []
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            prepare(Path(tmp), n)
            context = mp.get_context("spawn")
            queue = context.Queue()
            child = context.Process(target=explain_in_child, args=(tmp, n, queue))
            child.start()
            seconds, peak_mb, additivity = queue.get()
            child.join()
        peaks.append(peak_mb)
        print(f"{n:>6} images: {seconds:.1f} s ({seconds / n:.3f} s/image), peak {peak_mb:,.0f} MB, "
              f"largest additivity error {additivity:.1e}")
    print(f"images={','.join(map(str, counts))} peak_mb={','.join(f'{p:.0f}' for p in peaks)}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
