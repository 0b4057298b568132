"""The locality summary of a curve, and its JSON and NPZ files.

The question: does the curve between a network and its permuted copy bend only
the permuted layers (local) or every layer (global)? The measure is the share
of the curve's squared deviation from the straight line that falls in the
permuted layers. Squared deviations add up over layers, so the shares of all
layers sum to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
from typing import Any

import numpy as np

from mcjax.analysis import distances as distances_lib
from mcjax import files
from mcjax.analysis import units as units_lib

NPZ_SUFFIX = ".npz"
JSON_SUFFIX = ".json"


def _integrate(values: np.ndarray, ts: np.ndarray) -> np.ndarray:
  """Integrates (T, ...) values over ts with the trapezoid rule."""
  if len(ts) < 2:
    return values.sum(axis=0)
  return np.trapezoid(values, ts, axis=0)


def _share(part: float, total: float) -> float | None:
  return float(part / total) if total > 0 else None


def locality_summary(
    distances: distances_lib.Distances,
    swapped_layers: Sequence[str],
    unit_results: Mapping[str, units_lib.UnitDeviation] | None = None,
    top_k: int = 5) -> dict[str, Any]:
  """Summarises where the curve bends away from the straight line.

  With dev_l(t) = ||theta(t) - line(t)|| restricted to layer l:

  - `share_integrated` is the integral over t of sum over the swapped layers
    of dev_l(t)^2, divided by the integral of the whole network's
    ||theta(t) - line(t)||^2 (trapezoid rule over `distances.ts`).
  - `share_at_max` is the same ratio at the single t where the whole
    network's deviation is largest (`t_max`).

  A share is None when the curve is the straight line (zero deviation).

  Args:
    distances: per-layer distances with the "deviation" metric.
    swapped_layers: the layers the permutation touches: the swapped layer,
      its batch norm if any, and its consumer.
    unit_results: optional output of `units.unit_deviation`.
    top_k: how many layers to list by integrated squared deviation.

  Returns:
    A JSON-ready dict with `swapped_layers`, `share_integrated`,
    `share_at_max`, `t_max`, `total_integrated`, `top_layers` (name,
    integrated squared deviation, share) and `units` (per side: the swapped
    units' stats).

  Raises:
    ValueError: for a swapped layer that is not in `distances`.
  """
  layer_names = list(distances.layers[:-1])
  unknown = [name for name in swapped_layers if name not in layer_names]
  if unknown:
    raise ValueError(f"swapped_layers {unknown} are not layers of these "
                     f"distances; the layers are {layer_names}.")
  columns = [distances.column(name) for name in swapped_layers]

  squared = distances.metric("deviation") ** 2
  per_layer = _integrate(squared[:, :-1], distances.ts)
  total = float(per_layer.sum())
  swapped_total = float(per_layer[columns].sum())

  at_max = int(np.argmax(squared[:, -1]))
  total_at_max = float(squared[at_max, :-1].sum())
  swapped_at_max = float(squared[at_max, columns].sum())

  order = np.argsort(-per_layer, kind="stable")[:top_k]
  top_layers = [{"layer": layer_names[i], "integrated": float(per_layer[i]),
                 "share": _share(float(per_layer[i]), total)} for i in order]

  units = {}
  for side, result in (unit_results or {}).items():
    units[side] = {"group": result.group, "units": list(result.swapped_units),
                   "paths": [list(entry) for entry in result.paths],
                   **result.stats}
  return {"swapped_layers": list(swapped_layers),
          "share_integrated": _share(swapped_total, total),
          "share_at_max": _share(swapped_at_max, total_at_max),
          "t_max": float(distances.ts[at_max]),
          "total_integrated": total,
          "top_layers": top_layers,
          "units": units}


def _json_ready(value):
  """Replaces non-finite floats by None, since JSON has no NaN or infinity."""
  if isinstance(value, dict):
    return {key: _json_ready(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(item) for item in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if np.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def save_analysis(prefix: str,
                  distances: distances_lib.Distances,
                  summary: Mapping[str, Any] | None = None,
                  swap: Mapping[str, Any] | None = None,
                  unit_results: Mapping[str, units_lib.UnitDeviation]
                  | None = None) -> tuple[str, str]:
  """Writes `prefix`.npz with every series and `prefix`.json with the summary.

  Each file is written under a temporary name and renamed when complete, so
  a crash never leaves a partial file under the final name.

  The NPZ contains `ts` (T,), `layers` (L + 1,) strings, `param_counts`,
  `start_norm`, `end_norm`, one (T, L + 1) array per metric under
  `metric/<name>`, `unit/<side>/deviation` (T, units) and
  `unit/<side>/rms` (units,) per side, and `swap_json`, `kind` and
  `num_bends` as 0-d arrays.

  Args:
    prefix: output path without suffix.
    distances: the per-layer distances.
    summary: the locality summary (`locality_summary`); saved as JSON with
      the swap metadata.
    swap: JSON-ready swap metadata, e.g. {"layer": "block2_conv1",
      "pairs": [[3, 17]], "consumer": "block2_conv2"}.
    unit_results: per-unit deviations (`units.unit_deviation`).

  Returns:
    The (npz path, json path).
  """
  swap_json = json.dumps(dict(swap or {}), sort_keys=True)
  arrays = {"ts": distances.ts, "layers": np.asarray(distances.layers),
            "param_counts": distances.param_counts,
            "start_norm": distances.start_norm, "end_norm": distances.end_norm,
            "kind": np.asarray(distances.kind),
            "num_bends": np.asarray(distances.num_bends),
            "swap_json": np.asarray(swap_json)}
  for name, values in distances.metrics.items():
    arrays[f"metric/{name}"] = values
  for side, result in (unit_results or {}).items():
    arrays[f"unit/{side}/deviation"] = result.deviation
    arrays[f"unit/{side}/rms"] = result.rms
    arrays[f"unit/{side}/swapped_units"] = np.asarray(result.swapped_units)

  npz_path, json_path = prefix + NPZ_SUFFIX, prefix + JSON_SUFFIX
  files.atomic_write(npz_path, lambda file: np.savez(file, **arrays))
  document = {"swap": dict(swap or {}), "layers": list(distances.layers),
              "param_counts": distances.param_counts.tolist(),
              "metrics": sorted(distances.metrics), **dict(summary or {})}
  text = json.dumps(_json_ready(document), indent=2, sort_keys=True, allow_nan=False)
  files.atomic_write(json_path, lambda file: file.write(text.encode()))
  return npz_path, json_path


def load_distances(npz_path: str) -> tuple[distances_lib.Distances,
                                           dict[str, Any]]:
  """Reads the distances and swap metadata that `save_analysis` wrote."""
  with np.load(npz_path, allow_pickle=False) as data:
    metrics = {key.partition("/")[2]: data[key] for key in data.files
               if key.startswith("metric/")}
    distances = distances_lib.Distances(
        ts=data["ts"], layers=tuple(str(name) for name in data["layers"]),
        param_counts=data["param_counts"], metrics=metrics,
        start_norm=data["start_norm"], end_norm=data["end_norm"],
        kind=str(data["kind"]), num_bends=int(data["num_bends"]))
    swap = json.loads(str(data["swap_json"]))
  return distances, swap
