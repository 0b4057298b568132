"""Tests for checkpoints: shape errors, corrupt files, SIGTERM and resume."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mcjax import checkpoints
from mcjax import models
from mcjax import training

import training_helpers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN = 256
NUM_TEST = 200
BATCH_SIZE = 16
STEPS_PER_EPOCH = NUM_TRAIN // BATCH_SIZE
MODEL = models.VGG16(width=0.125, batch_norm=True, dropout_rate=0.0)


def _config(**overrides):
  values = dict(epochs=1, batch_size=BATCH_SIZE, eval_batch_size=NUM_TEST)
  return training_helpers.train_config(**{**values, **overrides})


@pytest.fixture(scope="module")
def dataset():
  return training_helpers.fashion_mnist_subset(NUM_TRAIN, NUM_TEST)


@pytest.fixture(scope="module")
def one_epoch(dataset, tmp_path_factory):
  """A finished one-epoch run; its checkpoints are steps 0 and 8."""
  workdir = str(tmp_path_factory.mktemp("one_epoch"))
  training.train_endpoint(MODEL, dataset, _config(), workdir, seed=0)
  return workdir


def _copy(workdir, tmp_path, name="copy"):
  target = str(tmp_path / name)
  shutil.copytree(workdir, target)
  return target


def _leaves_equal(tree_a, tree_b):
  leaves_a, leaves_b = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
  return len(leaves_a) == len(leaves_b) and all(
      np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b))


def test_width_mismatch_names_path_and_shapes(one_epoch, dataset, tmp_path):
  workdir = _copy(one_epoch, tmp_path)
  wider = models.VGG16(width=0.25, batch_norm=True)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"'params/block0_bn0/bias' with shape \(8,\).*"
                           r"expects shape \(16,\)"):
    training.train_endpoint(wider, dataset, _config(), workdir, seed=0)


def test_class_count_mismatch(one_epoch, dataset, tmp_path):
  workdir = _copy(one_epoch, tmp_path)
  fewer = models.VGG16(width=0.125, batch_norm=True, num_classes=5)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"'params/fc3/bias' with shape \(10,\).*"
                           r"expects shape \(5,\)"):
    training.train_endpoint(fewer, dataset, _config(), workdir, seed=0)


def test_depth_mismatch(one_epoch, dataset, tmp_path):
  workdir = _copy(one_epoch, tmp_path)
  deeper = models.VGG19(width=0.125, batch_norm=True)
  with pytest.raises(checkpoints.CheckpointError, match="block2_bn3"):
    training.train_endpoint(deeper, dataset, _config(), workdir, seed=0)


def test_other_seed_rejected(one_epoch, dataset, tmp_path):
  workdir = _copy(one_epoch, tmp_path)
  with pytest.raises(checkpoints.CheckpointError, match="seed=0.*seed=1"):
    training.train_endpoint(MODEL, dataset, _config(), workdir, seed=1)


def _truncate_arrays(step_dir):
  files = [path for path in glob.glob(os.path.join(step_dir, "state", "**"),
                                      recursive=True)
           if os.path.isfile(path) and f"{os.sep}d{os.sep}" in path]
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(3)


def test_corrupt_checkpoint_clear_error(one_epoch, dataset, tmp_path):
  workdir = _copy(one_epoch, tmp_path)
  newest = os.path.join(workdir, "checkpoints", str(STEPS_PER_EPOCH))
  _truncate_arrays(newest)
  with pytest.raises(checkpoints.CheckpointError,
                     match=f"{newest} is unreadable.*other saved steps are "
                           r"\[0\]: delete or move"):
    training.train_endpoint(MODEL, dataset, _config(), workdir, seed=0)


def test_corrupt_checkpoint_leaves_older_usable(one_epoch, tmp_path):
  workdir = _copy(one_epoch, tmp_path)
  _truncate_arrays(os.path.join(workdir, "checkpoints", str(STEPS_PER_EPOCH)))
  manager = checkpoints.manager(os.path.join(workdir, "checkpoints"), 10)
  state, meta = checkpoints.restore(manager, 0)
  assert int(state["step"]) == 0
  assert meta["epoch"] == 0


_SIGTERM_SCRIPT = textwrap.dedent("""
    import logging
    import os
    import signal
    import sys

    from absl import logging as absl_logging
    import ml_collections

    from mcjax import data, models, training
    from mcjax.data import fashion_mnist


    class SigtermAfterFirstStep(logging.Handler):

      def emit(self, record):
        if record.getMessage().startswith("First step"):
          os.kill(os.getpid(), signal.SIGTERM)


    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_logger().addHandler(SigtermAfterFirstStep())
    full = fashion_mnist.load_idx()
    dataset = data.Dataset(
        name=full.name, train=full.train.take({num_train}),
        test=full.test.take({num_test}), num_classes=10, mean=full.mean,
        std=full.std)
    config = ml_collections.ConfigDict({config})
    model = models.VGG16(width=0.125, batch_norm=True, dropout_rate=0.0)
    training.train_endpoint(model, dataset, config, sys.argv[1], seed=0)
""")


def test_sigterm_saves_and_resume_matches(one_epoch, dataset, tmp_path):
  config = _config(epochs=2)
  interrupted = _copy(one_epoch, tmp_path, "interrupted")
  script = tmp_path / "train.py"
  script.write_text(_SIGTERM_SCRIPT.format(
      num_train=NUM_TRAIN, num_test=NUM_TEST, config=config.to_dict()))
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  result = subprocess.run([sys.executable, str(script), interrupted],
                          env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
  assert "SIGTERM received" in result.stderr

  # The run resumed at step 8 and took one step before the signal.
  manager = checkpoints.manager(os.path.join(interrupted, "checkpoints"), 10)
  assert manager.all_steps() == [0, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1]
  manager.close()

  resumed = training.train_endpoint(MODEL, dataset, config, interrupted,
                                    seed=0)
  uninterrupted = training.train_endpoint(
      MODEL, dataset, config, _copy(one_epoch, tmp_path, "straight"), seed=0)
  assert _leaves_equal(resumed, uninterrupted)
