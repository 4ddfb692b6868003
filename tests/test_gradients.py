import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from tasks.run import layout
from tasks.techniques.gradients import gradient_attributions, integrated_gradients, saliency


def test_linear_model_known_answers():
    """For f(x) = Wx + b: IG = W * (x - baseline) exactly, saliency = |W|, completeness error 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    images, baseline = torch.randn(4, 3, 2, 2), torch.randn(1, 3, 2, 2)
    targets = torch.tensor([0, 1, 2, 1])
    ig, errors = integrated_gradients(model, images, baseline, targets)
    w = model[1].weight.detach().reshape(3, 3, 2, 2)
    np.testing.assert_allclose(ig, (w[targets] * (images - baseline)).numpy(), atol=1e-5)
    assert errors.max() < 1e-5
    np.testing.assert_allclose(saliency(model, images.clone().requires_grad_(True), targets),
                               w[targets].abs().numpy(), atol=1e-6)


def test_gradients_step_writes_complete_ig_for_the_explained_rows(image_run):
    _, run = image_run
    run_dir, result = run["run_dir"], run["results"]["gradients"]
    table = pq.read_table(result["files"]["gradients"]["path"]).to_pandas()
    chosen = pq.read_table(layout.path(run_dir, "explained")).to_pandas()
    assert list(table["source_id"]) == list(chosen["source_id"])
    assert list(table["class_index"]) == list(chosen["predicted"])
    assert result["max_ig_completeness_error"] < 1e-3  # 64 Gauss-Legendre steps on a small CNN
    (check,) = result["checks"]
    assert check["id"] == "integrated-gradients.completeness" and check["passed"]
    assert check["value"] == result["max_ig_completeness_error"] and check["threshold"] == 0.05


def test_two_ig_steps_fail_the_completeness_check(image_run, tmp_path):
    """The same step with a 2-point path integral: its completeness error is far larger, and its check fails."""
    _, run = image_run
    files = layout.paths(run["run_dir"], ("model", "validation", "explained", "background"))
    result = gradient_attributions(str(tmp_path), files, 0, ig_steps=2)
    (check,) = result["checks"]
    assert result["max_ig_completeness_error"] > run["results"]["gradients"]["max_ig_completeness_error"]
    assert check["passed"] is (check["value"] <= 0.05)
