"""The stages of the neuron-swap experiment, one function each.

Each stage reads what earlier stages wrote in their folders and calls the
library. The `STAGES` list at the end declares what each one reads and which
config fields its outputs depend on.
"""

from __future__ import annotations

import dataclasses

from absl import logging
import jax
import numpy as np

from experiments import context as context_lib
from experiments import pipeline
from experiments import report
from experiments import storage
from experiments import validation
from mcjax import curves
perm = None  # TEMP until the permutations branch lands

Context = context_lib.Context

VARIABLES = "variables.npz"
CURVE = "curve.npz"
PERMUTATION = "permutation.json"
PERMUTATION_ARRAYS = "permutation.npz"


class NotEquivalentError(RuntimeError):
  """The permuted network does not compute the same function."""


def _training():
  # Imported on first use: the training package pulls in orbax.
  from mcjax import training  # pylint: disable=import-outside-toplevel
  return training


def _interop():
  # Imported only for `.pt` checkpoints: interop needs torch.
  from mcjax import interop  # pylint: disable=import-outside-toplevel
  return interop


def _test_metrics(ctx: Context, variables) -> dict[str, float]:
  return _training().evaluate(
      ctx.model, variables, ctx.dataset.test, mean=ctx.dataset.mean,
      std=ctx.dataset.std, batch_size=ctx.config.permute.batch_size)


def _endpoint(ctx: Context, stage: str, seed: int, checkpoint: str) -> None:
  """Trains (or imports) one endpoint and saves its variables and accuracy."""
  if checkpoint:
    logging.info("Importing the %s from %s.", stage, checkpoint)
    variables = _interop().load_endpoint(checkpoint, ctx.model,
                                         ctx.example_input())
  else:
    variables = _training().train_endpoint(
        ctx.model, ctx.dataset, ctx.config.endpoint, ctx.folder(stage),
        seed=seed)
  variables = jax.device_get(variables)
  metrics = _test_metrics(ctx, variables)
  logging.info("Stage %s: test accuracy %.4f, loss %.4f.", stage,
               metrics["accuracy"], metrics["loss"])
  ctx.write_json(stage, "summary.json",
                 {"seed": seed, "checkpoint": checkpoint,
                  "test": metrics, "test_examples": len(ctx.dataset.test)})
  storage.save_tree(ctx.path(stage, VARIABLES), variables)


def endpoint(ctx: Context) -> None:
  """Trains the start endpoint theta_0 from endpoint.seed."""
  cfg = ctx.config.endpoint
  _endpoint(ctx, "endpoint", cfg.seed, cfg.checkpoint)


def endpoint_b(ctx: Context) -> None:
  """Trains the second endpoint from endpoint_b.seed (two-seed configs)."""
  cfg = ctx.config.endpoint_b
  _endpoint(ctx, "endpoint_b", cfg.seed, cfg.checkpoint)


def load_variables(ctx: Context, stage: str):
  return storage.load_tree(ctx.path(stage, VARIABLES))


def _permutation(ctx: Context, spec, variables_0, variables_b):
  """Returns (permutation, metadata) for the configured mode."""
  cfg = ctx.config.permute
  if cfg.mode == "swap":
    layer = perm.resolve_layer(spec, cfg.layer)
    if cfg.pairs:
      p = perm.swap(spec, layer, pairs=validation.parse_pairs(cfg.pairs))
    else:
      p = perm.swap(spec, layer, num_pairs=cfg.num_pairs, seed=cfg.seed)
    moved = np.flatnonzero(np.asarray(p[layer]) != np.arange(len(p[layer])))
    pairs = sorted({tuple(sorted((int(i), int(p[layer][i])))) for i in moved})
    return p, {"layer": layer, "pairs": [list(pair) for pair in pairs],
               "num_pairs": len(pairs), "units": int(len(p[layer]))}
  if cfg.mode == "mirror":
    return perm.reverse(spec), {"layer": None, "pairs": None}
  key = jax.random.key(cfg.seed)
  p = perm.weight_matching(spec, variables_0, variables_b, key)
  return p, {"layer": None, "pairs": None}


