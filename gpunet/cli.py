"""The ``gpunet`` command: ``train``, ``bench``, ``info`` and ``plot``."""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

from gpunet.backend import cpu_model
from gpunet.checkpoint import unwritable


class UserError(Exception):
    """A mistake in how gpunet was invoked (a bad option, a missing file, no GPU): reported
    as one line on stderr with exit status 2, never as a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``gpunet train: error: ...``) instead of the
    usage block followed by the error."""

    def error(self, message):
        raise UserError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _device_message(error) -> str:
    """A device error from :mod:`gpunet.backend` in the command line's words: the library
    tells a Python caller to use ``device='cpu'``; on the command line that is ``--device cpu``."""
    return _one_line(error).replace("device='cpu'", "--device cpu")


def _int_at_least(low):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v
    return parse


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return v


def threads_note(prog, n, processes=1):
    """Print one line on stderr when ``--threads n`` (per process, ``processes`` of them on
    this node) is more threads than the CPUs this process may run on. The count is used as
    given, as ``torch.set_num_threads`` takes any count (oversubscribing is a legitimate
    experiment), but the threads then take turns on the CPUs, which a mistyped count
    should not do silently."""
    from gpunet.threads import available_cpus
    cpus = available_cpus()
    if n is None or n * processes <= cpus:
        return
    what = f"--threads {n}" + (f" x {processes} processes" if processes > 1 else "")
    print(f"{prog}: note: {what} is more threads than the {cpus} CPU{'s' * (cpus != 1)} this "
          "process may run on; all of them are started (as torch.set_num_threads would), and "
          "they take turns on the CPUs", file=sys.stderr)


def user_path(text):
    """A path option with ``~`` expanded: the shell leaves ``--save=~/m.npz`` (and a quoted
    ``~``) as it is, and ``~`` would then be a folder of that name in the working directory."""
    return os.path.expanduser(text)


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "sim")


def _device_arg(text):
    d = text.strip().lower()
    if d in ("auto", "cpu", "cuda", "sim") or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(DEVICES)})")


