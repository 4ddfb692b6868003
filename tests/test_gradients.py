import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

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


def test_gradients_step_writes_complete_ig_for_the_explained_images(tmp_path):
    from tasks.deepshap.stage import explain_model
    from tasks.steps.load import load_data
    from tasks.steps.train import train_model
    from tests.conftest import write_imagefolder

    root = write_imagefolder(tmp_path / "images", {"a": 10, "b": 10, "c": 10})
    loaded = load_data(f"imagefolder:{root}", tmp_path / "out", seed=0, val_fraction=0.3)
    trained = train_model(loaded["train"]["path"], loaded["validation"]["path"], loaded["run_dir"], 2, 8, 0)
    explained = explain_model(trained["weights"]["path"], loaded["train"]["path"], loaded["validation"]["path"],
                              loaded["run_dir"], background=6, explain=4, seed=0)
    result = gradient_attributions(trained["weights"]["path"], loaded["validation"]["path"],
                                   explained["explained"]["path"], explained["background"]["path"], loaded["run_dir"])
    table = pq.read_table(result["gradients"]["path"]).to_pandas()
    chosen = pq.read_table(explained["explained"]["path"]).to_pandas()
    assert list(table["source_id"]) == list(chosen["source_id"])
    assert list(table["class_index"]) == list(chosen["predicted"])
    assert result["max_ig_completeness_error"] < 1e-3  # 64 Gauss-Legendre steps on a small CNN
    assert len(table["integrated_gradients"][0]) == 3 * 32 * 32
    assert (np.stack(table["saliency"].to_numpy()) >= 0).all()
