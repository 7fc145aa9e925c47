"""The gpunet command line: in-process through gpunet.cli.main, and as a user runs it (a
subprocess) for the errors: every user error is one line on stderr and exit status 2."""
import os
import re
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import cli


def _final_line(out):
    lines = [l for l in out.strip().splitlines() if l.startswith("test accuracy")]
    assert lines, out
    m = re.match(r"test accuracy ([0-9.]+) \| test loss [0-9.]+ \| ([0-9,]+) samples/s \| "
                 r"[0-9.]+ s \| device (\S+)", lines[-1])
    assert m, lines[-1]
    return float(m.group(1)), float(m.group(2).replace(",", "")), m.group(3)


def test_default_train_reaches_accuracy(capsys, monkeypatch):
    monkeypatch.setenv("GPUNET_DEVICE", "cpu")
    assert cli.main(["train", "--quiet"]) == 0
    acc, sps, device = _final_line(capsys.readouterr().out)
    assert acc >= 0.95
    assert sps > 0 and device == "cpu"


def test_train_threads_above_the_cpus_is_noted_and_used(capsys):
    """``--threads N`` above the CPU count was used without a word; it is still used (as
    torch.set_num_threads takes any count) and a one-line note on stderr says so."""
    from gpunet import threads
    if not threads.blas_libraries():
        pytest.skip("no BLAS library gpunet.threads can drive")
    cpus = threads.available_cpus()
    before = threads.get_num_threads()
    try:
        assert cli.main(["train", "--epochs", "1", "--device", "cpu", "--quiet", "--threads", str(cpus + 1)]) == 0
        assert cli.main(["train", "--epochs", "1", "--device", "cpu", "--quiet", "--threads", str(cpus)]) == 0
    finally:
        threads.set_num_threads(before)
    cap = capsys.readouterr()
    assert cap.err.splitlines() == [
        f"gpunet train: note: --threads {cpus + 1} is more threads than the {cpus} CPU{'s' * (cpus != 1)} "
        "this process may run on; all of them are started (as torch.set_num_threads would), and "
        "they take turns on the CPUs"]
    assert f"| {cpus + 1} BLAS threads (--threads" in cap.out and f"BLAS thread{'s' * (cpus != 1)} (--threads" in cap.out


