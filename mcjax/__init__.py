"""mcjax: mode connectivity in JAX and Flax.

Submodules are imported on demand (`from mcjax import curves, models`), so
importing the package pulls in no optional dependency such as torch.
"""

__version__ = "0.1.0"