def _equivalence(ctx: Context, original, permuted) -> dict:
  """Compares two networks on the whole configured test split."""
  check = perm.check_equivalence(
      ctx.model, original, permuted, ctx.dataset.test.images,
      mean=ctx.dataset.mean, std=ctx.dataset.std,
      batch_size=ctx.config.permute.batch_size)
  return {
      "accuracy_original": _test_metrics(ctx, original)["accuracy"],
      "accuracy_permuted": _test_metrics(ctx, permuted)["accuracy"],
      "prediction_agreement": float(check["agreement"]),
      "max_logit_difference": float(check["max_abs_logit_difference"]),
      "tolerance": ctx.config.permute.tolerance,
      "test_examples": len(ctx.dataset.test),
  }


def permute(ctx: Context) -> None:
  """Builds the end of the curve and checks that it is equivalent.

  Writes `permutation.json` (mode, layer, pairs, seed and the equivalence
  check), `permutation.npz` (group name -> index array) and the end
  endpoint's `variables.npz`. Raises NotEquivalentError when the permuted
  network's logits differ by more than permute.tolerance.
  """
  cfg = ctx.config.permute
  variables_0 = load_variables(ctx, "endpoint")
  variables_b = (load_variables(ctx, "endpoint_b")
                 if ctx.config.endpoint_b.enabled else None)
  record = {"mode": cfg.mode, "seed": cfg.seed}

  if cfg.mode == "none":
    record.update(layer=None, pairs=None, check=None)
    ctx.write_json("permute", PERMUTATION, record)
    storage.save_tree(ctx.path("permute", VARIABLES), variables_b)
    return

  spec = perm.infer_spec(ctx.model, variables_0, ctx.example_input())
  p, metadata = _permutation(ctx, spec, variables_0, variables_b)
  record.update(metadata)
  source = variables_0 if variables_b is None else variables_b
  permuted = jax.device_get(perm.apply(spec, p, source))
  check = _equivalence(ctx, source, permuted)
  check["equivalent"] = check["max_logit_difference"] <= cfg.tolerance
  record["check"] = check
  ctx.write_json("permute", PERMUTATION, record)
  logging.info("Permutation %s: %s", cfg.mode, check)
  if not check["equivalent"]:
    raise NotEquivalentError(
        f"The permuted network is not equivalent to the original: the "
        f"largest logit difference on {check['test_examples']} test images is "
        f"{check['max_logit_difference']:.3g}, above permute.tolerance="
        f"{cfg.tolerance:g} (prediction agreement "
        f"{check['prediction_agreement']:.4f}). See "
        f"{ctx.path('permute', PERMUTATION)}.")
  storage.save_tree(ctx.path("permute", PERMUTATION_ARRAYS),
                    {name: np.asarray(index) for name, index in p.items()})
  storage.save_tree(ctx.path("permute", VARIABLES), permuted)


def load_curve(ctx: Context) -> curves.Curve:
  metadata = ctx.read_json("curve", "curve.json")
  return curves.Curve(bends=storage.load_tree(ctx.path("curve", CURVE)),
                      kind=metadata["kind"])


def curve(ctx: Context) -> None:
  """Trains the curve between the start endpoint and the permute output."""
  cfg = ctx.config.curve
  variables_0 = load_variables(ctx, "endpoint")
  variables_1 = load_variables(ctx, "permute")
  if cfg.checkpoint:
    logging.info("Importing the curve from %s.", cfg.checkpoint)
    trained = _interop().load_curve(cfg.checkpoint, ctx.model,
                                    ctx.example_input(), cfg.num_bends)
  else:
    trained = _training().train_curve(
        ctx.model, ctx.dataset, cfg, ctx.folder("curve"), variables_0,
        variables_1, seed=cfg.seed)
  ctx.write_json("curve", "curve.json",
                 {"kind": trained.kind, "num_bends": trained.num_bends})
  storage.save_tree(ctx.path("curve", CURVE), jax.device_get(trained.bends))


