"""Tests for endpoint training: learning, determinism, resume, stops."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mcjax import checkpoints
from mcjax import data
from mcjax import models
from mcjax import training

import training_helpers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN = 256
NUM_TEST = 200
EPOCHS = 4
BATCH_SIZE = 16
STEPS_PER_EPOCH = NUM_TRAIN // BATCH_SIZE
MODEL = models.VGG16(width=0.125, batch_norm=True, dropout_rate=0.0)


def _config(**overrides):
  values = dict(epochs=EPOCHS, batch_size=BATCH_SIZE, eval_batch_size=NUM_TEST)
  return training_helpers.train_config(**{**values, **overrides})


@pytest.fixture(scope="module")
def dataset():
  return training_helpers.fashion_mnist_subset(NUM_TRAIN, NUM_TEST)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("endpoint"))
  variables = training.train_endpoint(MODEL, dataset, _config(), workdir,
                                      seed=0)
  return variables, workdir


def _leaves_equal(tree_a, tree_b):
  leaves_a, leaves_b = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
  return len(leaves_a) == len(leaves_b) and all(
      np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b))


def _metric_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_schedule_factors_exact():
  rates = training.learning_rates(0.05, 10)
  expected = np.float32([0.05] * 5 + [0.05 * 0.7525, 0.05 * 0.505,
                                      0.05 * 0.2575, 0.05 * 0.01,
                                      0.05 * 0.01])
  np.testing.assert_array_equal(rates, expected)


def test_schedule_reference_epochs():
  # 200 epochs: epochs 1..100 (1-based) at the base rate, epoch 101 the
  # first decayed one, epoch 180 (alpha = 0.9) and later at 1%.
  assert training.learning_rate_factor(99, 200) == 1.0
  assert training.learning_rate_factor(100, 200) == pytest.approx(
      1.0 - 0.005 / 0.4 * 0.99, abs=1e-15)
  assert training.learning_rate_factor(179, 200) == pytest.approx(0.01,
                                                                  abs=1e-15)
  assert training.learning_rate_factor(199, 200) == 0.01


def test_metrics_rates_follow_schedule(trained):
  _, workdir = trained
  rates = [line["learning_rate"] for line in _metric_lines(workdir)]
  np.testing.assert_array_equal(
      np.float32(rates), training.learning_rates(0.05, EPOCHS))


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("batch_size", 1.5), ("momentum", 1.0),
    ("augment", "yes"), ("checkpoint_every", 0)])
def test_config_invalid_field(field, value):
  with pytest.raises(ValueError, match=field):
    training.validate_endpoint_config(_config(**{field: value}))


def test_config_missing_field():
  config = _config()
  del config["keep_checkpoints"]
  with pytest.raises(ValueError, match="keep_checkpoints"):
    training.validate_endpoint_config(config)


def test_curve_config_invalid_kind():
  config = _config(num_bends=3, kind="spline", regularization="reg",
                   t_per_batch=1)
  with pytest.raises(ValueError, match="kind.*bezier"):
    training.validate_curve_config(config)


@pytest.mark.parametrize("environ,expected", [
    ({}, False),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_NPROCS": "2"}, True),
    ({"SLURM_NTASKS": "4"}, False),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2"},
     True),
    ({"JAX_NUM_PROCESSES": "2"}, False),
])
def test_distributed_decision(environ, expected):
  assert training.should_initialize_distributed(environ) == expected


def test_learns_above_chance(trained, dataset):
  variables, _ = trained
  metrics = training.evaluate(MODEL, variables, dataset.test,
                              mean=dataset.mean, std=dataset.std)
  # Chance is 90% error on ten classes.
  assert metrics["error"] < 70.0


def test_evaluate_matches_direct(trained, dataset):
  variables, _ = trained
  x = data.normalize(dataset.test.images, dataset.mean, dataset.std)
  logits = MODEL.apply(variables, x, train=False)
  labels = dataset.test.labels
  nll = float(optax.softmax_cross_entropy_with_integer_labels(
      logits, labels).mean())
  error = 100.0 * float(jnp.mean(jnp.argmax(logits, -1) != labels))
  # 64 does not divide 200, so the last batch is partial.
  metrics = training.evaluate(MODEL, variables, dataset.test,
                              mean=dataset.mean, std=dataset.std,
                              batch_size=64)
  assert metrics["num_examples"] == NUM_TEST
  assert metrics["nll"] == pytest.approx(nll, rel=1e-5)
  assert metrics["loss"] == metrics["nll"]
  assert metrics["error"] == pytest.approx(error, abs=1e-4)
  assert metrics["accuracy"] == pytest.approx(100.0 - error, abs=1e-4)


def test_metrics_one_line_per_epoch(trained):
  _, workdir = trained
  lines = _metric_lines(workdir)
  assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
  assert [line["step"] for line in lines] == [
      STEPS_PER_EPOCH * epoch for epoch in range(1, EPOCHS + 1)]
  for line in lines:
    assert np.isfinite(line["train_loss"])
    assert np.isfinite(line["test_error"])
    assert line["examples_per_second"] > 0


def test_resume_bit_identical(trained, dataset, tmp_path):
  variables, workdir = trained
  resumed_dir = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed_dir)
  # Drop the checkpoints after epoch 2, as if the run had stopped there.
  for epoch in range(3, EPOCHS + 1):
    shutil.rmtree(os.path.join(resumed_dir, "checkpoints",
                               str(epoch * STEPS_PER_EPOCH)))
  resumed = training.train_endpoint(MODEL, dataset, _config(), resumed_dir,
                                    seed=0)
  assert _leaves_equal(resumed, variables)
  assert [line["epoch"] for line in _metric_lines(resumed_dir)] == list(
      range(1, EPOCHS + 1))


def test_finished_run_not_retrained(trained, dataset):
  variables, workdir = trained
  before = _metric_lines(workdir)
  again = training.train_endpoint(MODEL, dataset, _config(), workdir, seed=0)
  assert _leaves_equal(again, variables)
  assert _metric_lines(workdir) == before


def test_same_seed_same_params(trained, dataset, tmp_path):
  variables, _ = trained
  again = training.train_endpoint(MODEL, dataset, _config(), str(tmp_path),
                                  seed=0)
  assert _leaves_equal(again, variables)


def test_non_finite_loss_stops(dataset, tmp_path):
  config = _config(learning_rate=1e8, epochs=2)
  with pytest.raises(training.NonFiniteLossError,
                     match="non-finite.*last good checkpoint is step 0"):
    training.train_endpoint(MODEL, dataset, config, str(tmp_path), seed=0)
  manager = checkpoints.manager(str(tmp_path / "checkpoints"), 10)
  assert manager.all_steps() == [0]


_SHARDED_STEP_SCRIPT = textwrap.dedent("""
    import json

    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    import numpy as np

    from mcjax import models
    from mcjax.training import steps

    model = models.VGG(blocks=((8,), (8,), (16,), (16,), (16,)),
                       batch_norm=True)
    rng = np.random.default_rng(0)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
    variables = jax.tree.map(
        lambda leaf: rng.normal(0.0, 0.1, leaf.shape).astype(np.float32),
        abstract)
    images = rng.integers(0, 256, (64, 32, 32, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, (64,), dtype=np.int32)
    permutation = rng.permutation(64).astype(np.int32)


    def run(devices):
      mesh = Mesh(np.array(devices), ("data",))
      config = steps.StepConfig(
          model=model, mean=(0.5,), std=(0.25,), augment=True, batch_size=32,
          momentum=0.9, weight_decay=5e-4,
          batch_sharding=NamedSharding(mesh, PartitionSpec("data")))
      tx = steps.endpoint_optimizer(config, 0.05)
      state = {"step": np.int32(0), "params": variables["params"],
               "batch_stats": variables["batch_stats"],
               "opt_state": tx.init(variables["params"]),
               "train_sums": steps.zero_sums()}
      replicated = NamedSharding(mesh, PartitionSpec())
      state, batch_images, batch_labels, order = jax.device_put(
          (state, images, labels, permutation), replicated)
      for position in range(2):
        state = steps.jit_endpoint_step(
            config, state, batch_images, batch_labels, order,
            jnp.int32(position), jax.random.key(3), jnp.float32(0.05))
      return jax.device_get(state)


    single = run(jax.devices()[:1])
    sharded = run(jax.devices())
    differences = [
        float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
        for a, b in zip(jax.tree.leaves(single["params"]),
                        jax.tree.leaves(sharded["params"]))]
    print(json.dumps({
        "devices": len(jax.devices()),
        "max_relative_difference": max(differences),
        "params_changed": bool(np.any(
            single["params"]["block0_conv0"]["kernel"]
            != variables["params"]["block0_conv0"]["kernel"])),
    }))
""")


def test_sharded_step_matches_single_device(tmp_path):
  script = tmp_path / "sharded.py"
  script.write_text(_SHARDED_STEP_SCRIPT)
  env = dict(os.environ, PYTHONPATH=REPO_ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = subprocess.run([sys.executable, str(script)], env=env,
                          capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 4
  assert report["params_changed"]
  assert report["max_relative_difference"] < 1e-5
