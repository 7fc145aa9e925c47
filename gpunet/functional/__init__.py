"""Ops as plain functions: forward and backward side by side, one body per op written
against ``xp`` (NumPy or CuPy); where a fused CUDA kernel exists, it is one branch beside
the NumPy reference, and the NumPy path is the oracle of the GPU tests."""
from .activations import (sigmoid, sigmoid_backward, tanh, tanh_backward, relu, relu_backward,
                          leaky_relu, leaky_relu_backward, elu, elu_backward, gelu, gelu_backward,
                          silu, silu_backward, softplus, softplus_backward, softmax, softmax_backward,
                          log_softmax, log_softmax_backward)
from .linear import linear, linear_backward
from .losses import softmax_cross_entropy, bce_with_logits, mse
from .dropout import (dropout_forward, dropout_backward, dropout_eval, dropout_forward_state,
                      dropout_backward_state)
from .batchnorm import batch_norm_forward, batch_norm_backward, batch_norm_eval
from .maxout import maxout_forward, maxout_backward
from .conv import conv2d, conv2d_backward, im2col, col2im; from .pooling import max_pool2d, max_pool2d_backward, avg_pool2d, avg_pool2d_backward, global_avg_pool2d, global_avg_pool2d_backward  # noqa: E501,E702
