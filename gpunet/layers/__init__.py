"""Layers: every model in gpunet is built from these."""
from .base import Layer, Parameter, Sequential, check_input
from .activations import (Activation, Identity, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, GELU,
                          SiLU, Softplus, Softmax, LogSoftmax)
from .dense import Dense
from .reshape import Flatten

__all__ = ["Layer", "Parameter", "Sequential", "Activation", "Identity", "Sigmoid", "Tanh", "ReLU",
           "LeakyReLU", "ELU", "GELU", "SiLU", "Softplus", "Softmax", "LogSoftmax", "Dense", "Flatten"]
