"""Ops as plain functions: forward and backward side by side, one body per op written
against ``xp`` (NumPy or CuPy); where a fused CUDA kernel exists, it is one branch beside
the NumPy reference, and the NumPy path is the oracle of the GPU tests."""
from .activations import (sigmoid, sigmoid_backward, tanh, tanh_backward, relu, relu_backward,
                          leaky_relu, leaky_relu_backward, elu, elu_backward, gelu, gelu_backward,
                          silu, silu_backward, softplus, softplus_backward, softmax, softmax_backward,
                          log_softmax, log_softmax_backward)
from .linear import linear, linear_backward
from .losses import softmax_cross_entropy, bce_with_logits, mse
