"""Import and export of dnn-mode-connectivity PyTorch checkpoints.

`load_endpoint` and `load_curve` read `.pt` files of the reference VGG
(Garipov et al. 2018, github.com/timgaripov/dnn-mode-connectivity) into mcjax
variables and curves; `save_endpoint` and `save_curve` write them back. The
`*_state_dict` functions convert in memory with numpy alone.

Importing this package does not import torch; the file functions import it
when called and raise ImportError with install instructions without it.
"""

from mcjax.interop.convert import count_bends
from mcjax.interop.convert import curve_from_state_dict
from mcjax.interop.convert import curve_kind
from mcjax.interop.convert import curve_to_state_dict
from mcjax.interop.convert import endpoint_from_state_dict
from mcjax.interop.convert import endpoint_to_state_dict
from mcjax.interop.files import load_curve
from mcjax.interop.files import load_endpoint
from mcjax.interop.files import read_state_dict
from mcjax.interop.files import require_torch
from mcjax.interop.files import save_curve
from mcjax.interop.files import save_endpoint
from mcjax.interop.files import write_checkpoint
