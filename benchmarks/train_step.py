"""Train-step throughput of VGG16 in mcjax next to PyTorch, and per layer.

Measures, in one process so that machine load affects both alike:

  steps   examples/s of the mcjax endpoint train step (SGD, momentum 0.9,
          coupled weight decay) and of the same step in PyTorch (a VGG16
          shaped like dnn-mode-connectivity's, torch.optim.SGD), at batch 128
          on 32x32x3 inputs, for each width;
  curve   the mcjax curve step (Bezier, 3 bends, "reg") against the endpoint
          step on the same model and batch;
  layers  forward+backward time of every distinct VGG16 conv shape with
          XLA's convolution and with the patch-plus-matmul path, PyTorch's
          conv for reference, 2x2 max-pooling, and the optimizer update.

Usage:
  PYTHONPATH=. python3 benchmarks/train_step.py --steps=3
  PYTHONPATH=. python3 benchmarks/train_step.py --sections=layers --width=1.0

Both steps run without augmentation (PyTorch's happens in its data loader).
Times are medians over --steps calls after one warm-up (compilation) call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import torch
import torch.nn.functional as F

from mcjax import curves
from mcjax import models
from mcjax.models import layers
from mcjax.training import steps

BATCH = 128
IMAGE = 32
CHANNELS = 3
NUM_CLASSES = 10


def median_seconds(fn, repeats: int) -> float:
  """Calls fn once to warm up, then returns the median of `repeats` calls."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class TorchVGG16(torch.nn.Module):
  """VGG16 as in dnn-mode-connectivity: 3x3 convs with bias, ReLU, max-pool."""

  def __init__(self, width: float):
    super().__init__()
    modules = []
    in_channels = CHANNELS
    for block in models.VGG16_BLOCKS:
      for channels in block:
        out_channels = max(1, round(channels * width))
        modules += [torch.nn.Conv2d(in_channels, out_channels, 3, padding=1),
                    torch.nn.ReLU(inplace=True)]
        in_channels = out_channels
      modules.append(torch.nn.MaxPool2d(2, 2))
    self.features = torch.nn.Sequential(*modules)
    hidden = max(1, round(512 * width))
    self.classifier = torch.nn.Sequential(
        torch.nn.Dropout(), torch.nn.Linear(in_channels, hidden),
        torch.nn.ReLU(True), torch.nn.Dropout(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(True),
        torch.nn.Linear(hidden, NUM_CLASSES))

  def forward(self, x):
    return self.classifier(torch.flatten(self.features(x), 1))


def torch_step_seconds(width: float, repeats: int) -> float:
  torch.manual_seed(0)
  model = TorchVGG16(width)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                              weight_decay=5e-4)
  x = torch.randn(BATCH, CHANNELS, IMAGE, IMAGE)
  y = torch.randint(0, NUM_CLASSES, (BATCH,))
  model.train()

  def step():
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()

  return median_seconds(step, repeats)


def _step_config(model, kind=None):
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  return steps.StepConfig(
      model=model, mean=(0.5,) * CHANNELS, std=(0.25,) * CHANNELS,
      augment=False, batch_size=BATCH, momentum=0.9, weight_decay=5e-4,
      batch_sharding=NamedSharding(mesh, PartitionSpec("data")), kind=kind,
      num_bends=3 if kind else 0, regularization="reg", t_per_batch=1)


def _data():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (2 * BATCH, IMAGE, IMAGE,
                                             CHANNELS), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, (2 * BATCH,),
                                    dtype=np.int32))
  return images, labels, jnp.arange(2 * BATCH, dtype=jnp.int32)


