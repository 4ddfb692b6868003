"""Benchmark: the graph DeepSHAP engine against shap.DeepExplainer, on the reference CNN and resnet18.

Not collected by pytest. Run: ``.venv/bin/python tests/benchmarks/bench_deep_shap.py`` (or ``make bench``).
Each (model, method, device) runs in its own child process, one after another in this run, so each peak
memory is its own (max RSS of the child on the CPU; torch's peak allocation on CUDA). CPU threads = cores;
CUDA is measured too when present, with TF32 off for both methods (shap would otherwise be 40% off).

Exactness is against float64 answers on the first 4 images: on the reference CNN shap.DeepExplainer on a
float64 copy of the model (its rules are right there); on resnet18, whose blocks call one ReLU module twice
and whose stem max-pool windows overlap (both wrong in shap), the engine's own rules run in float64
throughout. Errors are relative to the largest value of the answer.

The floor (reference CNN) is shap's minimal work done directly with autograd: per image, one forward over
the joint batch of 200 image copies and 200 background images, then one backward per class.

Last line, machine-readable:
speedup_vs_shap=X engine_f32_error=E shap_f32_error=S max_additivity=A peak_mb=M
(the reference CNN on the CPU)
"""

from __future__ import annotations

import argparse
import copy
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


def build(name: str, seed: int, n_background: int, n_images: int, for_shap: bool = False):
    """The model (class probabilities), background and images. The reference CNN is trained briefly on
    synthetic images (an untrained net gives near-equal logits, where DeepLIFT's cut-offs decide and
    nothing is compared); resnet18 has random weights and settled batch-norm statistics."""
    import torch
    import torchvision

    from tasks.model.predict import probabilities
    from tasks.model.reference import CNNConfig, build_reference_cnn

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    train_x, train_y = synthetic_images(1024, generator)
    if name == "cnn":
        net = build_reference_cnn(CNNConfig(in_channels=3, num_classes=10))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        for _ in range(2):
            for start in range(0, len(train_x), 64):
                loss = torch.nn.functional.cross_entropy(net(train_x[start : start + 64]), train_y[start : start + 64])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    else:
        from tests.resnets import one_relu_per_use

        net = torchvision.models.resnet18(num_classes=10)
        if for_shap:
            one_relu_per_use(net)  # the same function, in a form shap's hooks can run
        net.train()
        with torch.no_grad():
            for start in range(0, 256, 64):
                net(train_x[start : start + 64])
    model = probabilities(net).eval()
    background = train_x[torch.randperm(len(train_x), generator=generator)[:n_background]]
    images, _ = synthetic_images(n_images, generator)
    return model, background, images


def run_method(name: str, method: str, device: str, args, out_dir: str, queue) -> None:
    import torch

    from tasks.deepshap.engine import DeepShapEngine, exact_float32

    torch.set_num_threads(os.cpu_count())
    model, background, images = build(name, args.seed, args.background, count(name, args), method != "engine")
    model, background, images = model.to(device), background.to(device), images.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with exact_float32():
        if method == "engine":
            DeepShapEngine(model, background).shap_values(images[:1])  # trace and warm up, not timed
        start = time.perf_counter()
        if method == "shap":
            import shap

            values = shap.DeepExplainer(model, background).shap_values(images, check_additivity=False)
            values = np.moveaxis(np.asarray(values), -1, 1)
        elif method == "engine":
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
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if values is not None:
        np.save(Path(out_dir) / f"{name}-{method}-{device}.npy", values)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((seconds / len(images), peak))


def count(name: str, args) -> int:
    """Explained images of a model (the images drawn depend on the count: always build with it)."""
    return args.images if name == "cnn" else args.resnet_images


def measure(name: str, method: str, device: str, args, out_dir: str) -> tuple[float, float]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_method, args=(name, method, device, args, out_dir, queue))
    process.start()
    process.join()
    if queue.empty():
        raise SystemExit(f"{name} {method} on {device} failed (exit code {process.exitcode}): see above")
    return queue.get()