def test_train_options_save_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ck, png = tmp_path / "m.npz", tmp_path / "curves.png"
    assert cli.main(["train", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05",
                     "--batch-size", "32", "--seed", "3", "--device", "cpu", "--quiet",
                     "--save", str(ck), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    acc, _, _ = _final_line(out)
    model = gpunet.models.mlp((64, 256, 128, 10))
    meta = gpunet.load(ck, model)
    assert meta["epoch"] == 2 and meta["test_accuracy"] == pytest.approx(acc)
    assert png.stat().st_size > 1000


def test_train_progress_bar_and_bad_arguments(capsys):
    assert cli.main(["train", "--epochs", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "samples/s" in err
    for argv in (["train", "--epochs", "0"], ["train", "--dataset", "mnist"],  # mnist needs --data-dir
                 ["train", "--optimizer", "lbfgs"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "error" in err, (argv, err)


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "gpunet" in out and "numpy" in out and "device" in out and "cpu" in out


def test_info_without_a_home_directory(capsys, monkeypatch):
    """$HOME unset and a user id without a passwd entry (a container run with --user N):
    pathlib's 'Could not determine home directory.' came out of `gpunet info` as a
    traceback, from the host kernels' default cache directory. Now info says so."""
    import pwd
    from gpunet import hostkernels

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("GPUNET_HOST_CACHE", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    # this process's kernels switched off for the test (no build tried without a cache)
    monkeypatch.setattr(hostkernels, "_state", {**hostkernels._state, "enabled": False})
    assert cli.main(["info"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("host kernels"))
    assert "(cache no cache directory: no home directory ($HOME unset, no passwd entry); set " \
           "GPUNET_HOST_CACHE; GPUNET_HOST_KERNELS=0: NumPy only)" in line
    with pytest.raises(RuntimeError, match=r"no home directory .*; set GPUNET_HOST_CACHE$"):
        hostkernels.cache_dir()


@pytest.mark.parametrize("command", ["train", "bench"])
def test_help_states_every_default(command):
    """`gpunet train --help` and `gpunet bench --help` say what each option does when it is
    left out (train showed no default for --batch-size, --seed, --model, --dataset,
    --optimizer, --precision; bench none for --precision)."""
    import argparse
    sub = argparse.ArgumentParser().add_subparsers()
    cli._add_train(sub)
    cli._add_bench(sub)
    undocumented = [a.option_strings[0] for a in sub.choices[command]._actions
                    if not any(a.default is d for d in (None, False, argparse.SUPPRESS))
                    and "default" not in (a.help or "")]
    assert not undocumented, undocumented


@pytest.mark.parametrize("module", ["gpunet.cli", "gpunet"])
def test_console_script_entry_point(module):
    # the installed `gpunet` script, `python -m gpunet.cli` and `python -m gpunet` reach the
    # same main: its help, and its one-line user errors with status 2
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: gpunet " in r.stdout and "train" in r.stdout
    r = subprocess.run([sys.executable, "-m", module, "train", "--epochs", "x"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "gpunet train: error: argument --epochs: expected an integer, got 'x' (see 'gpunet train --help')"]


def test_train_cnn(capsys):
    assert cli.main(["train", "--model", "cnn", "--epochs", "3", "--device", "cpu", "--quiet"]) == 0
    acc, _, _ = _final_line(capsys.readouterr().out)
    assert acc > 0.85



@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_train_sizes_the_output_layer_from_the_idx_labels(model, tmp_path, capsys):
    """IDX files whose labels run past 9 (EMNIST's letters are numbered 1..26) train a model
    with one output per label (found by the data audit: a 10-output model stopped at its first
    batch with a traceback from the loss, whose advice, a last layer with more outputs, the
    command line gives no way to follow)."""
    from test_datasets import _write_split     # tests/ is on sys.path under pytest
    rng = numpy.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        images = rng.integers(0, 256, size=(n, 8, 8), dtype=numpy.uint8)
        labels = rng.integers(1, 27, size=n, dtype=numpy.uint8)
        labels[0] = 26
        _write_split(str(tmp_path), prefix, images, labels)
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--model", model,
                     "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    out, err = capsys.readouterr()
    _final_line(out)
    assert "27 outputs" in err, err


def test_test_images_of_another_size_are_one_line(tmp_path):
    """Found by the data audit: t10k images of another size than the training ones ended in a
    traceback, for the MLP after all its epochs (at the test), for the CNN in a reshape."""
    from test_datasets import _write_split
    rng = numpy.random.default_rng(0)
    data = tmp_path / "mnist"
    data.mkdir()
    for prefix, n, side in (("train", 30, 8), ("t10k", 10, 6)):
        _write_split(str(data), prefix, rng.integers(0, 256, size=(n, side, side), dtype=numpy.uint8),
                     rng.integers(0, 10, size=n, dtype=numpy.uint8))
    for model in ("mlp", "cnn"):
        _assert_user_error(_gpunet(["train", "--dataset", "mnist", "--data-dir", str(data), "--model", model,
                                    "--epochs", "1", "--device", "cpu"], tmp_path),
                           "--data-dir", "the test images have 36 pixels, the training images 64")

# -- user errors, as a user meets them: one line on stderr, exit status 2 ---------------------

_BLOCK_MATPLOTLIB = "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n"


def _gpunet(args, tmp_path, env=None, block_matplotlib=False):
    """Run ``python -m gpunet.cli ARGS`` in ``tmp_path`` as a user would."""
    e = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    if block_matplotlib:    # a package named matplotlib whose import fails as a missing one does
        blocker = tmp_path / "block"
        (blocker / "matplotlib").mkdir(parents=True, exist_ok=True)
        (blocker / "matplotlib" / "__init__.py").write_text(_BLOCK_MATPLOTLIB)
        e["PYTHONPATH"] = os.pathsep.join(p for p in (str(blocker), e.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "gpunet.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=e, timeout=300)


def _assert_user_error(p, *needles):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith("gpunet") and "error" in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert p.stdout == "", p.stdout      # failed before training: nothing printed


def _cuda_available():
    from gpunet import backend
    return backend.cuda_available()


@pytest.mark.parametrize("args, needles", [
    (["train", "--epochs", "x"], ["--epochs", "'x'"]),
    (["train", "--epochs", "0"], ["--epochs"]),
    (["train", "--batch-size", "-3"], ["--batch-size"]),
    (["train", "--lr", "nan"], ["--lr"]),
    (["train", "--lr", "1e-3x"], ["--lr"]),
    (["train", "--seed", "-1"], ["--seed"]),
    (["train", "--threads", "0"], ["--threads"]),
    (["train", "--device", "gpu"], ["--device", "'gpu'"]),
    (["train", "--model", "resnet"], ["--model"]),
    (["train", "--no-such-flag"], ["--no-such-flag"]),
    (["train", "--dataset", "mnist"], ["--data-dir"]),
    (["train", "--dataset", "mnist", "--data-dir", "missing"], ["missing"]),
    (["train", "--data-dir", "."], ["--data-dir"]),               # the digits are embedded
    (["train", "--save", "no/such/dir/m.npz"], ["--save"]),
    (["train", "--save", "."], ["--save"]),                       # a directory
    # found by the CLI audit: a file given as --data-dir was 'no such directory'
    (["train", "--dataset", "mnist", "--data-dir", "f.txt"], ["--data-dir f.txt: not a directory"]),
    (["frobnicate"], ["frobnicate"]),
    ([], ["command"]),
    (["bench", "--rounds", "0"], ["--rounds"]),
    (["bench", "--threads", "0"], ["--threads"]),
    # found by fuzzing: these used to run every benchmark, then end in a traceback
    (["bench", "--quick", "--rounds", "1", "--json", "no/such/dir/b.json"], ["gpunet bench", "--json"]),
    (["bench", "--quick", "--rounds", "1", "--json", "."], ["gpunet bench", "--json", "directory"]),
    # found by the CLI audit: a NaN or infinite --min-time was taken (nothing timed, NaN in the
    # --json report), and --profile did not check --threads (0: a ValueError traceback)
    (["bench", "--quick", "--rounds", "1", "--models", "mlp-784-128-10", "--min-time", "nan"],
     ["gpunet bench", "--min-time", "'nan'"]),
    (["bench", "--quick", "--rounds", "1", "--models", "mlp-784-128-10", "--min-time", "inf"],
     ["gpunet bench", "--min-time", "'inf'"]),
    (["bench", "--profile", "--models", "mlp-784-128-10", "--threads", "0"], ["gpunet bench", "--threads"]),
    (["bench", "--profile", "--models", "mlp-784-128-10", "--min-time", "-1"], ["gpunet bench", "--min-time"]),
])
def test_bad_arguments_are_one_line(args, needles, tmp_path):
    (tmp_path / "f.txt").write_text("not a folder")
    _assert_user_error(_gpunet(args, tmp_path), *needles)


def test_diverging_training_is_one_line(tmp_path):
    p = _gpunet(["train", "--optimizer", "sgd", "--lr", "1e4", "--epochs", "2", "--quiet", "--device", "cpu"],
                tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
    assert "non-finite loss" in lines[0] and "--lr 10000" in lines[0]


def test_corrupt_or_unreadable_data_files_are_one_line(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (data / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")
    _assert_user_error(_gpunet(["train", "--dataset", "mnist", "--data-dir", str(data)], tmp_path),
                       "--data-dir", "train-images-idx3-ubyte")
    (data / "train-images-idx3-ubyte.gz").unlink()
    (data / "train-images-idx3-ubyte").mkdir()               # a folder where the file should be
    _assert_user_error(_gpunet(["train", "--dataset", "mnist", "--data-dir", str(data)], tmp_path),
                       "--data-dir")


@pytest.mark.skipif(_cuda_available(), reason="a GPU is visible: --device cuda works here")
def test_cuda_without_a_gpu_is_one_line(tmp_path):
    p = _gpunet(["train", "--device", "cuda"], tmp_path)
    _assert_user_error(p, "--device cuda", "CUDA")
    assert "device='cpu'" not in p.stderr, p.stderr     # the library's words, not the command line's
    _assert_user_error(_gpunet(["train"], tmp_path, env={"GPUNET_DEVICE": "cuda"}), "CUDA")
    p = _gpunet(["bench", "--device", "cuda", "--quick"], tmp_path)
    assert p.returncode == 2 and "device='cpu'" not in p.stderr, p.stderr


@pytest.mark.skipif(_cuda_available(), reason="a GPU is visible: there is no error to word")
def test_device_errors_say_the_command_line_option():
    from gpunet import backend
    with pytest.raises(RuntimeError) as e:
        backend.require_cuda()
    text = cli._device_message(e.value)
    assert "device='cpu'" not in text and "\n" not in text
    if "device='cpu'" in str(e.value):             # CuPy installed, no GPU: the CPU hint
        assert "--device cpu" in text


def test_bad_gpunet_device_is_one_line(tmp_path):
    _assert_user_error(_gpunet(["train"], tmp_path, env={"GPUNET_DEVICE": "bogus"}), "GPUNET_DEVICE", "bogus")
    p = _gpunet(["info"], tmp_path, env={"GPUNET_DEVICE": "bogus"})      # info reports it, no traceback
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert re.search(r"^device +unavailable: .*bogus", p.stdout, flags=re.M), p.stdout


def test_device_sim_is_a_choice(tmp_path):
    for d in ("sim", "cpu", "cuda", "cuda:1", "auto", "SIM"):
        assert cli._device_arg(d) == d.lower()
    p = _gpunet(["train", "--help"], tmp_path)
    assert "{auto,cpu,cuda,cuda:N,sim}" in p.stdout


@pytest.mark.skipif(gpunet.sim.compiler() is None, reason="no C++ compiler: no sim device "
                    "(CI sets GPUNET_REQUIRE_SIM=1, which makes that an error)")
def test_train_on_sim(tmp_path):
    # the simulated CUDA device (gpunet/sim): its runtime module is what CuPy's RawModule maps to
    p = _gpunet(["train", "--device", "sim", "--epochs", "1", "--quiet"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _final_line(p.stdout)[2] == "sim"


def test_plot_without_matplotlib_fails_before_training(tmp_path):
    p = _gpunet(["train", "--plot", "curves.png"], tmp_path, block_matplotlib=True)
    _assert_user_error(p, "--plot", "matplotlib", 'pip install "gpunet[plot]"')
    assert "epoch" not in p.stderr                           # no epoch was trained
    assert not (tmp_path / "curves.png").exists()
    p = _gpunet(["plot", "activations", "--out", "a.png"], tmp_path, block_matplotlib=True)
    _assert_user_error(p, "matplotlib", 'pip install "gpunet[plot]"')
    # and without --plot, matplotlib is not needed
    p = _gpunet(["train", "--epochs", "1", "--quiet", "--device", "cpu"], tmp_path, block_matplotlib=True)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize("args, needles", [
    (["plot", "activations", "--out", "no/such/dir/a.png"], ["gpunet plot", "--out", "no such directory"]),
    (["plot", "activations", "--out", "."], ["gpunet plot", "--out", "directory"]),
    (["plot", "activations", "--out", "a.xyz"], ["gpunet plot", "--out", ".png", "got .xyz"]),
    (["plot", "activations", "--xmin", "nan"], ["gpunet plot", "--xmin"]),
    (["train", "--plot", "curves.xyz"], ["gpunet train", "--plot", ".png", "got .xyz"]),
    # found by the CLI audit: the curves overwrote the checkpoint after training
    (["train", "--save", "run.png", "--plot", "run.png"], ["gpunet train", "--save run.png and --plot run.png name the same file"]),
    (["train", "--save", "run.png", "--plot", "run"], ["gpunet train", "same file"]),   # run -> run.png
])
def test_unwritable_plot_paths_are_one_line(args, needles, tmp_path):
    # found by the first-hour audit: the first three ended in a traceback, the --plot one
    # after every epoch had been trained
    pytest.importorskip("matplotlib")
    p = _gpunet(args, tmp_path)
    _assert_user_error(p, *needles)
    assert "epoch" not in p.stderr and not list(tmp_path.glob("*.xyz"))


@pytest.mark.parametrize("args, needles", [
    (["plot"], ["gpunet plot: error:", "required", "{activations}"]),
    (["plot", "histogram"], ["gpunet plot: error:", "'histogram'", "activations"]),
    (["plot", "activations", "--xmin", "a"], ["gpunet plot activations: error:", "--xmin", "'a'"]),
    (["plot", "activations", "--xmin", "3", "--xmax", "1"], ["gpunet plot activations: error:", "--xmin (3.0)"]),
    (["plot", "activations", "--bogus"], ["gpunet plot: error:", "--bogus"]),
])
def test_plot_argument_errors_are_one_line(args, needles, capsys, tmp_path, monkeypatch):
    # found by the CLI audit: gpunet plot's argparse errors printed the usage block, then
    # the error (two lines), unlike every other command's
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and out == "", err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not list(tmp_path.iterdir())         # nothing drawn


def test_plot_path_without_extension_names_the_file_written(tmp_path):
    # matplotlib appends .png to a path without an extension; the message names that file
    pytest.importorskip("matplotlib")
    p = _gpunet(["plot", "activations", "--out", "figure"], tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "wrote figure.png", (p.stdout, p.stderr)
    assert (tmp_path / "figure.png").stat().st_size > 1000
    p = _gpunet(["train", "--epochs", "1", "--quiet", "--device", "cpu", "--plot", "curves"], tmp_path)
    assert p.returncode == 0 and "saved training curves to curves.png" in p.stdout, (p.stdout, p.stderr)
    assert (tmp_path / "curves.png").exists() and not (tmp_path / "curves").exists()


def test_version(tmp_path):
    p = _gpunet(["--version"], tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == f"gpunet {gpunet.__version__}", (p.stdout, p.stderr)


def test_help_lists_sim_and_threads(tmp_path):
    p = _gpunet(["train", "--help"], tmp_path)
    assert p.returncode == 0
    assert "sim" in p.stdout and "--threads" in p.stdout and "--version" not in p.stdout


def test_train_fp16_saves_the_loss_scaler(tmp_path, capsys):
    """--precision fp16: float16 forward/backward, float32 master weights in the checkpoint,
    the GradScaler's state saved beside them; accuracy as float32's (>= 0.95)."""
    ck = tmp_path / "m.npz"
    assert cli.main(["train", "--precision", "fp16", "--epochs", "10", "--device", "cpu",
                     "--quiet", "--save", str(ck)]) == 0
    out = capsys.readouterr().out
    acc, _, _ = _final_line(out)
    assert acc >= 0.95
    assert "fp16 (loss scale " in out
    model = gpunet.models.mlp((64, 256, 128, 10))
    scaler = gpunet.amp.GradScaler()
    gpunet.load(ck, model, scaler=scaler)
    assert all(p.data.dtype == "float32" for p in model.parameters())
    assert 1.0 <= scaler.get_scale() <= 2.0**16
    p = _gpunet(["train", "--precision", "bf16"], tmp_path)
    assert p.returncode == 2 and "--precision" in p.stderr


def test_main_refuses_one_string_for_argv():
    """Found by the CLI audit: cli.main("train --epochs 2") took the string as a list of
    characters and answered "invalid choice: 't'"."""
    with pytest.raises(TypeError, match=r"^gpunet.cli.main: expected argv to be a list of strings such as "
                                        r"\['train', '--epochs', '2'\], got a str: 'train --epochs 2'"):
        cli.main("train --epochs 2")


def test_path_options_expand_the_home_folder(tmp_path, monkeypatch, capsys):
    """Found by the CLI audit: the shell leaves '--save=~/m.npz' as it is, and gpunet wrote
    (or refused, 'no such directory <cwd>/~') a path under a folder named '~'."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert cli.main(["train", "--epochs", "1", "--quiet", "--device", "cpu", "--save=~/m.npz"]) == 0
    assert (home / "m.npz").exists() and not (work / "~").exists()
    assert cli.main(["train", "--dataset", "mnist", "--data-dir=~/nope"]) == 2
    assert f"--data-dir {home / 'nope'}: no such directory" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="a closed pipe's write end is asked with poll")
@pytest.mark.parametrize("args", [["info"], ["train", "--epochs", "1", "--quiet", "--device", "cpu"]])
def test_a_stdout_closed_by_its_reader_ends_quietly(args, tmp_path):
    """Found by the failure-path audit: 'gpunet info | head -1' (stdout closed by its reader
    before gpunet wrote) ended in a BrokenPipeError traceback and status 1; so did 'gpunet
    train --quiet | head -0' at its last line, after training. It now ends quietly with
    SIGPIPE's status, 141, as cat and git end."""
    e = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "gpunet.cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=tmp_path, env=e)
    p.stdout.close()                   # the reader goes away before gpunet writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141, err[-3000:]
    assert err == ""


def test_a_save_path_that_goes_bad_during_training_does_not_lose_the_model(tmp_path, monkeypatch, capsys):
    """Found by the failure-path audit: --save is checked before training, but when its folder
    was removed during the run (or the disk filled) the save after training failed and the
    trained model went with the process ('gpunet train: error: --save ...: [Errno 2] ...').
    The checkpoint is now written to a new file in the temporary folder instead, and the one
    line says where; the status is still 2."""
    import tempfile
    folder = tmp_path / "runs"
    folder.mkdir()
    spare = tmp_path / "spare"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    real_fit = gpunet.Trainer.fit

    def fit_then_remove(self, *a, **k):      # the folder goes away while it trains
        h = real_fit(self, *a, **k)
        folder.rmdir()
        return h
    monkeypatch.setattr(gpunet.Trainer, "fit", fit_then_remove)
    assert cli.main(["train", "--epochs", "1", "--quiet", "--device", "cpu", "--save", str(folder / "m.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gpunet train: error: --save {folder / 'm.npz'}: "), err
    m = re.search(r"; the trained model was saved to (\S+) instead$", err[0])
    assert m and os.path.dirname(m.group(1)) == str(spare), err[0]
    meta = gpunet.load(m.group(1), gpunet.models.mlp((64, 256, 128, 10)))
    assert meta["epoch"] == 1 and meta["dataset"] == "digits" and 0 <= meta["test_accuracy"] <= 1
