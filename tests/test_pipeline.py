"""Tests for the stage runner: skipping, reruns, resume and --stages."""

import os

import ml_collections
import pytest

from experiments import pipeline


def make_config():
  config = ml_collections.ConfigDict()
  config.first = ml_collections.ConfigDict({"size": 1, "log_every": 10})
  config.second = ml_collections.ConfigDict({"size": 2})
  config.third = ml_collections.ConfigDict({"size": 3})
  return config


class Recorder:
  """A stage context that counts calls and can fail once on purpose."""

  def __init__(self, workdir):
    self.workdir = workdir
    self.calls = []
    self.fail_in = None
    self.folder_of = lambda name: os.path.join(workdir, name)

  def stage(self, name):

    def run(ctx):
      ctx.calls.append(name)
      folder = ctx.folder_of(name)
      # A file that a resumed stage finds again, like a training checkpoint.
      partial = os.path.join(folder, "partial.txt")
      resumed = os.path.exists(partial)
      with open(partial, "a") as f:
        f.write("x")
      if ctx.fail_in == name:
        ctx.fail_in = None
        raise KeyboardInterrupt("simulated interruption")
      with open(os.path.join(folder, "out.txt"), "w") as f:
        f.write("resumed" if resumed else "fresh")

    return run


def make_stages(recorder):
  return [
      pipeline.Stage("first", recorder.stage("first"), fields=("first",),
                     ignore=("first.log_every",)),
      pipeline.Stage("second", recorder.stage("second"), needs=("first",),
                     fields=("second",)),
      pipeline.Stage("third", recorder.stage("third"), needs=("second",),
                     fields=("third",), extra_outputs=("third.md",)),
  ]


def run(tmp_path, config, selected=None, recorder=None):
  recorder = recorder or Recorder(str(tmp_path))
  runner = pipeline.Pipeline(make_stages(recorder), config, str(tmp_path),
                             recorder)
  states = runner.run(selected)
  return recorder, states


def test_first_run_runs_every_stage(tmp_path):
  recorder, states = run(tmp_path, make_config())
  assert recorder.calls == ["first", "second", "third"]
  assert {s.status for s in states.values()} == {"complete"}


def test_second_run_skips_everything(tmp_path):
  config = make_config()
  run(tmp_path, config)
  recorder, _ = run(tmp_path, config)
  assert recorder.calls == []


def test_changed_field_reruns_stage_and_later(tmp_path):
  config = make_config()
  run(tmp_path, config)
  config.second.size = 20
  recorder, _ = run(tmp_path, config)
  assert recorder.calls == ["second", "third"]


def test_ignored_field_reruns_nothing(tmp_path):
  config = make_config()
  run(tmp_path, config)
  config.first.log_every = 99
  recorder, _ = run(tmp_path, config)
  assert recorder.calls == []


def test_interrupted_stage_resumes(tmp_path):
  config = make_config()
  recorder = Recorder(str(tmp_path))
  recorder.fail_in = "second"
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path, config, recorder=recorder)
  assert not os.path.exists(tmp_path / "second" / pipeline.MARKER)

  recorder, _ = run(tmp_path, config)
  assert recorder.calls == ["second", "third"]
  assert (tmp_path / "second" / "out.txt").read_text() == "resumed"


def test_interrupted_stage_with_new_config_restarts(tmp_path):
  config = make_config()
  recorder = Recorder(str(tmp_path))
  recorder.fail_in = "second"
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path, config, recorder=recorder)
  config.second.size = 7
  run(tmp_path, config)
  assert (tmp_path / "second" / "out.txt").read_text() == "fresh"
  assert (tmp_path / "second" / "partial.txt").read_text() == "x"


def test_rerun_removes_stale_later_outputs(tmp_path):
  config = make_config()
  run(tmp_path, config)
  (tmp_path / "third.md").write_text("old report")
  config.first.size = 10
  run(tmp_path, config, selected=["first"])
  assert not (tmp_path / "second").exists()
  assert not (tmp_path / "third").exists()
  assert not (tmp_path / "third.md").exists()


