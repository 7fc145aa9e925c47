"""The five training setups whose graphed steps must equal their eager steps, shared by the
sim's test (tests/test_cuda_graphs.py, which also counts launches) and the GPU's
(tests/test_cuda_gpu.py)."""
import gpunet
from gpunet import (BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential, datasets,
                    models, optim)

KINDS = ["mlp_adam", "mlp_fp16", "cnn_sgd_schedule_clip", "mlp_bn_dropout", "cnn_bn_dropout"]


def build(kind, device):
    """``(model, X, y, optimizer, Trainer keyword arguments)`` for ``kind`` on ``device``:
    300 digits, seeded weights."""
    (X, y), _ = datasets.load_digits()
    X, y = X[:300], y[:300]
    gpunet.manual_seed(0)
    kw = {}
    if kind == "mlp_adam":
        m = models.mlp((64, 256, 128, 10)).to(device)
        opt = optim.Adam(m, lr=1e-3)
    elif kind == "mlp_fp16":
        m = models.mlp((64, 32, 10)).to(device)
        opt = optim.Adam(m, lr=1e-2)
        kw = dict(precision="fp16", scaler=gpunet.amp.GradScaler(init_scale=2.0**20, growth_interval=3))
    elif kind == "mlp_bn_dropout":
        m = Sequential(Dense(64, 32, activation="relu"), BatchNorm(32), Dropout(0.3, seed=4),
                       Dense(32, 10)).to(device)
        opt = optim.Adam(m, lr=1e-2)
    elif kind == "cnn_bn_dropout":
        m = Sequential(Conv2D(1, 4, 3, padding=1, activation="relu"), BatchNorm(4),
                       Dropout(0.2, seed=5), MaxPool2D(2), Flatten(), Dense(4 * 4 * 4, 10)).to(device)
        X = X.reshape(-1, 1, 8, 8)
        opt = optim.SGD(m, lr=0.05, momentum=0.9)
    elif kind == "cnn_sgd_schedule_clip":
        m = models.cnn_digits(channels=(4, 8)).to(device)
        X = X.reshape(-1, 1, 8, 8)
        opt = optim.SGD(m, lr=0.05, momentum=0.9)
        kw = dict(scheduler=optim.LinearWarmup(opt, 5), scheduler_interval="step", clip_grad_norm=0.5)
    else:
        raise ValueError(kind)
    return m, X, y, opt, kw
