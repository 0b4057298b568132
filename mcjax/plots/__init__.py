"""Pictures of a curve: per-layer GIF and heatmap, loss and error along t.

Example:

  plots.save_layer_animation("deviation.gif", distances, "deviation",
                             highlight=["block2_conv1", "block2_conv2"])
  plots.save_heatmap("deviation.png", distances, "deviation")
  plots.save_loss_along_t("loss.png", {"curve": curve_series,
                                       "line": line_series})
"""

from mcjax.plots.evaluation import save_loss_along_t
from mcjax.plots.layers import layer_frames
from mcjax.plots.layers import save_heatmap
from mcjax.plots.layers import save_layer_animation