def float64_answer(name: str, args, n: int) -> np.ndarray:
    """See the module docstring: shap in float64 on the CNN, the engine in float64 on resnet18."""
    import shap
    import torch

    from tasks.deepshap.engine import DeepShapEngine

    model, background, images = build(name, args.seed, args.background, count(name, args), name == "cnn")
    model, background, images = copy.deepcopy(model).double(), background.double(), images[:n].double()
    if name == "cnn":
        values = shap.DeepExplainer(model, background).shap_values(images, check_additivity=False)
        return np.moveaxis(np.asarray(values), -1, 1)
    torch.set_num_threads(os.cpu_count())
    return DeepShapEngine(model, background).shap_values(images).astype(np.float64)


def additivity(name: str, args, values: np.ndarray) -> float:
    import torch

    model, background, images = build(name, args.seed, args.background, count(name, args))
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        gap = (model64(images.double()) - model64(background.double()).mean(0)).numpy()
    return float(np.abs(values.reshape(*values.shape[:2], -1).sum(-1, dtype=np.float64) - gap).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--background", type=int, default=200, help="background images (default 200)")
    parser.add_argument("--images", type=int, default=32, help="explained images, reference CNN (default 32)")
    parser.add_argument("--resnet-images", type=int, default=8, help="explained images, resnet18 (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cuda-only", action="store_true", help="skip the CPU measurements (a GPU machine)")
    args = parser.parse_args()

    import torch

    devices = ([] if args.cuda_only else ["cpu"]) + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads, devices {devices}, "
          f"{args.background} background images")
    summary = {}
    with tempfile.TemporaryDirectory() as out_dir:
        measured = {}  # every child first: a child starts with this process's peak RSS (kept across exec)
        for name in ("cnn", "resnet18"):
            methods = ("shap", "engine", "floor") if name == "cnn" else ("shap", "engine")
            for device in devices:
                measured[(name, device)] = {m: measure(name, m, device, args, out_dir) for m in methods}
        for name in ("cnn", "resnet18"):
            label = "reference CNN" if name == "cnn" else "resnet18"
            exact = float64_answer(name, args, 4)
            scale = np.abs(exact).max()
            for device in devices:
                timings = measured[(name, device)]
                ours = np.load(Path(out_dir) / f"{name}-engine-{device}.npy")
                ref = np.load(Path(out_dir) / f"{name}-shap-{device}.npy")
                engine_error = float(np.abs(ours[:4] - exact).max() / scale)
                shap_error = float(np.abs(ref[:4] - exact).max() / scale)
                max_additivity = additivity(name, args, ours)
                speedup = timings["shap"][0] / timings["engine"][0]
                for method, (per_image, peak) in timings.items():
                    print(f"{label:>13} {device:>4} {method:>6}: {per_image:.4f} s/image ({1 / per_image:,.1f} "
                          f"images/s), peak {peak:,.0f} MB")
                print(f"{label:>13} {device:>4}: speedup over shap {speedup:.1f}x; float32 error against the float64 "
                      f"answer: engine {engine_error:.1e}, shap {shap_error:.1e}; largest additivity error "
                      f"{max_additivity:.1e}")
                if "floor" in timings:
                    floor_ratio = timings["engine"][0] / timings["floor"][0]
                    print(f"{label:>13} {device:>4}: engine / autograd floor {floor_ratio:.2f}")
                summary[(name, device)] = (speedup, engine_error, shap_error, max_additivity, timings["engine"][1])
    speedup, engine_error, shap_error, max_additivity, peak = summary.get(("cnn", "cpu"), summary[("cnn", devices[0])])
    print(f"speedup_vs_shap={speedup:.2f} engine_f32_error={engine_error:.2e} shap_f32_error={shap_error:.2e} "
          f"max_additivity={max_additivity:.2e} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