def _add_train(sub):
    p = sub.add_parser("train", help="train a model on the embedded digits (default) or MNIST",
                       description="Train an MLP (default) or a CNN and print test accuracy, "
                                   "throughput and the device used.")
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                   help="default: digits (embedded); mnist needs --data-dir")
    p.add_argument("--data-dir", type=user_path, default=None,
                   help="folder with the MNIST/Fashion-MNIST IDX files (labels 0..C-1: the model gets C "
                        "outputs, at least 10)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="default: mlp")
    p.add_argument("--epochs", type=_int_at_least(1), default=None, help="default: 30 (mlp), 20 (cnn)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=64, help="default: 64")
    p.add_argument("--lr", type=_positive_float, default=None, help="default: 1e-3 (adam), 0.05 (sgd)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="adam",
                   help="default: adam (sgd: with momentum 0.9)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="default: fp32; fp16: float16 forward/backward, float32 master weights, dynamic "
                        "loss scaling (gpunet.amp); bfloat16 is not supported (NumPy has none)")
    p.add_argument("--device", type=_device_arg, default="auto", metavar="{" + ",".join(DEVICES) + "}",
                   help="default: auto (GPUNET_DEVICE, else CUDA when CuPy sees a GPU, else cpu)")
    p.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="initial weights and shuffling (default: 0)")
    p.add_argument("--threads", type=_int_at_least(1), default=None, metavar="N",
                   help="BLAS threads on the CPU (default: 1 for models whose GEMMs are small, "
                        "else every available CPU; with --distributed, shared by the processes "
                        "of the node); more than the CPUs is allowed, with a note on stderr")
    p.add_argument("--save", metavar="PATH", type=user_path, default=None, help="write a checkpoint (.npz) here (checked before training; should it fail after "
                        "training, the checkpoint goes to a new file in the temporary folder, which the "
                        "error names)")
    p.add_argument("--plot", metavar="PATH", type=user_path, default=None,
                   help=f"write loss/accuracy curves (train and test) to an image; the format "
                        f"follows the extension (.png, .svg, .pdf, ...; none: .png is appended); "
                        f"needs matplotlib: {PLOT_HINT}")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of an MPI launch (mpiexec -n N gpunet "
                        "train --distributed; needs the mpi extra): --batch-size per process, "
                        "gradients averaged (gpunet.distributed); one GPU per process on CUDA")
    p.set_defaults(func=cmd_train)


PLOT_HINT = 'pip install "gpunet[plot]"'


def _check_writable(flag, path, prog="gpunet train"):
    """Fail before training (or benchmarking), not after it, when ``path`` cannot be written."""
    problem = unwritable(path)
    if problem:
        raise UserError(f"{prog}: error: {flag} {path}: {problem}")


def _check_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UserError(f"gpunet train: error: --plot needs matplotlib, which is not installed "
                        f"({_one_line(e)}): {PLOT_HINT}") from None


def largest_gemm_macs(model, sample_shape, batch_size) -> int:
    """Multiply-adds (M·N·K) of the largest GEMM in one training step of ``model`` on batches
    of ``batch_size`` samples of ``sample_shape``: a Dense layer's ``batch·in·out``, a
    convolution's ``batch·H_out·W_out·C_out·C_in·kh·kw`` (its whole-batch GEMM). Found by
    one eval-mode forward of a single zero sample on the host."""
    import numpy
    x = numpy.zeros((1, *sample_shape), numpy.float32)
    largest = 0
    was_training = model.training
    model.eval()
    try:
        for layer in model:
            x = layer(x)
            w = getattr(layer, "weight", None)
            if w is not None and getattr(w.data, "ndim", 0) in (2, 4):
                positions = int(numpy.prod(x.shape[2:])) if w.data.ndim == 4 else 1
                largest = max(largest, int(w.data.size) * positions)
    finally:
        model.train(was_training)
    return largest * int(batch_size)


def cmd_train(args):
    """``gpunet train``. The BLAS thread count it sets is put back when it returns, so that
    calling ``gpunet.cli.main`` from Python leaves the process as it found it."""
    from gpunet import threads
    before = threads.get_num_threads()
    try:
        return _train(args)
    finally:
        if before is not None and threads.get_num_threads() != before:
            threads.set_num_threads(before)


def _train(args):
    import numpy
    import gpunet
    from gpunet import datasets, models, optim, threads
    from gpunet.backend import resolve_device

    # Everything a user can get wrong is checked before the first epoch.
    if args.data_dir is not None and args.dataset != "mnist":
        raise UserError("gpunet train: error: --data-dir is for --dataset mnist "
                        "(the digits are embedded in gpunet)")
    if args.dataset == "mnist" and not args.data_dir:
        raise UserError("gpunet train: error: --dataset mnist needs --data-dir (the folder with "
                        "train-images-idx3-ubyte[.gz] and friends)")
    if args.dataset == "mnist" and not os.path.isdir(args.data_dir):
        what = "not a directory" if os.path.exists(args.data_dir) else "no such directory"
        raise UserError(f"gpunet train: error: --data-dir {args.data_dir}: {what}")
    if args.plot:
        _check_matplotlib()
        from gpunet.plot import _image_path
        image, problem = _image_path(args.plot)
        if problem:                 # an extension matplotlib has no format for
            raise UserError(f"gpunet train: error: --plot {args.plot}: {problem}")
        _check_writable("--plot", args.plot)
        if args.save and os.path.abspath(image) == os.path.abspath(args.save):
            raise UserError(f"gpunet train: error: --save {args.save} and --plot {args.plot} name the "
                            f"same file: the curves would overwrite the checkpoint; give them two paths")
    if args.save:
        _check_writable("--save", args.save)
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as e:     # an unknown device, or why there is no CUDA
        where = "" if args.device == "auto" else f"--device {args.device}: "   # auto: GPUNET_DEVICE's fault
        raise UserError(f"gpunet train: error: {where}{_device_message(e)}") from None
    gpunet.manual_seed(args.seed)
    comm = None
    if args.distributed:
        from gpunet import distributed
        try:
            comm = distributed.init(device="cuda" if device.startswith("cuda") else "cpu")
        except (RuntimeError, ImportError) as e:
            raise UserError(f"gpunet train: error: --distributed: {_one_line(e)}") from None
        if device.startswith("cuda"):
            device = comm.device                    # cuda:<local rank>

    if args.dataset == "digits":
        (Xtr, ytr), (Xte, yte) = datasets.load_digits()
        side = 8
    else:
        try:
            Xtr, ytr = datasets.load_mnist(args.data_dir, "train")
            Xte, yte = datasets.load_mnist(args.data_dir, "test")
        except (OSError, ValueError, EOFError) as e:   # missing, unreadable or corrupt IDX files
            raise UserError(f"gpunet train: error: --data-dir {args.data_dir}: {_one_line(e)}") from None
        if Xte.shape[1] != Xtr.shape[1]:        # the model would fail at the test, after training
            raise UserError(f"gpunet train: error: --data-dir {args.data_dir}: the test images have "
                            f"{Xte.shape[1]} pixels, the training images {Xtr.shape[1]}; both splits "
                            f"must hold images of one size")
        side = int(round(Xtr.shape[1] ** 0.5))
        if side * side != Xtr.shape[1]:
            raise UserError(f"gpunet train: error: --data-dir {args.data_dir}: images of "
                            f"{Xtr.shape[1]} pixels are not square")
    # one output per class: the IDX labels may run past 9 (EMNIST's letters are 1..26), and a
    # 10-output model would stop at its first batch with a loss error about its last layer
    classes = max(10, int(max(ytr.max(), yte.max())) + 1)
    if classes != 10 and (comm is None or comm.rank == 0):
        print(f"gpunet train: note: the labels run up to {classes - 1}: the model has {classes} "
              f"outputs, one per class 0..{classes - 1}", file=sys.stderr)

    if args.model == "mlp":
        n_in = Xtr.shape[1]
        model = models.mlp((n_in, 256, 128, classes))
        epochs = args.epochs or 30
    else:
        Xtr = Xtr.reshape(-1, 1, side, side)
        Xte = Xte.reshape(-1, 1, side, side)
        model = models.cnn_digits(image_size=side, num_classes=classes)
        epochs = args.epochs or 20

    # BLAS threads: what --threads says, else (where NumPy does the math: cpu, sim) one
    # thread for small GEMMs, which a second thread only slows down on a busy machine.
    blas = ""
    if comm is None or comm.rank == 0:
        threads_note("gpunet train", args.threads, comm.local_size if comm is not None else 1)
    if args.threads or not device.startswith("cuda"):
        n = args.threads or threads.default_threads(largest_gemm_macs(model, Xtr.shape[1:], args.batch_size))
        if comm is not None and not args.threads:     # the node's CPUs shared by its processes
            n = max(1, min(n, threads.available_cpus() // comm.local_size))
        try:
            threads.set_num_threads(n)
        except RuntimeError as e:
            if args.threads:      # asked for explicitly: say it could not be done
                raise UserError(f"gpunet train: error: --threads {args.threads}: {_one_line(e)}") from None
        libs = threads.blas_libraries()
        if not device.startswith("cuda"):
            if libs:
                k = libs[0].get_num_threads()
                how = "--threads" if args.threads else "auto"
                blas = f" | {k} BLAS thread{'s' * (k != 1)} ({how}, {libs[0].label})"
            else:
                blas = " | BLAS threads unknown (no OpenBLAS/MKL/BLIS found)"

    model.to(device)
    lr = args.lr or (1e-3 if args.optimizer == "adam" else 0.05)
    if args.optimizer == "adam":
        opt = optim.Adam(model.parameters(), lr=lr)
    else:
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    root = comm is None or comm.rank == 0
    if comm is not None:
        distributed.broadcast_parameters(model, comm)
        opt = distributed.DistributedOptimizer(opt, comm)
    trainer = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), opt, device=device,
                             precision=args.precision, comm=comm)

    t0 = time.perf_counter()
    train_seconds, samples = 0.0, 0

    class _Clock(gpunet.train.Callback):
        def on_epoch_end(self, tr, epoch, logs):
            nonlocal train_seconds, samples
            train_seconds += tr.last_epoch_seconds
            samples += tr.last_epoch_samples

    try:
        # a diverging run is reported once, by the Trainer's non-finite loss check below,
        # not by a screenful of NumPy overflow warnings before it
        with numpy.errstate(over="ignore", invalid="ignore"):
            history = trainer.fit((Xtr, ytr), epochs=epochs, batch_size=args.batch_size, seed=args.seed,
                                  callbacks=[_Clock()], progress=not args.quiet,
                                  val=(Xte, yte) if args.plot else None)
    except FloatingPointError as e:     # the loss blew up: a learning rate too large, most often
        raise UserError(f"gpunet train: error: {_one_line(e)} (--lr {lr:g})") from None
    wall = time.perf_counter() - t0
    result = trainer.evaluate((Xte, yte))
    procs = ""
    if comm is not None:           # throughput of the run: every process's samples
        samples = int(comm.allreduce(numpy.array([samples], numpy.int64))[0])
        train_seconds = float(comm.allreduce(numpy.array([train_seconds]), "max")[0])
        procs = f" | {comm.size} process{'es' * (comm.size != 1)} ({comm.backend})"
        if not root:
            return 0
    if args.save:
        meta = dict(epoch=epochs, dataset=args.dataset, model=args.model, test_accuracy=result["accuracy"])
        try:
            gpunet.save(args.save, model, opt, scaler=trainer.scaler, **meta)
        except OSError as e:
            # checked before training, so the path went bad during it (its folder removed, a full
            # disk): the trained model is not thrown away with the process
            rescued = _rescue(model, opt, trainer.scaler, meta)
            raise UserError(f"gpunet train: error: --save {args.save}: {_one_line(e)}; {rescued}") from None
        print(f"saved checkpoint to {args.save}")
    if args.plot:
        try:
            written = history.plot(args.plot)
        except OSError as e:
            raise UserError(f"gpunet train: error: --plot {args.plot}: {_one_line(e)}") from None
        print(f"saved training curves to {written}")
    print(f"test accuracy {result['accuracy']:.4f} | test loss {result['loss']:.4f} | "
          f"{samples / max(train_seconds, 1e-9):,.0f} samples/s | {wall:.1f} s | "
          f"device {_device_name(device)}{blas}{procs}"
          f"{' | fp16 (loss scale %g)' % trainer.scaler.get_scale() if trainer.scaler else ''}")
    return 0


def _rescue(model, opt, scaler, meta) -> str:
    """After ``--save`` failed at the end of a run: the checkpoint written to a new file in the
    temporary folder instead (``tempfile.mkstemp``); says where, or that this failed too."""
    import tempfile
    import gpunet
    path = None
    try:
        fd, path = tempfile.mkstemp(prefix="gpunet-train-", suffix=".npz")
        os.close(fd)
        gpunet.save(path, model, opt, scaler=scaler, **meta)
    except OSError as e:
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass
        return f"the trained model could not be saved elsewhere either ({_one_line(e)})"
    return f"the trained model was saved to {path} instead"


def _device_name(device):
    if device == "cpu":
        return f"cpu ({cpu_model()})"
    if not device.startswith("cuda"):
        return device
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
    from gpunet import threads
    print(f"blas     {threads.describe()}")
    from gpunet import hostkernels
    try:
        cache = hostkernels.cache_dir()
    except RuntimeError as e:       # no $GPUNET_HOST_CACHE and no home directory
        cache = str(e)
    print(f"host kernels {hostkernels.status()} (cache {cache}; GPUNET_HOST_KERNELS=0: NumPy only)")
    if backend.cuda_available():
        n = cp.cuda.runtime.getDeviceCount()
        for i in range(n):
            print(f"gpu      {_device_name(f'cuda:{i}')}")
    else:
        print("gpu      none visible")
    env = os.environ.get("GPUNET_DEVICE", "auto")
    try:
        dev = backend.default_device()
    except (RuntimeError, ValueError) as e:     # no CUDA, or a GPUNET_DEVICE it does not know
        dev = f"unavailable: {_device_message(e)}"
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


def _version():
    from gpunet import __version__
    return __version__


def _run(argv):
    if argv[:1] == ["plot"]:
        if not {"-h", "--help"} & set(argv):
            try:
                import matplotlib  # noqa: F401
            except ImportError as e:
                raise UserError(f"gpunet plot: error: matplotlib is not installed ({_one_line(e)}): "
                                f"{PLOT_HINT}") from None
        from gpunet.plot import plot_main
        return plot_main(argv[1:])
    parser = _Parser(prog="gpunet", description="gpunet: one layer API on NumPy and CuPy")
    parser.add_argument("--version", action="version", version=f"gpunet {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{train,bench,info,plot}")
    _add_train(sub)
    _add_bench(sub)
    _add_info(sub)
    _add_plot(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        raise UserError("gpunet: error: a command is required: train, bench, info or plot "
                        "(see 'gpunet --help')")
    return args.func(args) or 0


def _end_world(code):
    """After an error in a data-parallel run (``--distributed``) of several processes: end
    them all (``MPI_Abort``), since the others may be waiting in a collective."""
    comm = sys.modules.get("gpunet.distributed.comm")
    world = getattr(comm, "_WORLD", None)
    if world is not None and world.size > 1:
        world.abort(code)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (``poll`` reports an error on its
    write end); False where that cannot be asked (no ``poll``, no file descriptor)."""
    try:
        import select
        p = select.poll()
        p.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in p.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def main(argv=None):
    """Run the ``gpunet`` command; returns its exit status.

    A user error (a bad option or number, an unusable device, a missing or unreadable
    file, a plot without matplotlib) is one line on stderr, ``gpunet <command>: error:
    ...``, and status 2; a bug still shows its traceback. Ctrl-C: ``gpunet: interrupted``,
    status 130; stdout closed by its reader (``gpunet info | head -1``): quiet, status 141. ``argv`` is a list of strings
    (None: ``sys.argv[1:]``); one string raises ``TypeError``.
    """
    if isinstance(argv, (str, bytes)):      # main("train --epochs 2") would parse 't', 'r', ...
        raise TypeError(f"gpunet.cli.main: expected argv to be a list of strings such as "
                        f"['train', '--epochs', '2'], got a {type(argv).__name__}: {argv!r}")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except UserError as e:
        print(_one_line(e), file=sys.stderr)
        _end_world(2)
        return 2
    except SystemExit as e:
        if isinstance(e.code, str):     # raise SystemExit("gpunet bench: ...") inside a command
            print(_one_line(e.code), file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("gpunet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_gone():      # another pipe (a worker's): a failure to show
            raise
        # the reader of stdout went away ('gpunet info | head -1'): stop quietly, as cat and
        # git do, with SIGPIPE's status; stdout goes to devnull so that the interpreter's
        # final flush does not fail again on the way out
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141


if __name__ == "__main__":
    sys.exit(main())
