"""Tests for dataset loading, normalisation and augmentation.

The CIFAR-10 and IDX files are written here from the format descriptions
(pickled dicts of CHW-flattened rows, big-endian IDX headers), not with the
readers under test. Every image carries its index in its first pixel
(channel 0 holds index % 256, channel 1 holds index // 256) so that splits
can be told apart.
"""

import functools
import gzip
import importlib.util
import io
import os
import pickle
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from mcjax import data
from mcjax.data import cifar10
from mcjax.data import fashion_mnist
from mcjax.data import transforms

CIFAR_BATCH = 6  # images per CIFAR-10 batch file, so 30 train and 6 test
TEST_OFFSET = 100  # test images carry indices from 100 on


def _image(index, shape):
  """A random uint8 image of `shape` (H, W, C) tagged with `index`."""
  image = np.random.default_rng(index).integers(0, 256, shape, np.uint8)
  image[0, 0, 0] = index % 256
  if shape[-1] > 1:
    image[0, 0, 1] = index // 256
  return image


def _indices(images):
  """Reads the index tags back from images (N, H, W, C)."""
  images = np.asarray(images).astype(np.int64)
  return images[:, 0, 0, 0] + 256 * images[:, 0, 0, 1]


def _cifar_images(start, count):
  images = np.stack([_image(start + i, (32, 32, 3)) for i in range(count)])
  labels = [(start + i) % 10 for i in range(count)]
  return images, labels


def _cifar_batch_bytes(images, labels):
  # Each row is the red plane, then green, then blue, each row-major 32x32.
  rows = np.stack([np.concatenate([image[:, :, c].ravel() for c in range(3)])
                   for image in images])
  batch = {b"batch_label": b"test batch", b"labels": list(labels),
           b"data": rows, b"filenames": [b"x.png"] * len(labels)}
  # The official files are protocol-2 pickles.
  return pickle.dumps(batch, protocol=2)


def _cifar_files():
  """Returns {file name: bytes} for the six batch files, and the arrays."""
  files, expected = {}, {"train": [], "test": []}
  for b, name in enumerate(cifar10.FILES["train"]):
    images, labels = _cifar_images(b * CIFAR_BATCH, CIFAR_BATCH)
    files[name] = _cifar_batch_bytes(images, labels)
    expected["train"].append((images, labels))
  images, labels = _cifar_images(TEST_OFFSET, CIFAR_BATCH)
  files["test_batch"] = _cifar_batch_bytes(images, labels)
  expected["test"].append((images, labels))
  expected = {split: (np.concatenate([i for i, _ in parts]),
                      np.concatenate([l for _, l in parts]))
              for split, parts in expected.items()}
  return files, expected


@pytest.fixture(scope="module")
def cifar_expected():
  return _cifar_files()[1]


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("cifar_folder")
  folder = root / cifar10.FOLDER
  folder.mkdir()
  for name, content in _cifar_files()[0].items():
    (folder / name).write_bytes(content)
  return root


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory):
  root = tmp_path_factory.mktemp("cifar_archive")
  with tarfile.open(root / cifar10.ARCHIVE, "w:gz") as archive:
    for name, content in _cifar_files()[0].items():
      info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
      info.size = len(content)
      archive.addfile(info, io.BytesIO(content))
  return root


def _idx_bytes(array):
  """IDX encoding: 0, 0, type 0x08 (uint8), ndim, big-endian sizes, data."""
  header = bytes([0, 0, 0x08, array.ndim])
  for size in array.shape:
    header += size.to_bytes(4, "big")
  return header + array.astype(np.uint8).tobytes(order="C")


def _fashion_arrays(start, count):
  images = np.stack([_image(start + i, (28, 28, 1))[..., 0]
                     for i in range(count)])
  labels = np.array([(start + i) % 10 for i in range(count)], np.uint8)
  return images, labels


def _write_fashion(folder, num_train=20, num_test=7):
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {"train": _fashion_arrays(0, num_train),
            "test": _fashion_arrays(TEST_OFFSET, num_test)}
  for split, (images_file, labels_file) in fashion_mnist.FILES.items():
    images, labels = arrays[split]
    (folder / images_file).write_bytes(gzip.compress(_idx_bytes(images)))
    (folder / labels_file).write_bytes(gzip.compress(_idx_bytes(labels)))
  return arrays


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fashion")
  return folder, _write_fashion(folder)