def test_selected_stage_needs_complete_input(tmp_path):
  config = make_config()
  run(tmp_path, config, selected=["first"])
  with pytest.raises(pipeline.StageError, match="needs stage 'second'"):
    run(tmp_path, config, selected=["third"])


def test_selected_stage_rejects_stale_input(tmp_path):
  config = make_config()
  run(tmp_path, config)
  config.second.size = 5
  with pytest.raises(pipeline.StageError, match=r"second\.size: 2 -> 5"):
    run(tmp_path, config, selected=["third"])


def test_selected_subset_runs_only_it(tmp_path):
  config = make_config()
  run(tmp_path, config, selected=["first"])
  recorder, states = run(tmp_path, config, selected=["second"])
  assert recorder.calls == ["second"]
  assert states["third"].status == "missing"


def test_unknown_stage_name_rejected(tmp_path):
  with pytest.raises(ValueError, match="unknown stages \\['curv'\\]"):
    run(tmp_path, make_config(), selected=["curv"])


def test_marker_records_fingerprint_inputs(tmp_path):
  run(tmp_path, make_config())
  first = pipeline.storage.read_json(str(tmp_path / "first" / pipeline.MARKER))
  second = pipeline.storage.read_json(
      str(tmp_path / "second" / pipeline.MARKER))
  assert second["inputs"] == {"first": first["token"]}
  assert second["config"] == {"second": {"size": 2}}


def test_disabled_stage_need_dropped(tmp_path):
  recorder = Recorder(str(tmp_path))
  stages = [
      pipeline.Stage("first", recorder.stage("first"), fields=("first",)),
      pipeline.Stage("optional", recorder.stage("optional"),
                     enabled=lambda config: False),
      pipeline.Stage("second", recorder.stage("second"),
                     needs=("first", "optional"), fields=("second",)),
  ]
  runner = pipeline.Pipeline(stages, make_config(), str(tmp_path), recorder)
  runner.run()
  assert recorder.calls == ["first", "second"]


def shared_stages(recorder, shared):
  return [
      pipeline.Stage("first", recorder.stage("first"), fields=("first",),
                     shared_dir=lambda config: shared),
      pipeline.Stage("second", recorder.stage("second"), needs=("first",),
                     fields=("second",)),
  ]


def test_shared_folder_reused_across_workdirs(tmp_path):
  shared = str(tmp_path / "shared" / "first")
  config = make_config()
  for name in ("a", "b"):
    workdir = tmp_path / name
    recorder = Recorder(str(workdir))
    runner = pipeline.Pipeline(shared_stages(recorder, shared), config,
                               str(workdir), recorder)
    recorder.folder_of = runner.folder
    runner.run()
    expected = ["first", "second"] if name == "a" else ["second"]
    assert recorder.calls == expected
  assert os.path.exists(os.path.join(shared, pipeline.MARKER))


def test_stale_shared_folder_is_error(tmp_path):
  shared = str(tmp_path / "shared" / "first")
  config = make_config()
  recorder = Recorder(str(tmp_path / "a"))
  runner = pipeline.Pipeline(shared_stages(recorder, shared), config,
                             str(tmp_path / "a"), recorder)
  recorder.folder_of = runner.folder
  runner.run()
  config.first.size = 99
  recorder = Recorder(str(tmp_path / "b"))
  runner = pipeline.Pipeline(shared_stages(recorder, shared), config,
                             str(tmp_path / "b"), recorder)
  with pytest.raises(pipeline.StageError, match=r"first\.size: 1 -> 99"):
    runner.run()
  assert os.path.exists(os.path.join(shared, pipeline.MARKER))


def test_stage_log_records_resume(tmp_path):
  config = make_config()
  recorder = Recorder(str(tmp_path))
  recorder.fail_in = "first"
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path, config, recorder=recorder)
  run(tmp_path, config)
  log = (tmp_path / "first" / pipeline.LOG_FILE).read_text()
  assert "Stage first: starting from scratch" in log
  assert "Stage first: resuming in" in log
