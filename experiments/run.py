r"""Runs the staged mode-connectivity experiment of a config file.

  python -m experiments.run --config configs/neuronswap_mid2.py \
      --workdir runs/neuronswap_mid2 [--config.curve.epochs=30] \
      [--stages=curve,evaluate]

The stages are endpoint, endpoint_b (two-seed configs only), permute, curve,
evaluate, analyse, plots and report. Each writes under WORKDIR/<stage>/, is
skipped when its outputs for the same config are complete, and resumes from
its newest checkpoint when they are partial.
"""

import importlib.util
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import experiment
from experiments import pipeline
from experiments import validation

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, for example configs/quickstart.py.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Folder for the outputs of every stage; default runs/<config.name> (under "
    "$MCJAX_RESULTS_DIR when it is set).")
_STAGES = flags.DEFINE_list(
    "stages", None,
    "Comma-separated stages to run (default: all). Earlier stages they read "
    "from must be complete for the same config.")
flags.mark_flags_as_required(["config"])

_OVERRIDE = re.compile(r"^--config\.([\w.]+)")


def _config_path(argv: list[str]) -> str | None:
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; an unknown --config.<field> gets a message with the fields.

  config_flags reports an unknown field as a bare KeyError from deep inside
  the parser, so the override names are checked against the config file
  first and reported as a flags error.
  """
  path = _config_path(argv)
  names = [m.group(1) for arg in argv if (m := _OVERRIDE.match(arg))]
  if path is not None and names:
    spec = importlib.util.spec_from_file_location("_experiment_config", path)
    if spec is not None and spec.loader is not None:
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      try:
        validation.check_override_names(module.get_config(), names)
      except validation.ConfigError as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\n")
        sys.exit(1)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.stderr.write(f"FATAL Flags parsing error: {error}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(pipeline.QuietLibraryFilter())
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value, _STAGES.value)
  except (validation.ConfigError, pipeline.StageError) as error:
    # Usage errors get their message alone, without a traceback.
    sys.exit(f"FATAL {error}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
