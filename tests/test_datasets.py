import pickle

import numpy as np
import pytest
from PIL import Image

from tasks.data.sources import load_dataset
from tasks.run.errors import InputError
from tests.conftest import CIFAR_CLASSES, write_cifar10, write_imagefolder


def test_digits_are_upsampled_to_32x32_in_unit_range():
    data = load_dataset("digits")
    assert data.inputs.shape == (1797, 1, 32, 32)
    assert data.inputs.dtype == np.float32
    assert 0.0 <= data.inputs.min() and data.inputs.max() <= 1.0
    assert data.class_names == [str(i) for i in range(10)]
    assert np.bincount(data.labels).min() > 150
    assert len(set(data.source_ids)) == 1797


def test_cifar10_reads_the_standard_python_batches(cifar_dir):
    data = load_dataset(f"cifar10:{cifar_dir}")
    assert data.inputs.shape == (60, 3, 32, 32)
    assert data.class_names == CIFAR_CLASSES
    raw = pickle.load(open(cifar_dir / "cifar-10-batches-py" / "data_batch_1", "rb"))
    np.testing.assert_allclose(data.inputs[0].reshape(-1), raw["data"][0] / 255.0, rtol=1e-6)
    assert data.source_ids[0] == "cifar10:data_batch_1:0"
    assert data.provenance["batches"] == {"data_batch_1": "not the official file", "test_batch": "not the official file"}


def test_cifar10_accepts_the_batches_directory_itself(cifar_dir):
    assert len(load_dataset(f"cifar10:{cifar_dir / 'cifar-10-batches-py'}").labels) == 60


def test_cifar10_refuses_a_pickle_that_would_run_code(tmp_path):
    root = write_cifar10(tmp_path / "c")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as handle:
        pickle.dump({"data": Payload(), "labels": [0]}, handle)
    with pytest.raises(InputError, match="corrupt or not in the standard format.*builtins.print"):
        load_dataset(f"cifar10:{root}")


def test_imagefolder_resizes_any_size_and_names_classes(tmp_path):
    root = write_imagefolder(tmp_path / "f", {"a": 3, "b": 3}, size=(50, 20))
    write_imagefolder(tmp_path / "f", {"a": 2}, size=(7, 9), seed=1)  # overwrites 0.png, 1.png: mixed sizes
    data = load_dataset(f"imagefolder:{root}")
    assert data.inputs.shape == (6, 3, 32, 32)
    assert data.class_names == ["a", "b"]
    assert data.source_ids[0] == "imagefolder:a/0.png"


def test_imagefolder_mixed_gray_and_rgb_becomes_rgb(tmp_path):
    root = write_imagefolder(tmp_path / "f", {"a": 2, "b": 2}, mode="L")
    assert load_dataset(f"imagefolder:{root}").inputs.shape[1] == 1
    Image.new("RGB", (10, 10), (255, 0, 0)).save(root / "a" / "red.png")
    data = load_dataset(f"imagefolder:{root}")
    assert data.inputs.shape[1] == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"), "cannot read image"),
        (lambda root: (root / "a" / "notes.txt").write_text("hello"), "is not an image file"),
        (lambda root: [p.unlink() for p in (root / "c").iterdir()], "classes \\['c'\\] have fewer than 2 rows"),
    ],
    ids=["corrupt-image", "non-image-file", "empty-class"],
)
def test_imagefolder_bad_content_is_one_clear_error(tmp_path, make, message):
    root = write_imagefolder(tmp_path / "f", {"a": 3, "b": 3, "c": 3})
    make(root)
    with pytest.raises(InputError, match=message):
        load_dataset(f"imagefolder:{root}")


def test_single_class_is_refused(tmp_path):
    root = write_imagefolder(tmp_path / "f", {"only": 5})
    with pytest.raises(InputError, match="single class"):
        load_dataset(f"imagefolder:{root}")


def test_huge_image_is_refused_without_decoding(tmp_path, monkeypatch):
    import tasks.data.images

    root = write_imagefolder(tmp_path / "f", {"a": 2, "b": 2}, size=(64, 64))
    monkeypatch.setattr(tasks.data.images, "MAX_SOURCE_PIXELS", 1000)
    with pytest.raises(InputError, match="over 1,000 pixels"):
        load_dataset(f"imagefolder:{root}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mnist", "unknown dataset spec"),
        ("digits:extra", "takes no argument"),
        ("cifar10:", "needs a directory"),
        ("imagefolder:/no/such/dir", "does not exist"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(InputError, match=message):
        load_dataset(spec)


def test_directory_without_cifar_batches(tmp_path):
    with pytest.raises(InputError, match="no CIFAR-10 batches"):
        load_dataset(f"cifar10:{tmp_path}")


def test_empty_image_folder(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_16_bit_and_float_images_keep_their_contrast(tmp_path):
    """16-bit and float pixels are read by their own range, not clipped to 8 bits (a blank image, silently)."""
    from PIL import Image

    from tasks.data.images import read_image

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    pixels = read_image(tmp_path / "deep.png", "L")[0]
    assert pixels.min() < 0.01 and pixels.max() > 0.99 and np.unique(pixels).size > 100
    Image.fromarray((ramp / 65535.0).astype(np.float32)).save(tmp_path / "float.tif")
    np.testing.assert_allclose(read_image(tmp_path / "float.tif", "RGB")[1], pixels, atol=1e-3)
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "wide.tif")  # floats in 0..65535: no known range
    with pytest.raises(InputError, match="float pixels outside"):
        read_image(tmp_path / "wide.tif", "L")
