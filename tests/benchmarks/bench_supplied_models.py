"""Whole reports of supplied models, one per route: wall time and which techniques ran (and why not).

    .venv/bin/python tests/benchmarks/bench_supplied_models.py [--only resnet18] [--background 200 --explain 32]

Models are made here with random weights (nothing is downloaded): torchvision's resnet18 (10 classes, 32x32)
exported with torch.export, a CNN with functional activations saved as TorchScript, a PyTorch MLP exported
to ONNX, and scikit-learn's StandardScaler + LogisticRegression and GradientBoosting through skl2onnx.
Images come from a CIFAR-10-format fixture of 500 random images; tables are breast-cancer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import write_cifar10  # noqa: E402
from tests.test_supplied import FunctionalCNN, export, mlp, onnx_export, sklearn_onnx  # noqa: E402


def models(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model file, dataset spec)"""
    import torchvision
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tasks.data.sources import load_dataset

    torch.manual_seed(0)
    cifar = f"cifar10:{write_cifar10(tmp / 'cifar', per_batch=250)}"
    table = load_dataset("breast-cancer")
    script = tmp / "cnn.pt"
    torch.jit.save(torch.jit.script(FunctionalCNN().eval()), str(script))
    return {
        "resnet18 (torch.export)": (export(torchvision.models.resnet18(num_classes=10), torch.rand(2, 3, 32, 32),
                                           tmp / "resnet18.pt2"), cifar),
        "functional CNN (TorchScript)": (script, cifar),
        "MLP (PyTorch -> ONNX)": (onnx_export(mlp(30, 2), torch.rand(2, 30), tmp / "mlp.onnx"), "breast-cancer"),
        "scaler + logistic (skl2onnx)": (sklearn_onnx(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                                                      table.inputs, table.labels, tmp / "logistic.onnx"),
                                         "breast-cancer"),
        "gradient boosting (skl2onnx)": (sklearn_onnx(GradientBoostingClassifier(n_estimators=50, random_state=0),
                                                      table.inputs, table.labels, tmp / "trees.onnx"),
                                         "breast-cancer"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only the models whose name contains this")
    parser.add_argument("--background", type=int, default=200)
    parser.add_argument("--explain", type=int, default=32)
    args = parser.parse_args()
    from flows.compliance_report import compliance_report

    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, dataset) in models(Path(tmp)).items():
            if args.only and args.only not in name:
                continue
            started = time.perf_counter()
            result = compliance_report(dataset=dataset, model=str(path), background=args.background,
                                       explain_rows=args.explain, out=str(Path(tmp) / "reports"))
            wall = time.perf_counter() - started
            results = result["results"]
            ran = [k for k, v in results.items() if isinstance(v, dict) and "files" in v
                   and k not in ("load", "model", "report", "compare", "model-card")]
            skipped = {k: v["skipped"] for k, v in results.items() if isinstance(v, dict) and "skipped" in v}
            steps = json.loads((Path(result["run_dir"]) / "manifest.json").read_text())["step_seconds"]
            print(f"{name}: {wall:.1f} s wall; SHAP stage engine {results['deepshap']['engine']}, "
                  f"largest additivity error {result['max_additivity_error']:.1e}")
            print(f"  ran: {', '.join(ran)}")
            for technique, why in skipped.items():
                print(f"  not run: {technique}: {why}")
            print(f"  step seconds: {json.dumps(steps)}")
            print(f"  accuracy on all rows: {result['validation_accuracy']:.3f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
