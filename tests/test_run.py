"""End-to-end tests of the experiment pipeline on a tiny Fashion-MNIST run.

One module fixture runs the pipeline in a temporary workdir four times. The
first run gets SIGTERM during endpoint training. The second resumes it and
finishes every stage, the third repeats the second, and the fourth changes a
curve field. The tests check what each of those runs left behind.
"""

import glob
import os
import signal
import threading
import time

import numpy as np
import pytest

from configs import quickstart
from experiments import experiment
from experiments import pipeline
from experiments import stages
from experiments import storage

DATA_DIR = "/usr/share/datasets/fashion-mnist"
# A few hundred images, width 1/8, short training and few evaluation points.
OVERRIDES = {
    "dataset.train_size": 256,
    "dataset.test_size": 128,
    "endpoint.epochs": 2,
    "endpoint.batch_size": 32,
    "endpoint.eval_batch_size": 128,
    "curve.epochs": 1,
    "curve.batch_size": 32,
    "curve.eval_batch_size": 128,
    "permute.batch_size": 128,
    "evaluate.num_points": 3,
    "evaluate.train_size": 64,
    "evaluate.test_size": 64,
    "evaluate.batch_size": 64,
    "analyse.num_points": 5,
    "plots.fps": 5,
}
ARTIFACTS = [
    "config.json", "report.md",
    "endpoint/variables.npz", "endpoint/summary.json", "endpoint/stage.json",
    "endpoint/metrics.jsonl", "endpoint/stage.log",
    "permute/permutation.json", "permute/permutation.npz",
    "permute/variables.npz", "permute/stage.json",
    "curve/curve.npz", "curve/curve.json", "curve/metrics.jsonl",
    "curve/stage.json",
    "evaluate/curve.npz", "evaluate/curve.json", "evaluate/line.npz",
    "evaluate/line.json", "evaluate/stage.json",
    "analyse/distances.npz", "analyse/distances.json", "analyse/stage.json",
    "plots/stage.json", "report/stage.json",
]
TRAINING_STAGES = ("endpoint", "curve")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(DATA_DIR),
                       reason=f"Fashion-MNIST not in {DATA_DIR}"),
]


def tiny_config(**changes):
  config = quickstart.get_config()
  for dotted, value in {**OVERRIDES, **changes}.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


def tokens(workdir):
  """Returns {stage: completion token} for every stage with a marker."""
  found = {}
  for path in glob.glob(os.path.join(workdir, "*", pipeline.MARKER)):
    found[os.path.basename(os.path.dirname(path))] = (
        storage.read_json(path)["token"])
  return found


def checkpoint_files(workdir):
  """Returns {path: modification time} of every training checkpoint file."""
  found = {}
  for stage in TRAINING_STAGES:
    pattern = os.path.join(workdir, stage, "checkpoints", "**", "*")
    for path in glob.glob(pattern, recursive=True):
      if os.path.isfile(path):
        found[path] = os.stat(path).st_mtime_ns
  return found


