"""Benchmark: the fast DeepSHAP engine against shap.DeepExplainer and the autograd floor.

Not collected by pytest. Run: ``.venv/bin/python tests/benchmarks/bench_deep_shap.py`` (or
``make bench``). Every method runs in its own child process, one after another in this run,
so each peak memory (max RSS of the child) is its own. Threads = CPU cores.

The floor is shap's minimal work done directly with autograd: per image, one forward over the
joint batch of 200 image copies and 200 background images, then one backward per class
(parameters frozen, input gradients only, no hooks).

Last line, machine-readable:
speedup_vs_shap=X floor_ratio=Y max_rel_diff=Z max_additivity=W peak_mb=M
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def synthetic_images(n: int, generator) -> tuple:
    """CIFAR-shaped images of 10 classes: a coloured grating whose angle and colour the class sets, plus noise."""
    import torch

    labels = torch.randint(0, 10, (n,), generator=generator)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    angle = labels[:, None, None] * (torch.pi / 10)
    grating = torch.sin((xx * torch.cos(angle) + yy * torch.sin(angle)) * 0.6)  # (n, 32, 32)
    colour = torch.stack([(labels % 3 == c).float() * 0.6 + 0.2 for c in range(3)], 1)  # (n, 3)
    images = 0.5 + 0.35 * grating[:, None] * colour[:, :, None, None]
    images = images + 0.15 * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1), labels


def build(seed: int, n_background: int, n_images: int):
    """The reference CNN trained briefly on synthetic images (an untrained net gives near-equal
    logits for every image, where DeepLIFT's near-zero cut-offs decide and nothing is compared)."""
    import torch

    from tasks.model.predict import probabilities
    from tasks.model.reference import CNNConfig, build_reference_cnn

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    cnn = build_reference_cnn(CNNConfig(in_channels=3, num_classes=10))
    train_x, train_y = synthetic_images(1024, generator)
    optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    cnn.train()
    for _ in range(2):
        for start in range(0, len(train_x), 64):
            loss = torch.nn.functional.cross_entropy(cnn(train_x[start : start + 64]), train_y[start : start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model = probabilities(cnn).eval()
    background = train_x[torch.randperm(len(train_x), generator=generator)[:n_background]]
    images, _ = synthetic_images(n_images, generator)
    return model, background, images


def run_method(method: str, args: argparse.Namespace, out_dir: str, queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(os.cpu_count())
    model, background, images = build(args.seed, args.background, args.images)
    start = time.perf_counter()
    if method == "shap":
        import shap

        values = shap.DeepExplainer(model, background).shap_values(images, check_additivity=False)
        values = np.moveaxis(np.asarray(values), -1, 1)
    elif method == "engine":
        from tasks.deepshap.engine import DeepShapEngine

        values = DeepShapEngine(model, background).shap_values(images)
    else:  # floor
        for p in model.parameters():
            p.requires_grad_(False)
        for image in images:
            joint = torch.cat([image.expand(len(background), -1, -1, -1), background]).requires_grad_(True)
            out = model(joint)
            for k in range(out.shape[1]):
                torch.autograd.grad(out[:, k].sum(), joint, retain_graph=k + 1 < out.shape[1])
        values = None
    seconds = time.perf_counter() - start
    if values is not None:
        np.save(Path(out_dir) / f"{method}.npy", values)
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(method: str, args, out_dir: str) -> tuple[float, float]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_method, args=(method, args, out_dir, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--background", type=int, default=200, help="background images (default 200)")
    parser.add_argument("--images", type=int, default=32, help="explained images (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} threads, reference CNN, "
          f"{args.background} background images, {args.images} images")
    with tempfile.TemporaryDirectory() as out_dir:
        timings = {}
        for method in ("shap", "engine", "floor"):
            seconds, peak_mb = measure(method, args, out_dir)
            timings[method] = (seconds / args.images, peak_mb)
            print(f"{method:>7}: {seconds / args.images:.3f} s/image, peak {peak_mb:,.0f} MB")
        ours = np.load(Path(out_dir) / "engine.npy")
        ref = np.load(Path(out_dir) / "shap.npy")

    model, background, images = build(args.seed, args.background, args.images)
    with torch.no_grad():
        gap = (model(images) - model(background).mean(0)).double().numpy()
    max_rel_diff = float(np.abs(ours - ref).max() / np.abs(ref).max())
    max_additivity = float(np.abs(ours.reshape(*ours.shape[:2], -1).sum(-1, dtype=np.float64) - gap).max())
    ref_additivity = float(np.abs(ref.reshape(*ref.shape[:2], -1).sum(-1, dtype=np.float64) - gap).max())
    speedup = timings["shap"][0] / timings["engine"][0]
    floor_ratio = timings["engine"][0] / timings["floor"][0]
    print(f"speedup over shap.DeepExplainer: {speedup:.1f}x; engine / floor: {floor_ratio:.2f}")
    print(f"largest |engine - shap| / largest |shap value|: {max_rel_diff:.2e}")
    print(f"largest additivity error: engine {max_additivity:.2e}, shap {ref_additivity:.2e} "
          f"(outputs are probabilities, scale 1)")
    # Float32 forward passes round differently at different batch sizes (shap forwards a joint batch
    # of 2 x background; the engine forwards images and background apart), which flips DeepLIFT's
    # near-zero cut-offs for a few units. In float64 that noise is gone and the rules must agree.
    model64, background64, images64 = model.double(), background.double(), images[:4].double()
    import shap

    from tasks.deepshap.engine import DeepShapEngine

    ours64 = DeepShapEngine(model64, background64).shap_values(images64).astype(np.float64)
    ref64 = np.moveaxis(np.asarray(shap.DeepExplainer(model64, background64).shap_values(
        images64, check_additivity=False)), -1, 1)
    float64_rel_diff = float(np.abs(ours64 - ref64).max() / np.abs(ref64).max())
    print(f"float64 check on 4 images: largest |engine - shap| / largest |shap value|: {float64_rel_diff:.2e} "
          "(the engine returns float32, so ~1e-8 is the floor)")
    # shap against itself: the background listed twice gives mathematically identical values but a
    # larger joint batch, so different rounding. Its spread is float32's own noise at the cut-offs.
    model.float()
    small = images[:4]
    first = np.moveaxis(np.asarray(shap.DeepExplainer(model, background).shap_values(
        small, check_additivity=False)), -1, 1)
    doubled = np.moveaxis(np.asarray(shap.DeepExplainer(model, torch.cat([background, background])).shap_values(
        small, check_additivity=False)), -1, 1)
    shap_noise = float(np.abs(first - doubled).max() / np.abs(first).max())
    engine_on_same = float(np.abs(ours[:4] - ref[:4]).max() / np.abs(ref[:4]).max())
    print(f"float32 on the same 4 images: shap vs shap with the background listed twice {shap_noise:.2e}; "
          f"engine vs shap {engine_on_same:.2e}")
    print(f"speedup_vs_shap={speedup:.2f} floor_ratio={floor_ratio:.3f} max_rel_diff={max_rel_diff:.2e} "
          f"max_additivity={max_additivity:.2e} peak_mb={timings['engine'][1]:.0f}")


if __name__ == "__main__":
    main()
