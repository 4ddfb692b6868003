"""The CUDA paths: the DeepSHAP engine and the SHAP stage on a GPU, exact against float64 answers on the CPU.

Skipped without CUDA (CI has none). PyTorch runs float32 convolutions and matmuls as TF32 on CUDA by default
(about 1e-3 relative error); the engine turns TF32 off while it computes and puts the settings back. The tests
switch TF32 on first, as a user's process may have it, so they fail if the engine forgets.
"""

import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from tasks.deepshap.engine import DeepShapEngine
from tasks.model.predict import probabilities
from tasks.model.reference import CNNConfig, build_reference_cnn
from tests.test_deep_shap import additivity_error, float64_reference, settle_batchnorm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def tf32_on():
    """TF32 on for matmuls and convolutions (cuDNN's default, not matmul's), as any process may set it."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def reference_cnn(seed: int, classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(seed)
    cnn = build_reference_cnn(CNNConfig(in_channels=3, num_classes=classes, widths=(4, 4, 6, 6, 8, 8, 8)))
    return probabilities(settle_batchnorm(cnn, (3, 32, 32)))


def relative_error(values: np.ndarray, exact: np.ndarray) -> float:
    return float(np.abs(values - exact).max() / np.abs(exact).max())


def test_engine_on_cuda_is_within_1e5_of_shaps_float64_answer_with_tf32_on(tf32_on):
    model = reference_cnn(0)
    background, images = torch.rand(12, 3, 32, 32), torch.rand(3, 3, 32, 32)
    exact = float64_reference(model, background, images)  # on the CPU
    on_gpu = DeepShapEngine(copy.deepcopy(model).cuda(), background.cuda()).shap_values(images.cuda())
    assert relative_error(on_gpu, exact) <= 1e-5
    assert additivity_error(model, on_gpu, background, images) <= 1e-6
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # put back


def test_resnet18_on_cuda_is_within_1e5_of_the_float64_rules(tf32_on):
    torch.manual_seed(15)
    model = probabilities(settle_batchnorm(torchvision.models.resnet18(num_classes=10), (3, 32, 32))).eval()
    background, images = torch.rand(8, 3, 32, 32), torch.rand(2, 3, 32, 32)
    exact = DeepShapEngine(copy.deepcopy(model).double(), background.double()).shap_values(images.double())
    on_gpu = DeepShapEngine(copy.deepcopy(model).cuda(), background.cuda()).shap_values(images.cuda())
    assert relative_error(on_gpu, exact) <= 1e-5
    assert additivity_error(model, on_gpu, background, images) <= 1e-6


def test_the_default_pass_size_fits_the_free_memory_and_an_out_of_memory_pass_is_halved():
    """The default rows per pass come from the free device memory. A pass too large for the device (here:
    the process limited to 1 GiB and a pass of a million rows asked for) is retried at half the size until
    it fits, and the values are the same."""
    model = reference_cnn(1).cuda()
    background, images = torch.rand(64, 3, 32, 32).cuda(), torch.rand(48, 3, 32, 32)
    default = DeepShapEngine(model, background)
    assert default.max_rows >= default.n_outputs * len(background)  # a whole background per pass on an H100
    values = default.shap_values(images)

    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(2**30 / total)
    try:
        limited = DeepShapEngine(model, background, max_rows=1_000_000)
        halved = limited.shap_values(images)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert limited.max_rows < 1_000_000  # it did run out of memory, and went on
    assert relative_error(halved, values) <= 1e-6


def test_the_shap_stage_runs_its_shards_on_the_gpu_and_records_it(tmp_path):
    from tasks.deepshap.stage import GPU_SHARD_ROWS, explain_shard, merge_shards, plan_explanation, \
        restoring_torch_threads
    from tasks.model.run_model import load_run_model
    from tasks.run import layout
    from tasks.run.formats import META_DEVICE, META_SHAPE, background_images, float32_rows, read_shap_values
    from tests.test_dask import trained_cifar_run

    run_dir = trained_cifar_run(tmp_path)
    weights = str(layout.path(run_dir, "model"))
    planned = plan_explanation(weights, layout.path(run_dir, "train"), layout.path(run_dir, "validation"), run_dir,
                               background=20, rows=9, seed=0)
    assert planned["shards"] == [[0, 9]] and GPU_SHARD_ROWS >= 9  # large shards on a GPU
    with restoring_torch_threads():
        shard = explain_shard(weights, planned["plan"]["path"], run_dir, 0, 9)
    assert pq.read_schema(shard["path"]).metadata[META_DEVICE] == b"cuda"
    merged = merge_shards(planned["plan"]["path"], [shard["path"]], run_dir)
    assert merged["max_additivity_error"] < 1e-5
    values, meta = read_shap_values(merged["files"]["shap_values"]["path"])
    assert meta[META_DEVICE.decode()] == "cuda"

    module = load_run_model(weights).probability_module().cpu()
    plan = pq.read_table(planned["plan"]["path"])
    images = torch.from_numpy(float32_rows(plan.column("inputs"), json.loads(meta[META_SHAPE.decode()])))
    background = torch.from_numpy(background_images(layout.path(run_dir, "background")))
    exact = DeepShapEngine(copy.deepcopy(module).double(), background.double()).shap_values(images.double())
    assert relative_error(values, exact) <= 1e-5

