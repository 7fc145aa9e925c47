"""Layers: every model in gpunet is built from these."""
from .base import Layer, Parameter, Sequential, check_input
from .activations import (Activation, Identity, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, GELU,
                          SiLU, Softplus, Softmax, LogSoftmax)
from .dense import Dense
from .reshape import Flatten
from .dropout import Dropout
from .batchnorm import BatchNorm
from .maxout import Maxout
from .conv import Conv2D; from .pooling import MaxPool2D, AvgPool2D, GlobalAvgPool2D; from .residual import Residual  # noqa: E702

__all__ = ["Layer", "Parameter", "Sequential", "Activation", "Identity", "Sigmoid", "Tanh", "ReLU",
           "LeakyReLU", "ELU", "GELU", "SiLU", "Softplus", "Softmax", "LogSoftmax", "Dense", "Flatten"]
__all__ += ["Dropout", "BatchNorm", "Maxout"]
__all__ += ["Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Residual"]