def evaluate(ctx: Context) -> None:
  """Evaluates the curve and the straight line at evaluate.num_points t."""
  from mcjax import evaluation  # pylint: disable=import-outside-toplevel
  cfg = ctx.config.evaluate
  dataset = ctx.dataset
  if cfg.train_size:
    dataset = dataclasses.replace(dataset,
                                  train=dataset.train.take(cfg.train_size))
  if cfg.test_size:
    dataset = dataclasses.replace(dataset,
                                  test=dataset.test.take(cfg.test_size))
  trained = load_curve(ctx)
  variables_0 = load_variables(ctx, "endpoint")
  variables_1 = load_variables(ctx, "permute")
  out = ctx.folder("evaluate")
  results = {
      "curve": evaluation.evaluate_curve(
          ctx.model, dataset, trained, num_points=cfg.num_points,
          batch_size=cfg.batch_size),
      "line": evaluation.evaluate_line(
          ctx.model, dataset, variables_0, variables_1,
          num_points=cfg.num_points, batch_size=cfg.batch_size),
  }
  for prefix, result in results.items():
    summary = evaluation.summarize(result)
    evaluation.save(result, summary, out, prefix)
    logging.info("Evaluation of the %s: %s", prefix, summary)


def analyse(ctx: Context) -> None:
  """Computes per-layer distances along the curve and the locality summary."""
  from mcjax import analysis  # pylint: disable=import-outside-toplevel
  raise NotImplementedError(analysis)


def plots(ctx: Context) -> None:
  """Draws the GIF, the heatmap and the loss/error figure."""
  from mcjax import plots as plots_lib  # pylint: disable=import-outside-toplevel
  raise NotImplementedError(plots_lib)


def write_report(ctx: Context) -> None:
  """Writes report.md in the workdir."""
  report.write(ctx)


_TRAINING_NOISE = ("checkpoint_every", "keep_checkpoints", "eval_batch_size",
                   "log_every_steps")


def _noise(section: str) -> tuple[str, ...]:
  """Fields of a training section that do not change its result."""
  return tuple(f"{section}.{name}" for name in _TRAINING_NOISE)


STAGES = (
    pipeline.Stage(
        "endpoint", endpoint, fields=("dataset", "model", "endpoint"),
        ignore=("dataset.data_dir", "endpoint.shared_dir") +
        _noise("endpoint"),
        shared_dir=lambda config: config.endpoint.shared_dir),
    pipeline.Stage(
        "endpoint_b", endpoint_b,
        fields=("dataset", "model", "endpoint", "endpoint_b"),
        ignore=("dataset.data_dir", "endpoint.seed", "endpoint.checkpoint",
                "endpoint.shared_dir", "endpoint_b.shared_dir") +
        _noise("endpoint"),
        enabled=lambda config: config.endpoint_b.enabled,
        shared_dir=lambda config: config.endpoint_b.shared_dir),
    pipeline.Stage(
        "permute", permute, needs=("endpoint", "endpoint_b"),
        fields=("permute",), ignore=("permute.batch_size",)),
    pipeline.Stage(
        "curve", curve, needs=("endpoint", "permute"), fields=("curve",),
        ignore=_noise("curve")),
    pipeline.Stage(
        "evaluate", evaluate, needs=("endpoint", "permute", "curve"),
        fields=("evaluate",), ignore=("evaluate.batch_size",)),
    pipeline.Stage(
        "analyse", analyse, needs=("permute", "curve"), fields=("analyse",)),
    pipeline.Stage(
        "plots", plots, needs=("evaluate", "analyse"), fields=("plots",)),
    pipeline.Stage(
        "report", write_report,
        needs=("endpoint", "endpoint_b", "permute", "curve", "evaluate",
               "analyse", "plots"),
        fields=("name",), extra_outputs=("report.md",)),
)
