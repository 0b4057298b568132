"""Tests for mcjax.interop against PyTorch modules with the reference layout.

The PyTorch modules below are written here, not imported: they reproduce
the state-dict layout of dnn-mode-connectivity's VGGBase (`layer_blocks`,
`classifier.{1,4,6}`) and of CurveNet over VGGCurve (`coeff_layer.`,
`net.layer_blocks...weight_{k}`, `net.fc{1,2,3}`), and apply every layer in
the order Conv-BN-ReLU.
"""

import math
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import curves
from mcjax import interop
from mcjax import models
from mcjax import pytrees

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

# VGG16 at width 1/8: every convolution and hidden layer has 1/8 the units.
EIGHTH_BLOCKS = [[64 // 8] * 2, [128 // 8] * 2, [256 // 8] * 3, [512 // 8] * 3,
                 [512 // 8] * 3]
EIGHTH_HIDDEN = 512 // 8
WIDTH = 1 / 8


def _torch_blocks(layer_blocks, batch_norm, make_conv, make_bn):
  in_channels = 3
  for block in EIGHTH_BLOCKS:
    layers = nn.ModuleList()
    for channels in block:
      layers.append(make_conv(in_channels, channels))
      if batch_norm:
        layers.append(make_bn(channels))
      in_channels = channels
    layer_blocks.append(layers)


class TorchVGG(nn.Module):
  """VGG16 at width 1/8 with the state-dict keys of VGGBase."""

  def __init__(self, num_classes=10, batch_norm=False, map_size=1):
    super().__init__()
    self.batch_norm = batch_norm
    self.layer_blocks = nn.ModuleList()
    _torch_blocks(self.layer_blocks, batch_norm,
                  lambda i, o: nn.Conv2d(i, o, kernel_size=3, padding=1),
                  nn.BatchNorm2d)
    flat = EIGHTH_BLOCKS[-1][-1] * map_size * map_size
    self.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(flat, EIGHTH_HIDDEN), nn.ReLU(),
        nn.Dropout(), nn.Linear(EIGHTH_HIDDEN, EIGHTH_HIDDEN), nn.ReLU(),
        nn.Linear(EIGHTH_HIDDEN, num_classes))

  def forward(self, x):
    for layers in self.layer_blocks:
      for layer in layers:
        x = layer(x)
        # ReLU follows the batch norm, or the convolution without one.
        if isinstance(layer, nn.BatchNorm2d) or not self.batch_norm:
          x = F.relu(x)
      x = F.max_pool2d(x, 2)
    return self.classifier(x.flatten(1))


class Bends(nn.Module):
  """One parameter per bend for each name, registered like CurveModule."""

  def __init__(self, shapes, num_bends):
    super().__init__()
    self.num_bends = num_bends
    for name, shape in shapes.items():
      for k in range(num_bends):
        self.register_parameter(f"{name}_{k}",
                                nn.Parameter(torch.empty(shape)))

  def at(self, name, coeffs):
    total = getattr(self, f"{name}_0") * coeffs[0]
    for k in range(1, self.num_bends):
      total = total + getattr(self, f"{name}_{k}") * coeffs[k]
    return total


class BendsBatchNorm(Bends):

  def __init__(self, channels, num_bends):
    super().__init__({"weight": (channels,), "bias": (channels,)}, num_bends)
    self.register_buffer("running_mean", torch.zeros(channels))
    self.register_buffer("running_var", torch.ones(channels))
    self.register_buffer("num_batches_tracked", torch.tensor(0))


class TorchBernstein(nn.Module):
  """The Bezier coefficient module: buffers binom, range and rev_range."""

  def __init__(self, num_bends):
    super().__init__()
    self.register_buffer("binom", torch.tensor(
        [float(math.comb(num_bends - 1, i)) for i in range(num_bends)]))
    self.register_buffer("range", torch.arange(0.0, num_bends))
    self.register_buffer("rev_range", torch.arange(num_bends - 1.0, -1, -1))

  def forward(self, t):
    return self.binom * t**self.range * (1.0 - t)**self.rev_range


class TorchVGGCurveNet(nn.Module):
  """A Bezier curve of TorchVGG with the keys of CurveNet over VGGCurve."""

  def __init__(self, num_bends, batch_norm=False):
    super().__init__()
    self.coeff_layer = TorchBernstein(num_bends)
    self.net = nn.Module()
    self.net.layer_blocks = nn.ModuleList()
    _torch_blocks(
        self.net.layer_blocks, batch_norm,
        lambda i, o: Bends({"weight": (o, i, 3, 3), "bias": (o,)}, num_bends),
        lambda c: BendsBatchNorm(c, num_bends))
    sizes = [(EIGHTH_BLOCKS[-1][-1], EIGHTH_HIDDEN),
             (EIGHTH_HIDDEN, EIGHTH_HIDDEN), (EIGHTH_HIDDEN, 10)]
    for index, (fan_in, fan_out) in enumerate(sizes, start=1):
      setattr(self.net, f"fc{index}",
              Bends({"weight": (fan_out, fan_in), "bias": (fan_out,)},
                    num_bends))

  def forward(self, x, t):
    coeffs = self.coeff_layer(torch.tensor(t))
    for layers in self.net.layer_blocks:
      for layer in layers:
        if isinstance(layer, BendsBatchNorm):
          x = F.batch_norm(x, layer.running_mean, layer.running_var,
                           layer.at("weight", coeffs), layer.at("bias", coeffs),
                           training=False, eps=1e-5)
          x = F.relu(x)
        else:
          x = F.conv2d(x, layer.at("weight", coeffs), layer.at("bias", coeffs),
                       padding=1)
          if not isinstance(layers[-1], BendsBatchNorm):
            x = F.relu(x)
      x = F.max_pool2d(x, 2)
    x = x.flatten(1)
    x = F.relu(F.linear(x, self.net.fc1.at("weight", coeffs),
                        self.net.fc1.at("bias", coeffs)))
    x = F.relu(F.linear(x, self.net.fc2.at("weight", coeffs),
                        self.net.fc2.at("bias", coeffs)))
    return F.linear(x, self.net.fc3.at("weight", coeffs),
                    self.net.fc3.at("bias", coeffs))


def _randomize(module, seed):
  """Fills weights, biases and running statistics with random values.

  Conv weights are He-normal (as in the reference), so activations keep
  their scale through 13 layers and the logits depend on every layer.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in list(module.named_parameters()) + list(
        module.named_buffers()):
      if name.startswith("coeff_layer.") or "num_batches_tracked" in name:
        continue
      leaf = re.sub(r"_\d+$", "", name.split(".")[-1])
      shape = tensor.shape
      uniform = torch.rand(shape, generator=generator)
      normal = torch.randn(shape, generator=generator)
      if leaf == "weight" and len(shape) == 4:
        tensor.copy_(normal * math.sqrt(2.0 / (9 * shape[0])))
      elif leaf == "weight" and len(shape) == 2:
        tensor.copy_((2 * uniform - 1) / math.sqrt(shape[1]))
      elif leaf == "weight":  # batch-norm scale
        tensor.copy_(0.5 + uniform)
      elif leaf in ("bias", "running_mean"):
        tensor.copy_(0.1 * normal)
      elif leaf == "running_var":
        tensor.copy_(0.5 + 1.5 * uniform)
      else:
        raise ValueError(f"no random fill for {name}")
  return module


def _images(size, seed=0, batch=4):
  generator = torch.Generator().manual_seed(seed)
  return torch.randn((batch, 3, size, size), generator=generator)


def _nhwc(images):
  return jnp.asarray(images.numpy().transpose(0, 2, 3, 1))


def _state_dict(module):
  return {key: value.numpy() for key, value in module.state_dict().items()}


def _model(batch_norm=False, num_classes=10):
  return models.VGG16(width=WIDTH, batch_norm=batch_norm,
                      num_classes=num_classes)


def _random_variables(model, example, seed):
  """Returns random float32 numpy variables shaped like `model.init`.

  Filled with numpy rather than `model.init`, which compiles every
  initializer separately when run eagerly.
  """
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), example)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = pytrees.path_to_str(path)
    if name.endswith("/var"):
      values = rng.uniform(0.5, 2.0, leaf.shape)
    elif name.endswith("/scale"):
      values = rng.uniform(0.5, 1.5, leaf.shape)
    elif name.endswith("/kernel") and len(leaf.shape) == 4:
      values = rng.normal(0.0, math.sqrt(2.0 / (9 * leaf.shape[-1])),
                          leaf.shape)
    elif name.endswith("/kernel"):
      bound = 1.0 / math.sqrt(leaf.shape[0])
      values = rng.uniform(-bound, bound, leaf.shape)
    else:
      values = rng.normal(0.0, 0.1, leaf.shape)
    return values.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _assert_trees_equal(tree_a, tree_b):
  flat_a = pytrees.flatten_with_names(tree_a)
  flat_b = pytrees.flatten_with_names(tree_b)
  assert list(flat_a) == list(flat_b)
  for name in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[name]),
                                  np.asarray(flat_b[name]), err_msg=name)


@pytest.mark.parametrize("batch_norm, size", [
    (False, 32),
    (True, 32),
    (False, 64),  # five pools leave a 2x2 map, so fc1 reorders (c, h, w)
])
def test_endpoint_logits_match_torch(batch_norm, size):
  module = _randomize(TorchVGG(batch_norm=batch_norm, map_size=size // 32), 1)
  module.eval()
  images = _images(size)
  with torch.no_grad():
    expected = module(images).numpy()

  model = _model(batch_norm)
  variables = interop.endpoint_from_state_dict(_state_dict(module), model,
                                               _nhwc(images))
  logits = model.apply(variables, _nhwc(images), train=False)

  # The logits must vary across inputs, so a wrong layer cannot hide.
  assert np.std(expected) > 0.1
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [32, 64])
def test_endpoint_export_loads_into_torch(size):
  model = _model(batch_norm=True)
  images = _images(size, seed=2)
  variables = _random_variables(model, _nhwc(images), seed=3)

  state_dict = interop.endpoint_to_state_dict(model, variables)
  module = TorchVGG(batch_norm=True, map_size=size // 32).eval()
  assert list(state_dict) == list(module.state_dict())
  module.load_state_dict(
      {key: torch.from_numpy(value) for key, value in state_dict.items()},
      strict=True)
  with torch.no_grad():
    expected = module(images).numpy()

  logits = model.apply(variables, _nhwc(images), train=False)
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_endpoint_file_round_trip_bit_identical(tmp_path):
  model = _model(batch_norm=True)
  example = jnp.zeros((1, 64, 64, 3))
  variables = _random_variables(model, example, seed=5)
  path = tmp_path / "endpoint.pt"

  interop.save_endpoint(path, model, variables, epoch=7)
  loaded = interop.load_endpoint(path, model, example)

  _assert_trees_equal(loaded, variables)
  assert torch.load(path, weights_only=True)["epoch"] == 7


def test_endpoint_file_written_by_torch(tmp_path):
  module = _randomize(TorchVGG(), 6)
  path = tmp_path / "checkpoint-200.pt"
  torch.save({"epoch": 200, "model_state": module.state_dict(),
              "optimizer_state": {}}, path)

  variables = interop.load_endpoint(path, _model(), jnp.zeros((1, 32, 32, 3)))

  kernel = module.state_dict()["layer_blocks.2.1.weight"].numpy()
  np.testing.assert_array_equal(variables["params"]["block2_conv1"]["kernel"],
                                kernel.transpose(2, 3, 1, 0))


def _mcjax_curve(model, example, num_bends, kind="bezier", seed=0):
  bends = [_random_variables(model, example, seed + k)
           for k in range(num_bends)]
  # numpy stacking, because eager jnp.stack compiles once per leaf shape.
  stacked = jax.tree.map(lambda *leaves: np.stack(leaves),
                         *[bend["params"] for bend in bends])
  curve = curves.Curve(bends=stacked, kind=kind)
  return curve, bends[0].get("batch_stats")


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_file_round_trip_bit_identical(tmp_path, kind):
  model = _model(batch_norm=True)
  example = jnp.zeros((1, 64, 64, 3))
  curve, batch_stats = _mcjax_curve(model, example, num_bends=4, kind=kind)
  path = tmp_path / "curve.pt"

  interop.save_curve(path, model, curve, batch_stats)
  loaded, loaded_stats = interop.load_curve(path, model, example, num_bends=4)

  assert loaded.kind == kind
  _assert_trees_equal(loaded.bends, curve.bends)
  _assert_trees_equal(loaded_stats, batch_stats)


def test_curve_export_loads_into_torch():
  model = _model()
  example = jnp.zeros((1, 32, 32, 3))
  curve, _ = _mcjax_curve(model, example, num_bends=3)
  state_dict = interop.curve_to_state_dict(model, curve)

  module = TorchVGGCurveNet(num_bends=3)
  assert list(state_dict) == list(module.state_dict())
  module.load_state_dict(
      {key: torch.from_numpy(value) for key, value in state_dict.items()},
      strict=True)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_curve_point_matches_torch(batch_norm):
  module = _randomize(TorchVGGCurveNet(num_bends=3, batch_norm=batch_norm), 7)
  images = _images(32, seed=3)
  t = 0.3
  with torch.no_grad():
    expected_logits = module(images, t).numpy()
    coeffs = module.coeff_layer(torch.tensor(t))
    # The point in the VGGBase layout: key `layer_blocks.0.0.weight` is the
    # coefficient-weighted sum of `net.layer_blocks.0.0.weight_{k}`.
    state = module.state_dict()
    point_state = {}
    for key, value in state.items():
      if key.startswith("coeff_layer."):
        continue
      base_key = key[len("net."):]
      for fc, index in (("fc1", 1), ("fc2", 4), ("fc3", 6)):
        base_key = base_key.replace(f"{fc}.", f"classifier.{index}.")
      match = re.fullmatch(r"(.*)_(\d+)", key)
      if match is None:
        point_state[base_key] = value.numpy()
      elif match.group(2) == "0":
        point_state[base_key[:-2]] = sum(
            coeffs[k] * state[f"{match.group(1)}_{k}"] for k in range(3)
        ).numpy()

  model = _model(batch_norm)
  curve, batch_stats = interop.curve_from_state_dict(
      _state_dict(module), model, _nhwc(images))
  params = curves.point(curve, t)
  variables = {"params": params}
  if batch_norm:
    variables["batch_stats"] = batch_stats
  expected = interop.endpoint_from_state_dict(point_state, model,
                                              _nhwc(images))

  for name, leaf in pytrees.flatten_with_names(expected["params"]).items():
    np.testing.assert_allclose(
        pytrees.flatten_with_names(params)[name], leaf, rtol=1e-6, atol=1e-7,
        err_msg=name)
  logits = model.apply(variables, _nhwc(images), train=False)
  assert np.std(expected_logits) > 0.03
  np.testing.assert_allclose(logits, expected_logits, atol=1e-4, rtol=0)


def test_count_bends_and_kind():
  curve_state = _state_dict(TorchVGGCurveNet(num_bends=3))
  endpoint_state = _state_dict(TorchVGG())

  assert interop.count_bends(curve_state) == 3
  assert interop.count_bends(endpoint_state) == 0
  assert interop.curve_kind(curve_state) == "bezier"
  assert interop.curve_kind(endpoint_state) is None


def test_shape_mismatch_names_key_and_shapes():
  state_dict = _state_dict(TorchVGG())
  model = models.VGG16(width=1 / 4)

  with pytest.raises(ValueError) as error:
    interop.endpoint_from_state_dict(state_dict, model, jnp.zeros((1, 32, 32, 3)))

  message = str(error.value)
  assert "'layer_blocks.0.0.weight' has shape (8, 3, 3, 3)" in message
  assert "but (16, 3, 3, 3) in the model" in message


def test_missing_and_unexpected_keys_listed():
  state_dict = _state_dict(TorchVGG())
  state_dict["classifier.5.weight"] = state_dict.pop("classifier.4.weight")

  with pytest.raises(ValueError) as error:
    interop.endpoint_from_state_dict(state_dict, _model(),
                                     jnp.zeros((1, 32, 32, 3)))

  message = str(error.value)
  assert "1 missing keys: 'classifier.4.weight'" in message
  assert "1 unexpected keys: 'classifier.5.weight'" in message


def test_batch_norm_checkpoint_into_plain_model():
  state_dict = _state_dict(TorchVGG(batch_norm=True))

  with pytest.raises(ValueError) as error:
    interop.endpoint_from_state_dict(state_dict, _model(batch_norm=False),
                                     jnp.zeros((1, 32, 32, 3)))

  message = str(error.value)
  assert "unexpected keys: 'layer_blocks.0.1.running_mean'" in message
  assert "'layer_blocks.0.1.weight' has shape (8,) in the checkpoint" in message
  assert "configure the model with batch_norm=True" in message


def test_class_count_mismatch():
  state_dict = _state_dict(TorchVGG(num_classes=100))

  with pytest.raises(ValueError) as error:
    interop.endpoint_from_state_dict(state_dict, _model(num_classes=10),
                                     jnp.zeros((1, 32, 32, 3)))

  message = str(error.value)
  assert "'classifier.6.weight' has shape (100, 64)" in message
  assert "100 classes" in message
  assert "num_classes=100" in message


def test_curve_loaded_as_endpoint_raises():
  state_dict = _state_dict(TorchVGGCurveNet(num_bends=3))

  with pytest.raises(ValueError, match="load_curve"):
    interop.endpoint_from_state_dict(state_dict, _model(),
                                     jnp.zeros((1, 32, 32, 3)))


def test_curve_bend_count_mismatch():
  state_dict = _state_dict(TorchVGGCurveNet(num_bends=3))

  with pytest.raises(ValueError, match="3 bends.*num_bends=5"):
    interop.curve_from_state_dict(state_dict, _model(),
                                  jnp.zeros((1, 32, 32, 3)), num_bends=5)


def test_curve_file_error_names_path(tmp_path):
  path = tmp_path / "curve.pt"
  torch.save({"epoch": 1, "model_state": TorchVGGCurveNet(3).state_dict()},
             path)

  with pytest.raises(ValueError, match="curve.pt: .*num_classes=10"):
    interop.load_curve(path, _model(num_classes=10),
                       jnp.zeros((1, 64, 64, 3)))


def test_unused_batch_norm_layers_warn(caplog):
  module = _randomize(TorchVGG(batch_norm=True), 8)
  with torch.no_grad():
    # The reference's forward pass never runs the second Conv-BN pair of a
    # block, so that batch norm keeps its initial statistics.
    module.layer_blocks[0][3].running_mean.zero_()
    module.layer_blocks[0][3].running_var.fill_(1.0)

  with caplog.at_level("WARNING"):
    interop.endpoint_from_state_dict(_state_dict(module),
                                     _model(batch_norm=True),
                                     jnp.zeros((1, 32, 32, 3)))

  assert "1 of 13 batch-norm layers ('block0_bn1')" in caplog.text


def test_import_without_torch():
  script = textwrap.dedent("""
      import sys
      sys.modules["torch"] = None
      import mcjax
      from mcjax import interop
      try:
        interop.load_endpoint("endpoint.pt", None, None)
      except ImportError as error:
        print(error)
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, check=True, timeout=120)
  assert 'pip install "mcjax[torch]"' in result.stdout
  assert "torch==2.13.0" in result.stdout