# CIFAR-10 python batches.


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_cifar_python_round_trip(layout, cifar_folder, cifar_archive,
                                 cifar_expected):
  root = cifar_folder if layout == "folder" else cifar_archive
  dataset = data.load("cifar10", source="python", data_dir=str(root))
  for split in ("train", "test"):
    images, labels = cifar_expected[split]
    np.testing.assert_array_equal(dataset.split(split).images, images)
    np.testing.assert_array_equal(dataset.split(split).labels, labels)


def test_cifar_channels_are_hwc(cifar_folder):
  # Pixel (h, w) of channel c sits at c * 1024 + h * 32 + w of a stored row.
  dataset = data.load("cifar10", source="python", data_dir=str(cifar_folder))
  row = np.frombuffer(pickle.loads(
      (cifar_folder / cifar10.FOLDER / "data_batch_1").read_bytes(),
      encoding="bytes")[b"data"][3].tobytes(), np.uint8)
  image = np.asarray(dataset.train.images[3])
  for c in range(3):
    for h, w in [(0, 1), (5, 17), (31, 31)]:
      assert image[h, w, c] == row[c * 1024 + h * 32 + w]
  assert not np.array_equal(image[..., 0], image[..., 1])


def test_cifar_dtypes_and_shapes(cifar_archive):
  dataset = data.load("cifar10", source="python", data_dir=cifar_archive)
  assert dataset.train.images.shape == (5 * CIFAR_BATCH, 32, 32, 3)
  assert dataset.test.images.shape == (CIFAR_BATCH, 32, 32, 3)
  assert dataset.train.images.dtype == jnp.uint8
  assert dataset.train.labels.dtype == jnp.int32
  assert dataset.num_classes == 10
  assert dataset.mean == transforms.CIFAR10_MEAN


def test_cifar_batch_folder_given_directly(cifar_folder, cifar_expected):
  dataset = data.load("cifar10", data_dir=str(cifar_folder / cifar10.FOLDER))
  np.testing.assert_array_equal(dataset.test.images, cifar_expected["test"][0])


def test_cifar_search_env_dir(cifar_archive, monkeypatch, tmp_path):
  monkeypatch.setenv("MCJAX_DATA_DIR", str(cifar_archive))
  monkeypatch.chdir(tmp_path)
  dataset = data.load("cifar10", source="python")
  assert len(dataset.train) == 5 * CIFAR_BATCH


