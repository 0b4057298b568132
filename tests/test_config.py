"""Tests for the experiment configs and their validation."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from configs import base
from experiments import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path):
  spec = importlib.util.spec_from_file_location("config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize(
    "path", [p for p in CONFIG_FILES if not p.endswith("__init__.py")],
    ids=os.path.basename)
def test_config_file_valid(path):
  validation.validate(load(path))


@pytest.mark.parametrize("name,layer", [("early", "block0_conv0"),
                                        ("mid", "block2_conv1"),
                                        ("late", "block4_conv1")])
def test_depth_config_swaps_one_pair(name, layer):
  config = load(os.path.join(ROOT, "configs", f"neuronswap_{name}2.py"))
  assert validation.resolve_layer(config) == layer
  assert config.permute.num_pairs == 1


def invalid(**changes):
  config = base.get_config()
  for dotted, value in changes.items():
    section, key = dotted.split("__")
    config[section][key] = value
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config)
  return str(error.value)


def test_unknown_depth_lists_choices():
  message = invalid(permute__layer="middle")
  assert "permute.layer='middle'" in message
  assert "['early', 'mid', 'late']" in message
  assert "block2_conv1" in message


def test_pairs_above_half_layer():
  message = invalid(permute__num_pairs=129)
  assert "permute.num_pairs=129" in message
  assert "[1, 128]" in message
  assert "block2_conv1 has 256 units" in message


def test_pairs_limit_follows_width():
  config = base.get_config()
  config.model.width = 0.125
  config.permute.num_pairs = 17
  with pytest.raises(validation.ConfigError, match=r"\[1, 16\]"):
    validation.validate(config)


def test_negative_epochs():
  assert "curve.epochs=-1 is invalid; expected an integer >= 1" in invalid(
      curve__epochs=-1)


def test_unknown_dataset():
  message = invalid(dataset__name="mnist")
  assert "dataset.name='mnist'" in message
  assert "['cifar10', 'fashion_mnist']" in message


def test_every_problem_listed():
  message = invalid(curve__kind="spline", endpoint__learning_rate=0.0)
  assert "curve.kind='spline'" in message
  assert "endpoint.learning_rate=0.0" in message


def test_explicit_pairs_out_of_range():
  message = invalid(permute__pairs="3:300")
  assert "every unit must be in [0, 255]" in message


def test_explicit_pairs_repeat_unit():
  assert "each unit may appear in one pair only" in invalid(
      permute__pairs="3:4,4:5")


def test_explicit_pairs_parse_error():
  assert "'3-4' is not of the form a:b" in invalid(permute__pairs="3-4")


def test_swap_with_two_endpoints_rejected():
  assert "needs endpoint_b.enabled=False" in invalid(endpoint_b__enabled=True)


def test_matching_without_second_endpoint():
  message = invalid(permute__mode="weight_matching")
  assert "needs a second endpoint" in message


def test_same_seed_endpoints_rejected():
  config = base.get_config()
  config.endpoint_b.enabled = True
  config.endpoint_b.seed = 0
  config.permute.mode = "none"
  with pytest.raises(validation.ConfigError, match="equals endpoint.seed"):
    validation.validate(config)


def test_unknown_field_in_file():
  config = base.get_config()
  config.curve.epoch = 3
  with pytest.raises(validation.ConfigError,
                     match=r"curve\.epoch is not a known field"):
    validation.validate(config)


def test_override_name_check():
  with pytest.raises(validation.ConfigError) as error:
    validation.check_override_names(base.get_config(),
                                    ["curve.epoch", "modl.width"])
  assert "--config.curve.epoch: curve has no field 'epoch'" in str(error.value)
  assert "'epochs'" in str(error.value)
  assert "the config has no field 'modl'" in str(error.value)


def test_parse_pairs():
  assert validation.parse_pairs("3:17, 5:9") == [(3, 17), (5, 9)]


def test_cli_unknown_field_message(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run",
       "--config", os.path.join(ROOT, "configs", "base.py"),
       "--workdir", str(tmp_path), "--config.curve.epoch=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert "curve has no field 'epoch'" in result.stderr
  assert not os.listdir(tmp_path)


def test_cli_invalid_value_message(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run",
       "--config", os.path.join(ROOT, "configs", "base.py"),
       "--workdir", str(tmp_path), "--config.permute.layer=middle"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert "permute.layer='middle' is invalid" in result.stderr
  assert not os.listdir(tmp_path)
