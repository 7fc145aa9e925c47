"""The ``gpunet`` command: ``train``, ``bench``, ``info`` and ``plot``."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from gpunet.backend import cpu_model


def _add_train(sub):
    p = sub.add_parser("train", help="train a model on the embedded digits (default) or MNIST",
                       description="Train an MLP (default) or a CNN and print test accuracy, "
                                   "throughput and the device used.")
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST/Fashion-MNIST IDX files")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--epochs", type=int, default=None, help="default: 30 (mlp), 20 (cnn)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (adam), 0.05 (sgd)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="adam")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", metavar="PATH", default=None, help="write a checkpoint (.npz) here")
    p.add_argument("--plot", metavar="PATH", default=None, help="write loss/accuracy curves (PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _positive(name, v):
    if v is not None and v <= 0:
        raise SystemExit(f"gpunet train: --{name} must be positive, got {v}")


def cmd_train(args):
    import numpy
    import gpunet
    from gpunet import datasets, models, optim
    from gpunet.backend import resolve_device

    for name in ("epochs", "batch_size", "lr"):
        _positive(name.replace("_", "-"), getattr(args, name))
    device = resolve_device(args.device)
    gpunet.manual_seed(args.seed)

    if args.dataset == "digits":
        (Xtr, ytr), (Xte, yte) = datasets.load_digits()
        side = 8
    else:
        if not args.data_dir:
            raise SystemExit("gpunet train: --dataset mnist needs --data-dir (the folder with "
                             "train-images-idx3-ubyte[.gz] and friends)")
        Xtr, ytr = datasets.load_mnist(args.data_dir, "train")
        Xte, yte = datasets.load_mnist(args.data_dir, "test")
        side = 28

    if args.model == "mlp":
        n_in = Xtr.shape[1]
        model = models.mlp((n_in, 256, 128, 10))
        epochs = args.epochs or 30
    else:
        Xtr = Xtr.reshape(-1, 1, side, side)
        Xte = Xte.reshape(-1, 1, side, side)
        model = models.cnn_digits(image_size=side)
        epochs = args.epochs or 20
    model.to(device)
    lr = args.lr or (1e-3 if args.optimizer == "adam" else 0.05)
    if args.optimizer == "adam":
        opt = optim.Adam(model.parameters(), lr=lr)
    else:
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    trainer = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), opt, device=device)

    t0 = time.perf_counter()
    train_seconds, samples = 0.0, 0

    class _Clock(gpunet.train.Callback):
        def on_epoch_end(self, tr, epoch, logs):
            nonlocal train_seconds, samples
            train_seconds += tr.last_epoch_seconds
            samples += tr.last_epoch_samples

    history = trainer.fit((Xtr, ytr), epochs=epochs, batch_size=args.batch_size, seed=args.seed,
                          callbacks=[_Clock()], progress=not args.quiet,
                          val=(Xte, yte) if args.plot else None)
    wall = time.perf_counter() - t0
    result = trainer.evaluate((Xte, yte))
    if args.save:
        gpunet.save(args.save, model, opt, epoch=epochs, dataset=args.dataset, model=args.model,
                    test_accuracy=result["accuracy"])
        print(f"saved checkpoint to {args.save}")
    if args.plot:
        history.plot(args.plot)
        print(f"saved training curves to {args.plot}")
    print(f"test accuracy {result['accuracy']:.4f} | test loss {result['loss']:.4f} | "
          f"{samples / max(train_seconds, 1e-9):,.0f} samples/s | {wall:.1f} s | device {_device_name(device)}")
    return 0


def _device_name(device):
    if device == "cpu":
        return f"cpu ({cpu_model()})"
    from gpunet.backend import cupy_module
    cp = cupy_module()
    idx = int(device.split(":")[1]) if ":" in device else 0
    props = cp.cuda.runtime.getDeviceProperties(idx)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"{device} ({name})"


def cmd_info(args):
    import numpy
    import gpunet
    from gpunet import backend
    print(f"gpunet   {gpunet.__version__}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"numpy    {numpy.__version__}")
    try:
        import tqdm
        print(f"tqdm     {tqdm.__version__}")
    except ImportError:
        print("tqdm     not installed")
    cp = backend.cupy_module()
    if cp is None:
        print(f"cupy     not installed ({backend._cupy_error.__class__.__name__}); "
              "pip install 'gpunet[cuda12]' or 'gpunet[cuda13]' for the GPU")
    else:
        print(f"cupy     {cp.__version__}")
    print(f"cpu      {cpu_model()} ({os.cpu_count()} logical cores)")
    if backend.cuda_available():
        n = cp.cuda.runtime.getDeviceCount()
        for i in range(n):
            print(f"gpu      {_device_name(f'cuda:{i}')}")
    else:
        print("gpu      none visible")
    env = os.environ.get("GPUNET_DEVICE", "auto")
    try:
        dev = backend.default_device()
    except RuntimeError as e:
        dev = f"unavailable: {e}"
    print(f"device   {dev} (GPUNET_DEVICE={env})")
    try:
        from gpunet import cuda as gcuda
        print(f"kernels  {gcuda.kernels_dir()}")
        cache = os.environ.get("CUPY_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cupy", "kernel_cache"))
        print(f"kernel cache {cache} (CuPy's; set CUPY_CACHE_DIR to move it)")
    except (ImportError, AttributeError, FileNotFoundError) as e:
        print(f"kernels  not found ({e})")
    tf32 = os.environ.get("CUPY_TF32", "0")
    print(f"CUPY_TF32={tf32} ({'TF32 matmuls' if tf32 == '1' else 'exact float32 matmuls'})")
    return 0


def _add_info(sub):
    p = sub.add_parser("info", help="versions, backend, device name, kernel cache location")
    p.set_defaults(func=cmd_info)


def _add_bench(sub):
    try:
        from gpunet import bench
    except ImportError:
        bench = None
    if bench is not None and hasattr(bench, "add_arguments"):
        p = sub.add_parser("bench", help="training throughput and kernel benchmarks")
        bench.add_arguments(p)
        p.set_defaults(func=bench.run)


def _add_plot(sub):
    p = sub.add_parser("plot", help="course figures, e.g. 'gpunet plot activations --out a.png'",
                       add_help=False)
    p.set_defaults(func=None)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plot"]:
        from gpunet.plot import plot_main
        return plot_main(argv[1:])
    parser = argparse.ArgumentParser(prog="gpunet", description="gpunet: one layer API on NumPy and CuPy")
    sub = parser.add_subparsers(dest="command", metavar="{train,bench,info,plot}")
    _add_train(sub)
    _add_bench(sub)
    _add_info(sub)
    _add_plot(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