def test_cifar_truncated_archive(cifar_archive, tmp_path):
  content = (cifar_archive / cifar10.ARCHIVE).read_bytes()
  path = tmp_path / cifar10.ARCHIVE
  path.write_bytes(content[:len(content) // 2])
  with pytest.raises(ValueError, match=str(path)) as error:
    data.load("cifar10", source="python", data_dir=str(tmp_path))
  assert "truncated or corrupt" in str(error.value)


def test_cifar_truncated_batch(cifar_folder, tmp_path):
  folder = tmp_path / cifar10.FOLDER
  folder.mkdir()
  for name in cifar10.FILES["train"] + cifar10.FILES["test"]:
    content = (cifar_folder / cifar10.FOLDER / name).read_bytes()
    if name == "test_batch":
      content = content[:100]
    (folder / name).write_bytes(content)
  with pytest.raises(ValueError, match=str(folder / "test_batch")):
    data.load("cifar10", source="python", data_dir=str(tmp_path))


def test_cifar_missing_batch_named(cifar_folder, tmp_path):
  folder = tmp_path / cifar10.FOLDER
  folder.mkdir()
  for name in ("data_batch_1", "data_batch_2"):
    (folder / name).write_bytes(
        (cifar_folder / cifar10.FOLDER / name).read_bytes())
  with pytest.raises(FileNotFoundError, match="data_batch_3"):
    data.load("cifar10", source="python", data_dir=str(tmp_path))


def test_cifar_pickle_with_other_globals(tmp_path):
  folder = tmp_path / cifar10.FOLDER
  folder.mkdir()
  batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
           b"extra": os.path.join}
  for name in cifar10.FILES["train"] + cifar10.FILES["test"]:
    (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
  with pytest.raises(ValueError, match="posixpath.join"):
    data.load("cifar10", source="python", data_dir=str(tmp_path))


# Fashion-MNIST IDX files.


def test_fashion_idx_round_trip(fashion_dir):
  folder, arrays = fashion_dir
  dataset = data.load("fashion_mnist", source="idx", data_dir=str(folder))
  for split in ("train", "test"):
    images, labels = arrays[split]
    loaded = np.asarray(dataset.split(split).images)
    np.testing.assert_array_equal(loaded[:, 2:30, 2:30, 0], images)
    np.testing.assert_array_equal(dataset.split(split).labels, labels)


def test_fashion_padding_is_zero(fashion_dir):
  folder, _ = fashion_dir
  dataset = data.load("fashion_mnist", source="idx", data_dir=str(folder))
  images = np.asarray(dataset.train.images)
  assert images.shape == (20, 32, 32, 1)
  border = images.copy()
  border[:, 2:30, 2:30, :] = 0
  assert not border.any()


def test_fashion_torchvision_layout(tmp_path):
  arrays = _write_fashion(tmp_path / "FashionMNIST" / "raw", 3, 2)
  dataset = data.load("fashion_mnist", data_dir=str(tmp_path))
  np.testing.assert_array_equal(dataset.test.labels, arrays["test"][1])


def test_fashion_truncated_gzip(fashion_dir, tmp_path):
  folder, _ = fashion_dir
  for name in fashion_mnist.FILES["train"] + fashion_mnist.FILES["test"]:
    (tmp_path / name).write_bytes((folder / name).read_bytes())
  path = tmp_path / fashion_mnist.FILES["train"][0]
  content = path.read_bytes()
  path.write_bytes(content[:len(content) // 2])
  with pytest.raises(ValueError, match=str(path)):
    data.load("fashion_mnist", source="idx", data_dir=str(tmp_path))


def test_fashion_truncated_idx_payload(fashion_dir, tmp_path):
  folder, _ = fashion_dir
  for name in fashion_mnist.FILES["train"] + fashion_mnist.FILES["test"]:
    (tmp_path / name).write_bytes((folder / name).read_bytes())
  path = tmp_path / fashion_mnist.FILES["test"][1]
  path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-1]))
  with pytest.raises(ValueError, match=f"{path} is truncated"):
    data.load("fashion_mnist", source="idx", data_dir=str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
  dataset = data.load("fashion_mnist", source="idx")
  assert dataset.train.images.shape == (60000, 32, 32, 1)
  assert dataset.test.images.shape == (10000, 32, 32, 1)
  assert dataset.train.images.dtype == jnp.uint8
  np.testing.assert_array_equal(np.unique(dataset.train.labels), np.arange(10))
  np.testing.assert_array_equal(np.unique(dataset.test.labels), np.arange(10))


# TFDS, mocked.


def test_tfds_mock_shapes():
  with tfds.testing.mock_data(num_examples=5):
    cifar = data.load("cifar10", source="tfds")
    fashion = data.load("fashion_mnist", source="tfds")
  assert cifar.train.images.shape == (5, 32, 32, 3)
  assert fashion.test.images.shape == (5, 32, 32, 1)
  assert fashion.test.images.dtype == jnp.uint8
  assert fashion.test.labels.dtype == jnp.int32
  assert not np.asarray(fashion.test.images)[:, :2].any()


def _fake_source(shape, counts):
  """An as_data_source_fn that returns index-tagged examples per split."""

  def as_data_source(self, split=None, **kwargs):
    del self, kwargs
    start = TEST_OFFSET if split == "test" else 0
    return [{"image": _image(start + i, shape), "label": (start + i) % 10}
            for i in range(counts[split])]

  return as_data_source


def test_tfds_cifar_round_trip():
  counts = {"train": 7, "test": 3}
  with tfds.testing.mock_data(
      as_data_source_fn=_fake_source((32, 32, 3), counts)):
    dataset = data.load("cifar10", source="tfds")
  for split, start in (("train", 0), ("test", TEST_OFFSET)):
    expected = np.stack([_image(start + i, (32, 32, 3))
                         for i in range(counts[split])])
    np.testing.assert_array_equal(dataset.split(split).images, expected)
    np.testing.assert_array_equal(
        dataset.split(split).labels,
        [(start + i) % 10 for i in range(counts[split])])


def test_tfds_fashion_round_trip_padded():
  counts = {"train": 4, "test": 2}
  with tfds.testing.mock_data(
      as_data_source_fn=_fake_source((28, 28, 1), counts)):
    dataset = data.load("fashion_mnist", source="tfds")
  expected = np.stack([_image(i, (28, 28, 1)) for i in range(4)])
  expected = np.pad(expected, ((0, 0), (2, 2), (2, 2), (0, 0)))
  np.testing.assert_array_equal(dataset.train.images, expected)


def test_tfds_wrong_image_shape():
  counts = {"train": 2, "test": 2}
  with tfds.testing.mock_data(
      as_data_source_fn=_fake_source((28, 28, 3), counts)):
    with pytest.raises(ValueError, match=r"\(28, 28, 3\)"):
      data.load("fashion_mnist", source="tfds")


def test_tfds_not_prepared(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.load("cifar10", source="tfds", data_dir=str(tmp_path))
  message = str(error.value)
  assert str(tmp_path / "cifar10") in message
  assert "TensorFlow" in message


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed")
def test_tfds_download_needs_tensorflow():
  # mock_data turns download_and_prepare into a no-op, so nothing is fetched
  # even if the TensorFlow check were missing.
  with tfds.testing.mock_data(num_examples=1):
    with pytest.raises(ImportError, match="needs TensorFlow"):
      data.load("fashion_mnist", source="tfds", download=True)


def _stub_builder(name, version, shape, counts):
  """A builder class that writes index-tagged examples under `name`."""

  class Stub(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version(version)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=shape),
              "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(0, counts["train"]),
              "test": self._generate_examples(TEST_OFFSET, counts["test"])}

    def _generate_examples(self, start, count):
      for i in range(count):
        index = start + i
        yield index, {"image": _image(index, shape), "label": index % 10}

  Stub.name = name
  return Stub


def _encode_png(self, image):
  del self
  buffer = io.BytesIO()
  image = np.asarray(image)
  PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buffer, format="PNG")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A TFDS data_dir with real array_record files for both datasets.

  TFDS 4.9.10 encodes images with TensorFlow. A PIL PNG encoder replaces
  it, so the files are prepared here without TensorFlow or network access.
  """
  data_dir = tmp_path_factory.mktemp("tfds")
  counts = {"train": 9, "test": 4}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds.features.Image, "encode_example", _encode_png)
    with tfds.core.registered.skip_registration():
      for name, version, shape in (("cifar10", "3.0.2", (32, 32, 3)),
                                   ("fashion_mnist", "3.0.1", (28, 28, 1))):
        builder = _stub_builder(name, version, shape, counts)
        builder(data_dir=str(data_dir)).download_and_prepare(
            file_format="array_record")
  return data_dir, counts


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_tfds_array_record_round_trip(name, tfds_dir):
  data_dir, counts = tfds_dir
  dataset = data.load(name, source="tfds", data_dir=str(data_dir))
  for split, start in (("train", 0), ("test", TEST_OFFSET)):
    images = np.asarray(dataset.split(split).images)
    labels = np.asarray(dataset.split(split).labels)
    if name == "fashion_mnist":
      assert images.shape[1:] == (32, 32, 1)
      assert not images[:, :2].any()
      images = images[:, 2:30, 2:30]
    # TFDS shuffles examples when it prepares them, so match by index tag.
    indices = _indices(images) if name == "cifar10" else images[:, 0, 0, 0]
    np.testing.assert_array_equal(
        np.sort(indices), np.arange(start, start + counts[split]))
    for image, label, index in zip(images, labels, indices):
      np.testing.assert_array_equal(image, _image(int(index), image.shape))
      assert label == index % 10


# Source selection, missing data and validation.


def test_auto_prefers_local_files(fashion_dir):
  folder, arrays = fashion_dir
  with tfds.testing.mock_data(num_examples=3):
    dataset = data.load("fashion_mnist", data_dir=str(folder))
  assert len(dataset.train) == len(arrays["train"][1])


def test_auto_falls_back_to_tfds(tmp_path):
  with tfds.testing.mock_data(num_examples=3):
    dataset = data.load("cifar10", data_dir=str(tmp_path))
  assert len(dataset.train) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "mnist"}, r"\('cifar10', 'fashion_mnist'\)"),
    ({"name": "cifar10", "source": "web"},
     r"\('auto', 'tfds', 'python', 'idx'\)"),
    ({"name": "cifar10", "source": "idx"}, r"\('auto', 'tfds', 'python'\)"),
    ({"name": "fashion_mnist", "source": "python"}, "'idx'"),
    ({"name": "cifar10", "download": True}, "source='tfds'"),
])
def test_invalid_arguments(kwargs, match):
  name = kwargs.pop("name")
  with pytest.raises(ValueError, match=match):
    data.load(name, **kwargs)


def test_missing_cifar_lists_places(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.load("cifar10", data_dir=str(tmp_path))
  message = str(error.value)
  for place in (tmp_path, tmp_path / cifar10.FOLDER,
                tmp_path / cifar10.ARCHIVE, tmp_path / "cifar10"):
    assert f"  - {place}" in message
  assert cifar10.URL in message
  assert "TensorFlow" in message


def test_missing_cifar_default_dirs(tmp_path, monkeypatch):
  monkeypatch.setenv("MCJAX_DATA_DIR", str(tmp_path / "env"))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError) as error:
    data.load("cifar10", source="python")
  message = str(error.value)
  for directory in ("env", "data", "home/data"):
    assert f"  - {tmp_path / directory / cifar10.ARCHIVE}" in message


def test_missing_fashion_names_apt(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.load("fashion_mnist", source="idx", data_dir=str(tmp_path))
  message = str(error.value)
  assert "apt-get install dataset-fashion-mnist" in message
  assert f"  - {tmp_path / 'FashionMNIST' / 'raw'}" in message


def test_validation_is_last_examples(cifar_folder):
  dataset = data.load("cifar10", data_dir=str(cifar_folder), validation=True,
                      num_validation=8)
  num_train = 5 * CIFAR_BATCH
  np.testing.assert_array_equal(_indices(dataset.train.images),
                                np.arange(num_train - 8))
  np.testing.assert_array_equal(_indices(dataset.validation.images),
                                np.arange(num_train - 8, num_train))
  np.testing.assert_array_equal(dataset.validation.labels,
                                np.arange(num_train - 8, num_train) % 10)


def test_validation_splits_disjoint(cifar_folder):
  dataset = data.load("cifar10", data_dir=str(cifar_folder), validation=True,
                      num_validation=8)
  train, validation, test = (set(_indices(dataset.split(name).images))
                             for name in ("train", "validation", "test"))
  assert len(train) + len(validation) == 5 * CIFAR_BATCH
  assert not train & validation
  assert not train & test
  assert not validation & test


def test_validation_default_size():
  images = np.zeros((5003, 1, 1, 1), np.uint8)
  labels = np.arange(5003)
  (train_images, _), (_, validation_labels) = data.loading.hold_out(
      images, labels, data.loading.NUM_VALIDATION)
  assert len(train_images) == 3
  np.testing.assert_array_equal(validation_labels, np.arange(3, 5003))


def test_validation_too_large(cifar_folder):
  with pytest.raises(ValueError, match="num_validation must be in"):
    data.load("cifar10", data_dir=str(cifar_folder), validation=True)


# Transforms.


def _batch():
  return jnp.asarray(np.stack([_image(i, (8, 8, 3)) for i in range(5)]))


def test_augment_keeps_shape_and_dtype():
  images = _batch()
  out = jax.jit(transforms.augment)(jax.random.key(0), images)
  assert out.shape == images.shape
  assert out.dtype == images.dtype


def test_augment_deterministic_per_key():
  images = _batch()
  augment = jax.jit(transforms.augment)
  first = augment(jax.random.key(3), images)
  again = augment(jax.random.key(3), images)
  other = augment(jax.random.key(4), images)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_crop_matches_numpy():
  images = _batch()
  offsets = np.array([[0, 0], [8, 8], [3, 5], [4, 4], [7, 1]])
  out = jax.jit(transforms.crop, static_argnames="padding")(
      images, jnp.asarray(offsets), padding=4)
  padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i, (row, column) in enumerate(offsets):
    np.testing.assert_array_equal(out[i],
                                  padded[i, row:row + 8, column:column + 8])


def test_augment_output_is_a_crop():
  images = _batch()
  augment = jax.jit(functools.partial(transforms.augment, flip=False))
  out = np.asarray(augment(jax.random.key(1), images))
  padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(len(images)):
    crops = [padded[i, r:r + 8, c:c + 8] for r in range(9) for c in range(9)]
    assert any(np.array_equal(out[i], crop) for crop in crops)


def test_flip_left_right_matches_numpy():
  images = _batch()
  flips = jnp.array([True, False, True, False, False])
  out = transforms.flip_left_right(images, flips)
  np.testing.assert_array_equal(out[0], np.asarray(images[0])[:, ::-1])
  np.testing.assert_array_equal(out[1], images[1])


def test_normalize_matches_numpy():
  images = _batch()
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  out = jax.jit(transforms.normalize, static_argnums=(1, 2))(images, mean, std)
  expected = (np.asarray(images, np.float64) / 255.0 - mean) / np.array(std)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
