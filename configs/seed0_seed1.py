"""Join two independently trained VGG16 endpoints (seeds 0 and 1) by a curve.

  python -m experiments.run --config configs/seed0_seed1.py \
      --workdir runs/seed0_seed1

This is the classic mode-connectivity setting of Garipov et al. 2018. The
second endpoint trains with the hyperparameters of `endpoint` and the seed of
`endpoint_b`, in its own stage folder `endpoint_b/`. The permute stage joins
the endpoints as they are ("none"); set `--config.permute.mode=
weight_matching` to first align the second network's units to the first
(Ainsworth et al. 2023), which also removes the permutation part of their
distance from the per-layer analysis.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  """Returns the two-seed config."""
  config = base.get_config()
  config.name = "seed0_seed1"
  # Train a second endpoint from seed 1.
  config.endpoint_b.enabled = True
  config.endpoint_b.seed = 1
  # Join the endpoints unchanged; "weight_matching" aligns them first.
  config.permute.mode = "none"
  return config
