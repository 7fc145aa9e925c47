"""gpunet: one layer API that trains on NVIDIA GPUs (CuPy) and on any CPU (NumPy), with the
same numbers on both, and every idea of a deep-learning fundamentals course inspectable.

The data path of one training step reads top to bottom through the modules:
backend → random → init → functional → layers → losses → optim → data/datasets → train →
checkpoint → cli.
"""
__version__ = "0.1.0"

from .backend import get_array_module, default_device, to_device, to_numpy
from .random import manual_seed
from . import init, functional
from .layers import *  # noqa: F401,F403  (the layer classes of DESIGN §4)
from .layers import __all__ as _layers_all
from .losses import SoftmaxCrossEntropy, CrossEntropyLoss, BCEWithLogits, MSELoss
from .gradcheck import gradcheck
from . import optim, data, datasets, models
from .data import DataLoader
from .train import Trainer, History, Callback, EarlyStopping, ModelCheckpoint
from .checkpoint import save, load
from . import train
from . import diagnostics
from . import amp
