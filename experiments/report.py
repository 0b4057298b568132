"""report.md: what the experiment found and where its artifacts are."""

from __future__ import annotations

import os
from typing import Any

from experiments import storage

REPORT = "report.md"
# Files that every stage folder has; the artifact list leaves them out.
BOOKKEEPING = ("stage.json", "started.json", "stage.log")
# The curve counts as local when at least this share of its squared
# deviation from the straight line (integrated over t) falls in the layers
# that the swap changes: the swapped layer, its batch norm and its consumer.
LOCAL_SHARE = 0.5
# Rows of the barrier table: (series in the evaluation summary, label).
BARRIER_ROWS = (("test_error", "test error (%)"), ("train_loss", "train loss"))


def artifacts(workdir: str) -> list[str]:
  """Lists the files under `workdir`, relative to it, without checkpoints."""
  found = []
  for root, dirs, files in os.walk(workdir):
    dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "wandb"))
    for name in sorted(files):
      if name.startswith(".tmp-") or name in (REPORT,) + BOOKKEEPING:
        continue
      found.append(os.path.relpath(os.path.join(root, name), workdir))
  return found


def _read(ctx, stage: str, name: str) -> Any:
  path = ctx.path(stage, name)
  return storage.read_json(path) if os.path.exists(path) else None


def _endpoints(ctx) -> list[str]:
  lines = ["## Endpoints", ""]
  stages = ["endpoint"] + (["endpoint_b"] if ctx.config.endpoint_b.enabled
                           else [])
  for stage in stages:
    summary = _read(ctx, stage, "summary.json")
    if summary is None:
      continue
    test = summary["test"]
    source = (f"imported from {summary['checkpoint']}"
              if summary["checkpoint"] else f"trained from seed {summary['seed']}")
    lines.append(
        f"- `{stage}` ({source}): test accuracy {test['accuracy']:.2f}%, "
        f"test loss {test['loss']:.4f} on {summary['test_examples']} images.")
  return lines + [""]


def _permutation(ctx) -> list[str]:
  record = _read(ctx, "permute", "permutation.json")
  lines = ["## Permutation", ""]
  if record["mode"] == "swap":
    pairs = ", ".join(f"{a} <-> {b}" for a, b in record["pairs"])
    lines.append(f"Swapped units {pairs} of `{record['layer']}` "
                 f"({record['units']} units), drawn with seed {record['seed']}.")
  elif record["mode"] == "mirror":
    lines.append("Mirror: the units of every hidden layer in reverse order.")
  elif record["mode"] == "weight_matching":
    lines.append("The second endpoint aligned to the first by weight "
                 "matching.")
  else:
    lines.append("None: the curve joins the two endpoints as they are.")
  check = record.get("check")
  if check:
    verdict = "equivalent" if check["equivalent"] else "NOT equivalent"
    lines += [
        "",
        f"Equivalence check on {check['test_examples']} test images: "
        f"{verdict} (largest logit difference "
        f"{check['max_logit_difference']:.3g}, tolerance "
        f"{check['tolerance']:g}; prediction agreement "
        f"{100 * check['prediction_agreement']:.2f}%; accuracy "
        f"{check['accuracy_original']:.2f}% before and "
        f"{check['accuracy_permuted']:.2f}% after).",
    ]
  return lines + [""]


def _barriers(ctx) -> list[str]:
  paths = {name: _read(ctx, "evaluate", f"{name}.json")
           for name in ("curve", "line")}
  lines = [
      "## Barriers",
      "",
      "The barrier of a series along a path is its maximum over the "
      "evaluated t minus the larger of its two endpoint values.",
      "",
      "| | curve | straight line |",
      "|---|---|---|",
  ]
  for series, label in BARRIER_ROWS:
    cells = [f"{paths[name]['series'][series]['barrier']:.4g}"
             for name in ("curve", "line")]
    lines.append(f"| {label} barrier | {cells[0]} | {cells[1]} |")
  for series, label in BARRIER_ROWS:
    cells = [f"{paths[name]['series'][series]['max']:.4g}"
             for name in ("curve", "line")]
    lines.append(f"| max {label} | {cells[0]} | {cells[1]} |")
  lengths = [f"{paths[name]['length']:.4g}" for name in ("curve", "line")]
  lines.append(f"| path length | {lengths[0]} | {lengths[1]} |")
  points = paths["curve"]["num_points"]
  return lines + ["", f"Both paths are evaluated at {points} evenly spaced t.",
                  ""]


def locality_answer(summary: dict[str, Any]) -> str:
  """States whether the curve's correction is local to the swapped layers."""
  share = summary.get("share_integrated")
  top = ", ".join(f"`{entry['layer']}` ({100 * (entry['share'] or 0):.1f}%)"
                  for entry in summary.get("top_layers", []))
  if not summary.get("swapped_layers"):
    return f"Layers with the largest deviation from the straight line: {top}."
  layers = ", ".join(f"`{name}`" for name in summary["swapped_layers"])
  if share is None:
    return ("The curve did not move away from the straight line, so there "
            "is no locality to measure.")
  verdict = "local" if share >= LOCAL_SHARE else "global"
  return (f"**{verdict.capitalize()}**: {100 * share:.1f}% of the curve's "
          "squared deviation from the straight line, integrated over t, is "
          f"in the layers the swap changes ({layers}); the threshold for "
          f"local is {100 * LOCAL_SHARE:.0f}%. Layers with the largest "
          f"deviation: {top}.")


def _locality(ctx) -> list[str]:
  summary = _read(ctx, "analyse", "distances.json")
  if summary is None:
    return []
  cfg = ctx.config.plots
  return [
      "## Locality", "", locality_answer(summary), "",
      f"![{cfg.gif_metric} per layer along t](plots/{cfg.gif_metric}.gif)",
      "",
      f"![{cfg.heatmap_metric}, layers x t]"
      f"(plots/{cfg.heatmap_metric}_heatmap.png)",
      "",
      "![train loss and test error along t](plots/loss_error.png)",
      "",
  ]


def write(ctx) -> None:
  """Writes WORKDIR/report.md from the outputs of the earlier stages."""
  lines = [f"# {ctx.config.name}", ""]
  cfg = ctx.config
  lines += [
      f"VGG ({cfg.model.name}, width {cfg.model.width:g}, batch norm "
      f"{cfg.model.batch_norm}) on {cfg.dataset.name}; a "
      f"{cfg.curve.num_bends}-bend {cfg.curve.kind} curve trained for "
      f"{cfg.curve.epochs} epochs. The resolved config is in "
      "[config.json](config.json).",
      "",
  ]
  lines += _endpoints(ctx)
  lines += _permutation(ctx)
  lines += _barriers(ctx)
  lines += _locality(ctx)
  lines += ["## Artifacts", "",
            "Each stage folder also has stage.json (its completion marker), "
            "started.json and stage.log (its log).", ""]
  lines += [f"- [{path}]({path})" for path in artifacts(ctx.workdir)]
  storage.write_text(os.path.join(ctx.workdir, REPORT),
                     "\n".join(lines) + "\n")