def random_params(model) -> dict:
  """Returns He-scaled NumPy-random parameters shaped like `model`'s.

  Drawing them on the host skips compiling the model's initialiser, which
  takes minutes on a loaded 2-core machine and does not affect step times.
  """
  rng = np.random.default_rng(0)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, IMAGE, IMAGE, CHANNELS)),
      train=False))["params"]

  def draw(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    scale = np.sqrt(2.0 / fan_in) if len(leaf.shape) > 1 else 0.0
    return jnp.asarray(rng.normal(0.0, 1.0, leaf.shape) * scale, jnp.float32)

  return jax.tree.map(draw, abstract)


def jax_step_seconds(width: float, repeats: int, curve: bool) -> float:
  model = models.VGG16(width=width)
  params = random_params(model)
  if curve:
    config = _step_config(model, kind="bezier")
    params = curves.bezier(params, jax.tree.map(lambda p: -p, params)).bends
    tx = steps.curve_optimizer(config, 0.015)
    step_fn = steps.jit_curve_step
  else:
    config = _step_config(model)
    tx = steps.endpoint_optimizer(config, 0.05)
    step_fn = steps.jit_endpoint_step
  state = {"step": jnp.int32(0), "params": params,
           "opt_state": tx.init(params), "train_sums": steps.zero_sums()}
  images, labels, permutation = _data()
  holder = {"state": state}
  key = jax.random.key(1)

  def step():
    position = jnp.int32(int(holder["state"]["step"]) % 2)
    holder["state"] = step_fn(config, holder["state"], images, labels,
                              permutation, position, key, jnp.float32(0.05))
    jax.block_until_ready(holder["state"])

  return median_seconds(step, repeats)


def conv_shapes(width: float) -> list[tuple[int, int, int]]:
  """Returns the distinct (map size, in, out) conv shapes of VGG16."""
  shapes, in_channels, size = [], CHANNELS, IMAGE
  for block in models.VGG16_BLOCKS:
    for channels in block:
      out_channels = max(1, round(channels * width))
      if (size, in_channels, out_channels) not in shapes:
        shapes.append((size, in_channels, out_channels))
      in_channels = out_channels
    size //= 2
  return shapes


def _xla_conv(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def layer_rows(width: float, repeats: int) -> list[str]:
  rows = []
  rng = np.random.default_rng(0)
  for size, cin, cout in conv_shapes(width):
    x = jnp.asarray(rng.normal(size=(BATCH, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.05,
                         jnp.float32)
    timings = {}
    for name, conv in (("xla", _xla_conv),
                       ("patches", layers.conv3x3_patches)):
      grad = jax.jit(jax.grad(lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2),
                              argnums=(0, 1)))
      timings[name] = median_seconds(
          lambda grad=grad: jax.block_until_ready(grad(x, kernel)), repeats)
    tx_ = torch.randn(BATCH, cin, size, size, requires_grad=True)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)

    def torch_conv():
      tx_.grad = None
      conv.zero_grad()
      (conv(tx_) ** 2).sum().backward()

    timings["torch"] = median_seconds(torch_conv, repeats)
    rows.append(
        f"| conv {size}x{size} {cin}->{cout} | {1e3 * timings['xla']:.1f} | "
        f"{1e3 * timings['patches']:.1f} | {1e3 * timings['torch']:.1f} |")

  for size, channels in {(s, o) for s, _, o in conv_shapes(width)}:
    x = jnp.asarray(rng.normal(size=(BATCH, size, size, channels)),
                    jnp.float32)
    pool = jax.jit(jax.grad(lambda x: jnp.sum(
        jax.numpy.square(jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")))))
    seconds = median_seconds(lambda: jax.block_until_ready(pool(x)), repeats)
    tx_ = torch.randn(BATCH, channels, size, size, requires_grad=True)

    def torch_pool():
      tx_.grad = None
      (F.max_pool2d(tx_, 2) ** 2).sum().backward()

    torch_seconds = median_seconds(torch_pool, repeats)
    rows.append(f"| max-pool {size}x{size}x{channels} | {1e3 * seconds:.1f} "
                f"| | {1e3 * torch_seconds:.1f} |")

  model = models.VGG16(width=width)
  params = random_params(model)
  tx = steps.endpoint_optimizer(_step_config(model), 0.05)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def update(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates), opt_state

  seconds = median_seconds(
      lambda: jax.block_until_ready(update(params, opt_state)), repeats)
  torch_model = TorchVGG16(width)
  for p in torch_model.parameters():
    p.grad = torch.ones_like(p)
  optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.05,
                              momentum=0.9, weight_decay=5e-4)
  torch_seconds = median_seconds(optimizer.step, repeats)
  rows.append(f"| SGD update (all params) | {1e3 * seconds:.1f} | | "
              f"{1e3 * torch_seconds:.1f} |")
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3,
                      help="timed calls per measurement (after a warm-up)")
  parser.add_argument("--widths", default="1.0,0.125",
                      help="comma-separated VGG16 width multipliers")
  parser.add_argument("--sections", default="steps,curve,layers",
                      help="comma-separated subset of steps,curve,layers")
  parser.add_argument("--layer_width", type=float, default=1.0,
                      help="width of the per-layer table")
  args = parser.parse_args()
  sections = args.sections.split(",")
  widths = [float(w) for w in args.widths.split(",")]
  torch.set_num_threads(os.cpu_count())
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, batch {BATCH}, "
        f"CPU_PATCHES_MAX_PIXELS={layers.CPU_PATCHES_MAX_PIXELS}")

  if "steps" in sections or "curve" in sections:
    print("\n| width | step | ms/step | examples/s | ratio |")
    print("|---|---|---|---|---|")
  for width in widths:
    if "steps" in sections or "curve" in sections:
      jax_seconds = jax_step_seconds(width, args.steps, curve=False)
    if "steps" in sections:
      torch_seconds = torch_step_seconds(width, args.steps)
      print(f"| {width} | mcjax endpoint | {1e3 * jax_seconds:.0f} | "
            f"{BATCH / jax_seconds:.0f} | {jax_seconds / torch_seconds:.2f}x "
            "PyTorch |")
      print(f"| {width} | PyTorch | {1e3 * torch_seconds:.0f} | "
            f"{BATCH / torch_seconds:.0f} | 1 |", flush=True)
    if "curve" in sections:
      curve_seconds = jax_step_seconds(width, args.steps, curve=True)
      print(f"| {width} | mcjax curve | {1e3 * curve_seconds:.0f} | "
            f"{BATCH / curve_seconds:.0f} | "
            f"{curve_seconds / jax_seconds:.2f}x endpoint |", flush=True)

  if "layers" in sections:
    print(f"\nPer layer at width {args.layer_width}, batch {BATCH}, "
          "forward+backward, ms:\n")
    print("| operation | xla | patches | PyTorch |")
    print("|---|---|---|---|")
    for row in layer_rows(args.layer_width, args.steps):
      print(row, flush=True)


if __name__ == "__main__":
  main()
