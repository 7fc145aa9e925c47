"""The gpunet command line (run in-process through gpunet.cli.main)."""
import re
import subprocess
import sys

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
    with pytest.raises(SystemExit):
        cli.main(["train", "--epochs", "0"])
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", "mnist"])  # needs --data-dir
    with pytest.raises(SystemExit):
        cli.main(["train", "--optimizer", "lbfgs"])


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "gpunet" in out and "numpy" in out and "device" in out and "cpu" in out


def test_console_script_entry_point():
    # the installed `gpunet` script and `python -m gpunet.cli` reach the same main
    r = subprocess.run([sys.executable, "-m", "gpunet.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout


def test_train_cnn(capsys):
    assert cli.main(["train", "--model", "cnn", "--epochs", "3", "--device", "cpu", "--quiet"]) == 0
    acc, _, _ = _final_line(capsys.readouterr().out)
    assert acc > 0.85