def send_sigterm_when_training(workdir):
  """Starts a thread that sends SIGTERM to this process during training.

  The training loop logs "Training endpoint on" after saving its step-0
  checkpoint, then installs its SIGTERM handler and compiles the first step,
  which takes seconds. A signal 2 s after that line arrives while the
  handler is in place; the loop saves a checkpoint and raises SystemExit.
  """
  log_path = os.path.join(workdir, "endpoint", pipeline.LOG_FILE)

  def watch():
    deadline = time.time() + 600
    while time.time() < deadline:
      if os.path.exists(log_path):
        with open(log_path) as f:
          if "Training endpoint on" in f.read():
            time.sleep(2.0)
            os.kill(os.getpid(), signal.SIGTERM)
            return
      time.sleep(0.1)

  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  return thread


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs the pipeline four times in one workdir; returns what each left."""
  workdir = str(tmp_path_factory.mktemp("tiny"))
  record = {"workdir": workdir}
  # Ignore a SIGTERM that arrives before the training loop's handler, so it
  # can only fail the test, never kill the test process.
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
  try:
    watcher = send_sigterm_when_training(workdir)
    with pytest.raises(SystemExit) as interrupted:
      experiment.run(tiny_config(), workdir)
    watcher.join()
  finally:
    signal.signal(signal.SIGTERM, previous)
  record["interrupted_status"] = interrupted.value.code
  record["interrupted_tokens"] = tokens(workdir)

  record["first_states"] = experiment.run(tiny_config(), workdir)
  record["first_tokens"] = tokens(workdir)
  record["first_checkpoints"] = checkpoint_files(workdir)

  record["second_states"] = experiment.run(tiny_config(), workdir)
  record["second_tokens"] = tokens(workdir)
  record["second_checkpoints"] = checkpoint_files(workdir)

  record["changed_states"] = experiment.run(
      tiny_config(**{"curve.learning_rate": 0.02}), workdir)
  record["changed_tokens"] = tokens(workdir)
  return record


def test_run_writes_every_artifact(runs):
  for name in ARTIFACTS:
    path = os.path.join(runs["workdir"], name)
    assert os.path.getsize(path) > 0, name
  plots = os.listdir(os.path.join(runs["workdir"], "plots"))
  assert any(name.endswith(".gif") for name in plots), plots
  assert any(name.endswith(".png") for name in plots), plots


def test_sigterm_leaves_endpoint_partial(runs):
  # The training loop exits with 128 + SIGTERM after saving a checkpoint.
  assert runs["interrupted_status"] == 128 + signal.SIGTERM
  assert "endpoint" not in runs["interrupted_tokens"]


def test_interrupted_endpoint_resumes(runs):
  with open(os.path.join(runs["workdir"], "endpoint", "stage.log")) as f:
    log = f.read()
  assert "Stage endpoint: resuming" in log
  assert "Resuming endpoint training at step 1 " in log


def test_second_run_trains_nothing(runs):
  assert runs["second_tokens"] == runs["first_tokens"]
  assert runs["second_checkpoints"] == runs["first_checkpoints"]
  assert runs["first_checkpoints"]


def test_second_run_states_complete(runs):
  assert {s.status for s in runs["second_states"].values()} == {"complete"}


def test_curve_change_keeps_earlier_stages(runs):
  for stage in ("endpoint", "permute"):
    assert runs["changed_tokens"][stage] == runs["first_tokens"][stage]


def test_curve_change_reruns_later_stages(runs):
  for stage in ("curve", "evaluate", "analyse", "plots", "report"):
    assert runs["changed_tokens"][stage] != runs["first_tokens"][stage], stage


def test_permutation_json_records_check(runs):
  record = storage.read_json(
      os.path.join(runs["workdir"], "permute", "permutation.json"))
  assert record["mode"] == "swap"
  assert record["layer"] == "block2_conv1"
  assert len(record["pairs"]) == 1
  assert record["seed"] == 0
  check = record["check"]
  assert check["equivalent"] is True
  assert check["prediction_agreement"] == 1.0
  assert check["max_logit_difference"] <= 1e-3
  assert check["accuracy_original"] == check["accuracy_permuted"]
  assert check["test_examples"] == 128


def test_curve_ends_are_the_endpoints(runs):
  workdir = runs["workdir"]
  bends = storage.load_tree(os.path.join(workdir, "curve", "curve.npz"))
  start = storage.load_tree(os.path.join(workdir, "endpoint", "variables.npz"))
  end = storage.load_tree(os.path.join(workdir, "permute", "variables.npz"))
  for layer, leaves in bends.items():
    for name, leaf in leaves.items():
      np.testing.assert_array_equal(leaf[0], start["params"][layer][name])
      np.testing.assert_array_equal(leaf[-1], end["params"][layer][name])


def test_report_shows_both_barriers(runs):
  with open(os.path.join(runs["workdir"], "report.md")) as f:
    report = f.read()
  assert "| | curve | straight line |" in report
  assert "| test error (%) barrier |" in report
  assert "## Locality" in report
  assert ("**Local**" in report) or ("**Global**" in report)


def test_stages_rejects_stale_input(runs):
  config = tiny_config(**{"curve.learning_rate": 0.03})
  with pytest.raises(pipeline.StageError,
                     match=r"curve\.learning_rate: 0\.02 -> 0\.03"):
    experiment.run(config, runs["workdir"], stages=["evaluate"])


def test_inequivalent_permutation_stops(runs, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  # Reuse the trained endpoint: its marker matches this config.
  os.symlink(os.path.join(runs["workdir"], "endpoint"),
             os.path.join(workdir, "endpoint"))
  real_apply = stages.perm.apply

  def broken_apply(spec, p, variables):
    permuted = real_apply(spec, p, variables)
    permuted["params"]["fc3"]["bias"] = permuted["params"]["fc3"]["bias"] + 1.0
    return permuted

  monkeypatch.setattr(stages.perm, "apply", broken_apply)
  with pytest.raises(stages.NotEquivalentError, match="not equivalent"):
    experiment.run(tiny_config(), workdir, stages=["permute"])
  record = storage.read_json(os.path.join(workdir, "permute",
                                          "permutation.json"))
  assert record["check"]["equivalent"] is False
  assert not os.path.exists(os.path.join(workdir, "permute", pipeline.MARKER))


def test_pt_endpoint_checkpoint_is_imported(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from mcjax import interop  # pylint: disable=import-outside-toplevel
  from mcjax import models  # pylint: disable=import-outside-toplevel
  from mcjax import pytrees  # pylint: disable=import-outside-toplevel

  model_config = tiny_config().model
  model = models.VGG16(num_classes=10, width=model_config.width,
                       batch_norm=model_config.batch_norm,
                       dropout_rate=model_config.dropout_rate)
  example = np.zeros((1, 32, 32, 1), np.float32)
  variables = jax.device_get(jax.jit(model.init)(jax.random.key(7), example))
  path = str(tmp_path / "endpoint.pt")
  interop.save_endpoint(path, model, variables)

  workdir = str(tmp_path / "run")
  experiment.run(tiny_config(**{"endpoint.checkpoint": path}), workdir,
                 stages=["endpoint", "permute"])

  loaded = pytrees.flatten_with_names(storage.load_tree(
      os.path.join(workdir, "endpoint", "variables.npz")))
  expected = pytrees.flatten_with_names(variables)
  assert sorted(loaded) == sorted(expected)
  for name, leaf in expected.items():
    np.testing.assert_array_equal(loaded[name], leaf)
  summary = storage.read_json(os.path.join(workdir, "endpoint", "summary.json"))
  assert summary["checkpoint"] == path
  record = storage.read_json(
      os.path.join(workdir, "permute", "permutation.json"))
  assert record["check"]["equivalent"]
  assert record["check"]["prediction_agreement"] == 1.0
