"""Tests for the sbatch scripts: syntax, #SBATCH lines, arrays and requeue."""

import glob
import os
import re
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_DIR = os.path.join(ROOT, "scripts", "slurm")
SBATCH_FILES = sorted(glob.glob(os.path.join(SLURM_DIR, "*.sbatch")))
SHELL_FILES = SBATCH_FILES + sorted(glob.glob(os.path.join(SLURM_DIR, "*.sh")))
DEPTH_CONFIGS = ["configs/neuronswap_early2.py", "configs/neuronswap_mid2.py",
                 "configs/neuronswap_late2.py"]
# The sbatch options that the scripts may use.
KNOWN_OPTIONS = {
    "job-name", "array", "gres", "cpus-per-task", "mem", "time", "requeue",
    "signal", "open-mode", "output", "partition", "nodes", "ntasks",
    "gpus", "error",
}
FLAG_OPTIONS = {"requeue"}


def sbatch_options(path):
  """Parses the #SBATCH lines before the first command into {option: value}.

  sbatch stops reading #SBATCH lines at the first line that is neither a
  comment nor blank, so a directive after it would be silently ignored.
  """
  options = {}
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[0] == "#!/bin/bash", f"{path}: first line is {lines[0]!r}"
  for number, line in enumerate(lines[1:], start=2):
    stripped = line.strip()
    if stripped and not stripped.startswith("#"):
      break
    if not stripped.startswith("#SBATCH"):
      continue
    match = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", stripped)
    assert match, f"{path}:{number}: cannot parse {line!r}"
    name, value = match.groups()
    assert name in KNOWN_OPTIONS, f"{path}:{number}: unknown option {name}"
    assert (value is None) == (name in FLAG_OPTIONS), (
        f"{path}:{number}: option {name} has value {value!r}")
    assert name not in options, f"{path}:{number}: {name} given twice"
    options[name] = value
  for line in lines:
    if line.startswith("#SBATCH") and line.strip()[8:] not in (
        f"--{k}" + ("" if v is None else f"={v}") for k, v in options.items()):
      pytest.fail(f"{path}: {line!r} comes after the first command")
  return options


def array_indices(spec):
  indices = []
  for part in spec.split(","):
    low, _, high = part.partition("-")
    indices += list(range(int(low), int(high or low) + 1))
  return indices


@pytest.mark.parametrize("path", SHELL_FILES, ids=os.path.basename)
def test_bash_syntax(path):
  subprocess.run(["bash", "-n", path], check=True)


@pytest.mark.parametrize("path", SBATCH_FILES, ids=os.path.basename)
def test_requeue_and_signal(path):
  options = sbatch_options(path)
  assert "requeue" in options
  assert re.fullmatch(r"B:TERM@\d+", options["signal"])


@pytest.mark.parametrize("path", SHELL_FILES, ids=os.path.basename)
def test_no_user_paths(path):
  with open(path) as f:
    code = [line for line in f if not line.lstrip().startswith("#")]
  for line in code:
    assert not re.search(r"/home/|/Users/|/scratch/|~/", line), line


def test_depth_array_covers_configs():
  options = sbatch_options(os.path.join(SLURM_DIR, "depths.sbatch"))
  assert array_indices(options["array"]) == [0, 1, 2]
  for config in DEPTH_CONFIGS:
    assert os.path.exists(os.path.join(ROOT, config))


def test_analysis_on_cpu_partition():
  options = sbatch_options(os.path.join(SLURM_DIR, "analysis.sbatch"))
  assert options["partition"] == "cpu"
  assert "gres" not in options


def test_endpoint_array_seeds():
  options = sbatch_options(os.path.join(SLURM_DIR, "endpoints.sbatch"))
  assert array_indices(options["array"]) == [0, 1]


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH folder with python3 and scontrol stubs that log their arguments."""
  folder = tmp_path / "bin"
  folder.mkdir()
  log = tmp_path / "calls.log"
  (folder / "python3").write_text(
      "#!/bin/bash\n"
      f'echo "python3 $*" >> {log}\n'
      'if [[ -n "${FAKE_SLEEP:-}" ]]; then\n'
      f'  trap \'echo "python3 got TERM" >> {log}; exit 0\' TERM\n'
      "  sleep 30 & wait\n"
      "fi\n")
  (folder / "scontrol").write_text(
      f'#!/bin/bash\necho "scontrol $*" >> {log}\n')
  for stub in folder.iterdir():
    stub.chmod(0o755)
  return folder, log


def run_script(name, fake_bin, tmp_path, task, **env):
  folder, _ = fake_bin
  environment = {
      "PATH": f"{folder}:/usr/bin:/bin", "MCJAX_ROOT": ROOT,
      "MCJAX_RESULTS_DIR": str(tmp_path / "results"),
      "MCJAX_VENV": "", "SLURM_ARRAY_TASK_ID": str(task),
      "SLURM_JOB_ID": "4242", "HOME": str(tmp_path), **env}
  return subprocess.Popen(["bash", os.path.join(SLURM_DIR, name)],
                          env=environment, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def test_depth_task_picks_config(fake_bin, tmp_path):
  process = run_script("depths.sbatch", fake_bin, tmp_path, task=1)
  assert process.wait(timeout=30) == 0
  call = fake_bin[1].read_text()
  assert "--config configs/neuronswap_mid2.py" in call
  assert f"--workdir {tmp_path}/results/neuronswap_mid2" in call
  assert (f"--config.endpoint.shared_dir={tmp_path}/results/endpoints/seed0/"
          "endpoint") in call


def test_endpoint_task_sets_seed(fake_bin, tmp_path):
  process = run_script("endpoints.sbatch", fake_bin, tmp_path, task=1)
  assert process.wait(timeout=30) == 0
  call = fake_bin[1].read_text()
  assert "--config.endpoint.seed=1" in call
  assert f"--workdir {tmp_path}/results/endpoints/seed1" in call


def test_sigterm_stops_python_and_requeues(fake_bin, tmp_path):
  process = run_script("depths.sbatch", fake_bin, tmp_path, task=0,
                       FAKE_SLEEP="1")
  log = fake_bin[1]
  deadline = time.time() + 20
  while "python3" not in (log.read_text() if log.exists() else ""):
    assert time.time() < deadline, "python3 stub never started"
    time.sleep(0.1)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=30) == 0
  calls = log.read_text().splitlines()
  assert calls[1:] == ["python3 got TERM", "scontrol requeue 4242"]
