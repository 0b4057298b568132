"""The stages of the neuron-swap experiment, one function each.

Each stage reads what earlier stages wrote in their folders and calls the
library. The `STAGES` list at the end declares what each one reads and which
config fields its outputs depend on.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from absl import logging
import jax
import numpy as np

from experiments import context as context_lib
from experiments import pipeline
from experiments import report
from experiments import storage
from experiments import validation
from mcjax import analysis
from mcjax import curves
from mcjax import data
from mcjax import evaluation
from mcjax import permutations as perm
from mcjax import plots as plots_lib
from mcjax import training

Context = context_lib.Context

VARIABLES = "variables.npz"
CURVE = "curve.npz"
PERMUTATION = "permutation.json"
PERMUTATION_ARRAYS = "permutation.npz"
# analyse/ writes DISTANCES.npz and DISTANCES.json.
DISTANCES = "distances"


class NotEquivalentError(RuntimeError):
  """The permuted network does not compute the same function."""


def _interop():
  # Imported only for `.pt` checkpoints: interop needs torch.
  # NOTE: no test runs the pipeline with a .pt curve checkpoint.
  from mcjax import interop  # pylint: disable=import-outside-toplevel
  return interop


def _test_metrics(ctx: Context, variables) -> dict[str, float]:
  return training.evaluate(
      ctx.model, variables, ctx.dataset.test, mean=ctx.dataset.mean,
      std=ctx.dataset.std, batch_size=ctx.config.endpoint.eval_batch_size)


def _endpoint(ctx: Context, stage: str, seed: int, checkpoint: str) -> None:
  """Trains (or imports) one endpoint and saves its variables and accuracy."""
  if checkpoint:
    logging.info("Importing the %s from %s.", stage, checkpoint)
    variables = _interop().load_endpoint(checkpoint, ctx.model,
                                         ctx.example_input())
  else:
    variables = training.train_endpoint(
        ctx.model, ctx.dataset, ctx.config.endpoint, ctx.folder(stage),
        seed=seed)
  variables = jax.device_get(variables)
  metrics = _test_metrics(ctx, variables)
  logging.info("Stage %s: test accuracy %.2f%%, loss %.4f.", stage,
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
  dataset = ctx.dataset
  check = perm.compare_networks(
      functools.partial(ctx.model.apply, train=False), original, permuted,
      dataset.test.images, dataset.test.labels,
      batch_size=ctx.config.permute.batch_size,
      preprocess=functools.partial(data.normalize, mean=dataset.mean,
                                   std=dataset.std))
  return {
      "accuracy_original": 100.0 * check["accuracy_a"],
      "accuracy_permuted": 100.0 * check["accuracy_b"],
      "accuracy_unit": "percent",
      "prediction_agreement": check["agreement"],
      "max_logit_difference": check["max_abs_logit_diff"],
      "tolerance": ctx.config.permute.tolerance,
      "test_examples": check["num_examples"],
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
  storage.save_arrays(ctx.path("permute", PERMUTATION_ARRAYS), p)
  storage.save_tree(ctx.path("permute", VARIABLES), permuted)


def load_permutation(ctx: Context) -> dict[str, np.ndarray]:
  """Returns {group name: int32 index array} saved by the permute stage."""
  return storage.load_arrays(ctx.path("permute", PERMUTATION_ARRAYS))


def load_curve(ctx: Context) -> curves.Curve:
  metadata = ctx.read_json("curve", "curve.json")
  return curves.Curve(bends=storage.load_tree(ctx.path("curve", CURVE)),
                      kind=metadata["kind"])


def _check_curve_ends(trained: curves.Curve, variables_0, variables_1,
                      path: str) -> None:
  """Raises ValueError when an imported curve joins other endpoints.

  The evaluation's straight line and the analysis use the outputs of the
  endpoint and permute stages, so they must be the curve's end bends.
  """
  for index, variables in ((0, variables_0), (-1, variables_1)):
    bend = jax.tree.map(lambda leaf: np.asarray(leaf[index]), trained.bends)
    differences = jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(a - np.asarray(b)))), bend,
        variables["params"]))
    if max(differences) > 1e-6:
      raise ValueError(
          f"The curve in {path} does not end at the endpoints of this run: "
          f"its bend {index} differs from them by up to {max(differences):.3g}."
          " Import the endpoints it was trained between with "
          "endpoint.checkpoint (and endpoint_b.checkpoint), or train the "
          "curve here.")


def curve(ctx: Context) -> None:
  """Trains the curve between the start endpoint and the permute output."""
  cfg = ctx.config.curve
  variables_0 = load_variables(ctx, "endpoint")
  variables_1 = load_variables(ctx, "permute")
  if cfg.checkpoint:
    logging.info("Importing the curve from %s.", cfg.checkpoint)
    trained, _ = _interop().load_curve(cfg.checkpoint, ctx.model,
                                       ctx.example_input(),
                                       num_bends=cfg.num_bends, kind=cfg.kind)
    _check_curve_ends(trained, variables_0, variables_1, cfg.checkpoint)
  else:
    trained = training.train_curve(
        ctx.model, ctx.dataset, cfg, ctx.folder("curve"), variables_0,
        variables_1, seed=cfg.seed)
  ctx.write_json("curve", "curve.json",
                 {"kind": trained.kind, "num_bends": trained.num_bends})
  storage.save_tree(ctx.path("curve", CURVE), jax.device_get(trained.bends))


def evaluate(ctx: Context) -> None:
  """Evaluates the curve and the straight line at evaluate.num_points t.

  Writes curve.npz / curve.json and line.npz / line.json: the series along
  each path and their summaries (min, max, mean, integral, path length and
  barriers).
  """
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
  batch_stats = None
  if "batch_stats" in variables_0:
    batch_stats = (variables_0["batch_stats"], variables_1["batch_stats"])
  curve_cfg = ctx.config.curve
  weight_decay = (curve_cfg.weight_decay
                  if curve_cfg.regularization == "reg" else 0.0)
  results = {
      "curve": evaluation.evaluate_curve(
          ctx.model, dataset, trained, batch_stats=batch_stats,
          num_points=cfg.num_points, weight_decay=weight_decay,
          batch_size=cfg.batch_size),
      "line": evaluation.evaluate_line(
          ctx.model, dataset, variables_0, variables_1,
          num_points=cfg.num_points, weight_decay=weight_decay,
          batch_size=cfg.batch_size),
  }
  for prefix, result in results.items():
    summary = evaluation.summarize(result)
    evaluation.save(result, summary, ctx.folder("evaluate"), prefix)
    ctx.append_metrics("evaluate", {"path": prefix, **summary["barriers"],
                                    "length": summary["length"]})
    logging.info("Evaluation of the %s: barriers %s, length %.4g", prefix,
                 summary["barriers"], summary["length"])


def analyse(ctx: Context) -> None:
  """Computes per-layer distances along the curve and the locality summary.

  Writes distances.npz (every metric as a (T, layers + 1) array) and
  distances.json (the locality summary with the swap metadata). The
  distance to the re-ordered start, P theta_0, is added for "swap" and
  "mirror", where the end endpoint is P theta_0. The per-unit deviation and
  the share of the swapped layers exist only for "swap".
  """
  cfg = ctx.config.analyse
  record = ctx.read_json("permute", PERMUTATION)
  trained = load_curve(ctx)
  ts = np.linspace(0.0, 1.0, cfg.num_points)
  prefix = ctx.path("analyse", DISTANCES)

  if record["mode"] == "swap":
    spec = perm.infer_spec(ctx.model, load_variables(ctx, "endpoint"),
                           ctx.example_input())
    result = analysis.analyze_swap(trained, spec, record["layer"],
                                   record["pairs"], ts, top_k=cfg.top_layers)
    result.save(prefix)
    summary = result.summary
  else:
    permuted_start = None
    if record["mode"] == "mirror":
      spec = perm.infer_spec(ctx.model, load_variables(ctx, "endpoint"),
                             ctx.example_input())
      permuted_start = analysis.permute_start(trained, spec,
                                              load_permutation(ctx))
    distances = analysis.curve_distances(trained, ts,
                                         permuted_start=permuted_start)
    summary = analysis.locality_summary(distances, [], None,
                                        top_k=cfg.top_layers)
    analysis.save_analysis(prefix, distances, summary,
                           {"mode": record["mode"]})
  ctx.append_metrics("analyse", {
      key: summary[key] for key in ("share_integrated", "share_at_max",
                                    "t_max", "total_integrated")})
  logging.info("Locality: %.3g of the squared deviation is in %s; top "
               "layers %s.", summary["share_integrated"] or float("nan"),
               summary["swapped_layers"],
               [entry["layer"] for entry in summary["top_layers"]])


def _path_series(ctx: Context, prefix: str) -> dict[str, np.ndarray]:
  result, _ = evaluation.load(ctx.folder("evaluate"), prefix)
  return {"ts": result.t, "train_loss": result.series["train_loss"],
          "test_error": result.series["test_error"]}


def plots(ctx: Context) -> None:
  """Draws the GIF, the heatmap and the loss/error figure.

  Writes plots/<gif_metric>.gif (per-layer bars, one frame per t),
  plots/<heatmap_metric>_heatmap.png (layers x t) and plots/loss_error.png
  (train loss and test error along t, curve against straight line). The
  layers that the swap changes are highlighted.
  """
  cfg = ctx.config.plots
  distances, swap = analysis.load_distances(
      ctx.path("analyse", DISTANCES + ".npz"))
  highlight = [name for name in swap.get("touched_layers", [])
               if name in distances.layers]
  folder = ctx.folder("plots")
  gif = plots_lib.save_layer_animation(
      os.path.join(folder, f"{cfg.gif_metric}.gif"), distances,
      cfg.gif_metric, highlight=highlight,
      frame_duration_ms=max(1, round(1000 / cfg.fps)))
  heatmap = plots_lib.save_heatmap(
      os.path.join(folder, f"{cfg.heatmap_metric}_heatmap.png"), distances,
      cfg.heatmap_metric, highlight=highlight)
  loss = plots_lib.save_loss_along_t(
      os.path.join(folder, "loss_error.png"),
      {name: _path_series(ctx, name) for name in ("curve", "line")})
  logging.info("Plots: %s, %s, %s.", gif, heatmap, loss)


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
    # NOTE: endpoint_b's fingerprint differs from endpoint's even for the same
    # seed, so endpoint_b.shared_dir must name a folder that an endpoint_b
    # stage wrote, not one of endpoints.sbatch.
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
