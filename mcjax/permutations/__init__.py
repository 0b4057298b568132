"""Permutations of network units as pure transforms of variables pytrees.

A `PermutationSpec` names the permutation group acting on each axis of each
leaf; `infer_spec` builds it from a Flax model. A permutation is a dict from
group name to an int32 index array, and `apply` reindexes a variables pytree
so that the network computes the same function at another point in weight
space. See docs/permutations.md.
"""

from mcjax.permutations.equivalence import compare_networks
from mcjax.permutations.inference import infer_spec
from mcjax.permutations.matching import linear_assignment
from mcjax.permutations.matching import weight_matching
from mcjax.permutations.spec import DEPTH_PRESETS
from mcjax.permutations.spec import PermutationSpec
from mcjax.permutations.spec import validate
from mcjax.permutations.swaps import draw_pairs
from mcjax.permutations.swaps import resolve_layer
from mcjax.permutations.swaps import swap
from mcjax.permutations.transforms import Permutation
from mcjax.permutations.transforms import apply
from mcjax.permutations.transforms import check_permutation
from mcjax.permutations.transforms import compose
from mcjax.permutations.transforms import identity
from mcjax.permutations.transforms import invert
from mcjax.permutations.transforms import random
from mcjax.permutations.transforms import reverse
