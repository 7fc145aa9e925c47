"""gpunet.save / gpunet.load: file modes, read-only targets, errors naming the path, files
that are not checkpoints, and scheduler state (DESIGN §8)."""
import errno
import os
import re
import stat

import numpy
import pytest

import gpunet
from gpunet import Dense, Sequential, optim


def _model(seed=0):
    gpunet.manual_seed(seed)
    return Sequential(Dense(4, 5, activation="relu"), Dense(5, 2))


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def _leftovers(folder, keep):
    return sorted(set(os.listdir(folder)) - set(keep))


# -- file modes --------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_new_file_gets_0666_minus_umask(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "new.npz"
    gpunet.save(path, _model())
    with open(tmp_path / "plain.txt", "w") as f:   # what any other write gives
        f.write("x")
    assert _mode(path) == 0o666 & ~mask == _mode(tmp_path / "plain.txt")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o200])
def test_replacing_keeps_the_file_mode(tmp_path, umask, mode):
    umask(0o077)   # the replaced file's mode wins over the umask
    path = tmp_path / "ck.npz"
    gpunet.save(path, _model(), tag="old")
    os.chmod(path, mode)
    gpunet.save(path, _model(1), tag="new")
    assert _mode(path) == mode
    os.chmod(path, 0o600)
    assert gpunet.load(path, _model())["tag"] == "new"
    assert _leftovers(tmp_path, ["ck.npz"]) == []


@pytest.mark.parametrize("mode", [0o444, 0o400, 0o555])
def test_read_only_target_raises_and_is_left_intact(tmp_path, mode):
    """Refused even for root, who could write it: a file without a write bit is read-only."""
    path = tmp_path / "ck.npz"
    gpunet.save(path, _model(), tag="old")
    before = path.read_bytes()
    os.chmod(path, mode)
    with pytest.raises(PermissionError) as e:
        gpunet.save(path, _model(1), tag="new")
    assert e.value.filename == str(path) and str(path) in str(e.value)
    assert ".tmp" not in str(e.value)
    assert path.read_bytes() == before and _mode(path) == mode
    assert _leftovers(tmp_path, ["ck.npz"]) == []


def test_directory_target_raises_naming_it(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        gpunet.save(d, _model())
    assert e.value.filename == str(d)
    assert _leftovers(tmp_path, ["adir"]) == [] and os.listdir(d) == []


def test_symlink_keeps_pointing_at_the_updated_file(tmp_path):
    real = tmp_path / "real.npz"
    gpunet.save(real, _model(), tag="old")
    os.chmod(real, 0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    gpunet.save(link, _model(), tag="new")
    assert link.is_symlink() and gpunet.load(real, _model())["tag"] == "new"
    assert _mode(real) == 0o640


# -- every error names the target path, not the temporary file -----------------------------------
def test_write_error_names_the_target_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    gpunet.save(path, _model(), tag="old")
    before = path.read_bytes()

    def full(f, **arrays):   # as a full disk would fail, on the temporary file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name if hasattr(f, "name") else None)
    monkeypatch.setattr(numpy, "savez", full)
    with pytest.raises(OSError) as e:
        gpunet.save(path, _model(), tag="new")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert ".tmp" not in str(e.value)
    assert path.read_bytes() == before and _leftovers(tmp_path, ["ck.npz"]) == []


def test_unwritable_folder_error_names_the_target(tmp_path, monkeypatch):
    """The temporary file cannot be created (a folder we may not write): the error names
    the checkpoint's path. Simulated, since root may write any folder."""
    path = tmp_path / "ck.npz"
    real_open = os.open

    def denied(name, flags, mode=0o777, *a, **k):
        if str(name).endswith(".tmp"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        return real_open(name, flags, mode, *a, **k)
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError) as e:
        gpunet.save(path, _model())
    assert e.value.filename == str(path) and ".tmp" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_failed_rename_names_the_target(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"

    def busy(src, dst):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), src, dst)
    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(OSError) as e:
        gpunet.save(path, _model())
    assert e.value.filename == str(path) and ".tmp" not in str(e.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["c" * 250 + ".npz", "é" * 125 + ".npz"])
def test_a_file_name_as_long_as_the_file_system_takes_is_saved(tmp_path, name):
    """Found by the resume audit: the temporary file was named '.<name>.<12 hex>.tmp', 18
    bytes longer than the target, so a 254-byte name that open(path, "w") takes failed with
    'OSError: [Errno 36] File name too long' naming the (valid) path. The temporary name
    now holds at most the first 50 characters of the target's."""
    path = tmp_path / name
    with open(path, "wb") as f:               # the file system takes this name
        f.write(b"old")
    model = _model()
    gpunet.save(path, model, epoch=1)
    assert gpunet.load(path, _model(1)) == {"epoch": 1}
    assert os.listdir(tmp_path) == [name]


def test_save_takes_the_optimizer_by_keyword_as_its_signature_reads(tmp_path):
    """Found by the resume audit: gpunet.save(path, model, optimizer=opt), as DESIGN and the
    guide write the signature (save(path, model, optimizer=None, ...)), raised "TypeError:
    gpunet.save: metadata 'optimizer' must be a number, string, ..., got Adam": the
    optimizer is positional-only so that metadata may take any name. An optimizer given by
    keyword is now the optimizer; a string there is still metadata."""
    model = _model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for p in model.parameters():
            p.grad = numpy.ones_like(p.data)
        opt.step()
    path = tmp_path / "ck.npz"
    gpunet.save(path, model, optimizer=opt, epoch=1)
    m2 = _model(1)
    o2 = optim.Adam(m2.parameters())
    assert gpunet.load(path, m2, optimizer=o2) == {"epoch": 1}
    assert o2.steps == [3] * len(o2.params) and o2.lr == 1e-2
    gpunet.save(path, model, opt, optimizer="adam")            # metadata, as before
    assert gpunet.load(path, _model(1), optim.Adam(_model(1).parameters())) == {"optimizer": "adam"}
    with pytest.raises(TypeError, match=r"metadata 'optimizer' must be"):
        gpunet.save(path, model, opt, optimizer=opt)           # twice: the keyword is metadata


def test_a_loss_as_the_losses_return_it_is_saved_as_metadata(tmp_path, device):
    """Found by the resume audit: gpunet.save(path, model, loss=loss) with the 0-d array a
    loss returns (PyTorch users save the 0-d tensor) raised "metadata 'loss' must be a
    number, ..., got ndarray", on the CPU and the sim. A 0-d array of numbers, bools or
    text is saved as its value (a host read on a device); a larger array still raises,
    now saying how to save it."""
    model = _model()
    loss = gpunet.SoftmaxCrossEntropy()(model(numpy.ones((2, 4), numpy.float32)), numpy.array([0, 1]))
    assert isinstance(loss, numpy.ndarray) and loss.shape == ()
    on_device = gpunet.to_device(numpy.asarray(2.5, numpy.float32), device)
    path = tmp_path / "ck.npz"
    gpunet.save(path, model, loss=loss, device_loss=on_device, step=numpy.asarray(7), ok=numpy.asarray(True))
    meta = gpunet.load(path, _model(1))
    assert meta == {"loss": float(loss), "device_loss": 2.5, "step": 7, "ok": True}
    assert type(meta["step"]) is int
    with pytest.raises(TypeError, match=r"metadata 'scores' must be .*got ndarray of shape \(3,\): a small "
                                        r"array goes as a list \(scores=a\.tolist\(\)\)"):
        gpunet.save(path, model, scores=numpy.zeros(3))


@pytest.mark.parametrize("kw, hint", [
    ({"map_location": "cpu"}, r"; gpunet\.load needs none: each value is copied onto the device \(and into the "
                              r"dtype\) of the array it replaces; move the model first, model\.to\(device\) "
                              r"\(torch\.load's map_location= is not one of its names\)$"),
    ({"weights_only": True}, r"; gpunet\.load needs none: a checkpoint holds arrays only and is read with "
                             r"allow_pickle=False, so loading never runs code \(torch\.load's weights_only="),
    ({"mmap": True}, r"; gpunet\.load needs none"),
    ({"foo": 1}, r"$"),
])
def test_load_names_what_torch_loads_keywords_are_for(tmp_path, kw, hint):
    """Found by the resume audit: gpunet.load(path, model, map_location="cpu") (or
    weights_only=True), as a PyTorch user resumes, raised Python's bare "load() got an
    unexpected keyword argument"; the TypeError now says why gpunet needs neither."""
    path = gpunet.save(tmp_path / "ck.npz", _model())
    with pytest.raises(TypeError, match=rf"^load\(\) got an unexpected keyword argument {next(iter(kw))!r}{hint}"):
        gpunet.load(path, _model(1), **kw)


# -- gpunet.load of things that are not checkpoints ------------------------------------------------
def test_load_npy_says_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.npy"
    numpy.save(path, numpy.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"weights\.npy is not a gpunet checkpoint.*\.npy array"):
        gpunet.load(path, _model())


@pytest.mark.parametrize("content", [b"epoch,loss\n1,0.5\n", b"\x80\x04K\x01.", b""])
def test_load_text_or_pickle_says_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"notes\.txt is not a gpunet checkpoint") as e:
        gpunet.load(path, _model())
    assert "allow_pickle" not in str(e.value)


# -- scheduler state ---------------------------------------------------------------------------
def test_scheduler_state_round_trip(tmp_path):
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.5)
    sched = optim.StepLR(opt, step_size=2, gamma=0.3)
    for _ in range(5):
        sched.step()
    path = tmp_path / "ck.npz"
    gpunet.save(path, model, opt, scheduler=sched, epoch=5)
    m2 = _model(1)
    o2 = optim.SGD(m2.parameters(), lr=0.5)
    s2 = optim.StepLR(o2, step_size=7, gamma=0.9)
    assert gpunet.load(path, m2, o2, scheduler=s2) == {"epoch": 5}
    assert (s2.last_epoch, s2.step_size, s2.gamma, s2.base_lr) == (5, 2, 0.3, 0.5)
    assert o2.lr == opt.lr == 0.5 * 0.3 ** 2
    assert s2.step() == sched.step()

    with pytest.raises(ValueError, match=r"ck\.npz holds StepLR state, not ExponentialLR"):
        gpunet.load(path, _model(), scheduler=optim.ExponentialLR(optim.SGD(_model().parameters()), 0.9))
    plain = tmp_path / "plain.npz"
    gpunet.save(plain, model, opt)
    with pytest.raises(ValueError, match=r"plain\.npz holds no scheduler state"):
        gpunet.load(plain, _model(), scheduler=optim.StepLR(optim.SGD(_model().parameters()), 2))
    with pytest.raises(TypeError, match=r"^gpunet\.save: scheduler must be a learning-rate schedule "
                                        r"\(with state_dict\), got str$"):
        gpunet.save(plain, model, opt, scheduler="StepLR")
    with pytest.raises(TypeError, match=r"^gpunet\.save: scaler must be a gpunet\.amp\.GradScaler, got int$"):
        gpunet.save(plain, model, opt, scaler=1)


def test_resuming_an_optimizer_without_the_saved_schedule_or_scaler_warns(tmp_path):
    """Found by the resume audit: ModelCheckpoint saves the schedule (and, fp16, the loss
    scaler); gpunet.load(path, model, opt) without scheduler= restored the optimizer's
    scheduled rate while the Trainer's fresh schedule restarted at its epoch 0 on the next
    step (ExponentialLR: rate 0.25 saved, 1.0 * 0.5 at the next step instead of 0.125), without
    a word. A load that restores an optimizer and leaves such state behind warns, naming it;
    a model-only load (inference, fine-tuning) and a complete load do not."""
    import warnings
    model = _model()
    opt = optim.SGD(model.parameters(), lr=1.0)
    sched = optim.ExponentialLR(opt, gamma=0.5)
    sched.step(), sched.step()
    scaler = gpunet.amp.GradScaler()
    path = tmp_path / "ck.npz"
    gpunet.save(path, model, opt, scheduler=sched, scaler=scaler, epoch=2)

    def fresh():
        m = _model(1)
        o = optim.SGD(m.parameters(), lr=1.0)
        return m, o, optim.ExponentialLR(o, gamma=0.5), gpunet.amp.GradScaler()

    m, o, s, sc = fresh()
    with pytest.warns(UserWarning, match=r"ck\.npz also holds ExponentialLR schedule state \(pass "
                                         r"scheduler=.*\) and GradScaler state \(pass scaler=.*did not restore"):
        gpunet.load(path, m, o)
    assert o.lr == 0.25                                  # the optimizer's rate came back ...
    m, o, s, sc = fresh()
    with pytest.warns(UserWarning, match=r"holds GradScaler state") as rec:
        gpunet.load(path, m, o, scheduler=s)
    assert "ExponentialLR" not in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m, o, s, sc = fresh()
        gpunet.load(path, m, o, scheduler=s, scaler=sc)  # everything: no warning
        assert s.step() == sched.step() == 0.125
        gpunet.load(path, _model(2))                     # the model alone: no warning
        gpunet.load(path, _model(2), scaler=gpunet.amp.GradScaler())


def test_load_of_a_missing_file_is_a_file_not_found_error_naming_it(tmp_path):
    """As torch.load and numpy.load: a path with no file raises FileNotFoundError, so that
    ``except FileNotFoundError:`` starts a run afresh (it was a bare ValueError, which that
    idiom does not catch); still a ValueError too, as every other unreadable checkpoint's."""
    path = tmp_path / "ckpt.npz"
    model = _model()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(FileNotFoundError) as e:
        gpunet.load(path, model)
    assert isinstance(e.value, ValueError) and e.value.errno == errno.ENOENT
    assert e.value.filename == str(path) and str(e.value) == f"gpunet.load: {path}: no such file"
    assert all(numpy.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_load_of_a_folder_names_it(tmp_path):
    d = tmp_path / "ck.npz"
    d.mkdir()
    with pytest.raises(ValueError, match=r"ck\.npz is not a readable gpunet checkpoint.*IsADirectoryError"):
        gpunet.load(d, _model())


def test_missing_folder_error_names_the_target(tmp_path):
    path = tmp_path / "no" / "such" / "ck.npz"
    with pytest.raises(FileNotFoundError) as e:
        gpunet.save(path, _model())
    assert e.value.filename == str(path) and ".tmp" not in str(e.value)


def test_a_folder_or_a_missing_folder_says_what_to_pass(tmp_path):
    """Found by the second first-hour audit: gpunet.save('checkpoints/', model) said only
    '[Errno 21] Is a directory', and a path in a folder not made yet '[Errno 2] No such file
    or directory' (torch.save names the missing parent). The error types, errno and filename
    stay those of open()."""
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(IsADirectoryError, match=r"gpunet\.save writes one file: pass a file path, e\.g\. "
                                                + re.escape(repr(str(d / "model.npz")))) as e:
        gpunet.save(d, _model())
    assert e.value.errno == errno.EISDIR and e.value.filename == str(d)
    path = tmp_path / "no" / "such" / "ck.npz"
    folder = str(tmp_path / "no" / "such")
    with pytest.raises(FileNotFoundError, match=re.escape(f"(no folder {folder!r}; gpunet.save creates none: "
                                                          f"os.makedirs({folder!r}) first)")) as e:
        gpunet.save(path, _model())
    assert e.value.errno == errno.ENOENT and e.value.filename == str(path)


# -- argument types (found by fuzzing) ---------------------------------------------------------

@pytest.mark.parametrize("fn", [gpunet.save, gpunet.load])
def test_save_and_load_name_a_model_or_optimizer_of_the_wrong_type(tmp_path, fn):
    """Used to raise AttributeError ('NoneType' object has no attribute 'state_dict'); load
    with a bad optimizer had already overwritten the model's parameters when it failed."""
    p = str(tmp_path / "m.npz")
    m = Sequential(Dense(4, 3))
    gpunet.save(p, m, optim.SGD(m))
    who = f"gpunet.{fn.__name__}"
    with pytest.raises(TypeError, match=rf"{who}: expected model to be a gpunet Layer .*got NoneType"):
        fn(p, None)
    fresh = Sequential(Dense(4, 3))
    before = fresh[0].weight.data.copy()
    with pytest.raises(TypeError, match=rf"{who}: expected optimizer to be None or a gpunet optimizer .*got str"):
        fn(p, fresh, "sgd")
    numpy.testing.assert_array_equal(fresh[0].weight.data, before)


@pytest.mark.parametrize("fn", [gpunet.save, gpunet.load])
@pytest.mark.parametrize("path", [None, 123])
def test_save_and_load_name_a_path_of_the_wrong_type(fn, path):
    with pytest.raises(TypeError, match=rf"gpunet\.{fn.__name__}: expected path to be a str or os.PathLike"):
        fn(path, Sequential(Dense(4, 3)))


# -- a failed load changes nothing -------------------------------------------------------------
def _state(obj):
    return {k: numpy.array(v) for k, v in obj.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(numpy.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["optimizer of another kind", "optimizer of another model",
                                  "no optimizer state", "scheduler of another class",
                                  "no scheduler state", "no scaler state"])
def test_a_failed_load_leaves_model_optimizer_and_scheduler_as_they_were(tmp_path, case):
    """gpunet.load used to load the model (and the optimizer) and only then raise for the
    optimizer, the scheduler or the scaler: the caller was left with a half-loaded run."""
    model = Sequential(Dense(4, 5, activation="relu"), gpunet.Dropout(0.2), Dense(5, 2))
    opt = optim.Adam(model, lr=0.1)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    x, y = numpy.ones((3, 4), numpy.float32), numpy.array([0, 1, 1])
    loss = gpunet.SoftmaxCrossEntropy()
    loss(model(x), y)
    model.backward(loss.backward())
    opt.step()
    sched.step()
    full, bare = tmp_path / "full.npz", tmp_path / "bare.npz"
    gpunet.save(full, model, opt, scheduler=sched)
    gpunet.save(bare, model)

    m2 = Sequential(Dense(4, 5, activation="relu"), gpunet.Dropout(0.2), Dense(5, 2))
    o2 = optim.Adam(m2, lr=0.01)
    s2 = optim.StepLR(o2, step_size=3, gamma=0.9)
    path, kw = full, {}
    if case == "optimizer of another kind":
        o2 = optim.SGD(m2, lr=0.01, momentum=0.9)
    elif case == "optimizer of another model":
        o2 = optim.Adam(m2[2], lr=0.01)
    elif case == "no optimizer state":
        path = bare
    elif case == "scheduler of another class":
        kw["scheduler"] = optim.ExponentialLR(o2, 0.9)
    elif case == "no scheduler state":
        path, kw["scheduler"] = bare, s2
    else:
        kw["scheduler"], kw["scaler"] = s2, gpunet.amp.GradScaler()
    # a step of its own first, so that the optimizer has state that could be overwritten
    loss(m2(x), y)
    m2.backward(loss.backward())
    o2.step()
    model_before, opt_before, sched_before = _state(m2), _state(o2), _state(s2)
    lr_before = o2.lr
    with pytest.raises(ValueError, match=rf"gpunet\.load: {path}"):
        gpunet.load(path, m2, o2, **kw)
    assert _same(_state(m2), model_before)
    assert _same(_state(o2), opt_before) and o2.lr == lr_before
    assert _same(_state(s2), sched_before)


# -- entries that are not what gpunet.save writes ----------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("__format__", numpy.asarray("1"), r"__format__ entry is an array of shape \(\) and dtype str"),
    ("__format__", numpy.arange(2), r"__format__ entry is an array of shape \(2,\)"),
    ("__metadata__", numpy.asarray("[1, 2]"), "expected a JSON object .* got a JSON list"),
    ("optim/num_params", numpy.arange(4), r"'num_params': expected shape \(\), got \(4,\)"),
    ("optim/lr", numpy.asarray("fast"), "'lr': expected a real number, got dtype str"),
    ("optim/state.0.step", numpy.asarray(1.5), "'state.0.step': expected an integer, got dtype float64"),
    ("optim/state.0.exp_avg", numpy.ones((5, 4), complex), "'state.0.exp_avg': expected real numbers, got dtype complex128"),
    ("sched/last_epoch", numpy.arange(3), r"'last_epoch': expected shape \(\), got \(3,\)"),
    ("sched/last_epoch", numpy.asarray(-5), "'last_epoch': expected an int >= 0, got -5"),
    ("sched/step_size", numpy.asarray(0), "StepLR: expected step_size to be a positive int, got 0"),
    ("scaler/growth_interval", numpy.asarray(2.5), "'growth_interval': expected an integer, got dtype float64"),
])
def test_malformed_entries_raise_value_error_naming_path_and_entry(tmp_path, key, value, message):
    """Each used to raise a TypeError or ZeroDivisionError without the path, a ValueError
    without the entry, or to load: a float step count truncated, a complex moment cast to its
    real part, a negative schedule epoch, a JSON list as the metadata dict."""
    model = _model()
    opt = optim.Adam(model, lr=0.1)
    sched = optim.StepLR(opt, step_size=2)
    loss = gpunet.SoftmaxCrossEntropy()
    loss(model(numpy.ones((3, 4), numpy.float32)), numpy.array([0, 1, 1]))
    model.backward(loss.backward())
    opt.step()
    good = tmp_path / "good.npz"
    gpunet.save(good, model, opt, scheduler=sched, scaler=gpunet.amp.GradScaler())
    with numpy.load(good) as z:
        entries = dict(z)
    entries[key] = value
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as f:
        numpy.savez(f, **entries)
    m2 = _model(1)
    o2 = optim.Adam(m2, lr=0.1)
    with pytest.raises(ValueError, match=rf"gpunet\.load: {re.escape(str(bad))}.*{message}"):
        gpunet.load(bad, m2, o2, scheduler=optim.StepLR(o2, step_size=2), scaler=gpunet.amp.GradScaler())


# -- strict= (PyTorch's load_state_dict semantics, for the model's keys) ------------------------
def _trained_pair(tmp_path):
    """A checkpoint of Dense(4, 5)-ReLU-Dense(5, 2), and a model that shares its first layer
    but has a head of another shape (key '1.weight' of another shape would raise, so the
    new head sits at index 2 after a Dropout: keys '2.weight', '2.bias', '1.seed', ...)."""
    path = tmp_path / "ck.npz"
    gpunet.save(path, _model(0), epoch=3)
    gpunet.manual_seed(1)
    other = Sequential(Dense(4, 5, activation="relu"), gpunet.Dropout(0.1), Dense(5, 7))
    return path, other


def test_load_of_another_models_checkpoint_names_every_key_and_changes_nothing(tmp_path):
    path, other = _trained_pair(tmp_path)
    before = _state(other)
    with pytest.raises(ValueError, match=rf"^gpunet\.load: {re.escape(str(path))}: Sequential\.load_state_dict: "
                                         r"missing keys '2\.weight', '2\.bias', '1\.seed', '1\.counter'; "
                                         r"unexpected keys '1\.weight', '1\.bias'$"):
        gpunet.load(path, other)
    assert _same(_state(other), before)


def test_load_strict_false_loads_what_matches_and_lists_the_rest(tmp_path):
    path, other = _trained_pair(tmp_path)
    head = {k: v.copy() for k, v in _state(other).items() if not k.startswith("0.")}
    meta = gpunet.load(path, other, strict=False)
    assert meta == {"epoch": 3} and isinstance(meta, dict)
    assert meta.missing_keys == ["2.weight", "2.bias", "1.seed", "1.counter"]
    assert meta.unexpected_keys == ["1.weight", "1.bias"]
    saved = _state(_model(0))
    for k in ("0.weight", "0.bias"):
        numpy.testing.assert_array_equal(other.state_dict()[k], saved[k])
    assert _same({k: v for k, v in _state(other).items() if not k.startswith("0.")}, head)
    # a strict load of its own checkpoint lists nothing
    meta = gpunet.load(path, _model(5))
    assert meta.missing_keys == [] and meta.unexpected_keys == []


def test_load_strict_false_still_refuses_a_shape_mismatch_and_a_foreign_optimizer(tmp_path):
    path = tmp_path / "ck.npz"
    model = _model(0)
    gpunet.save(path, model, optim.Adam(model))
    gpunet.manual_seed(2)
    wide = Sequential(Dense(4, 6, activation="relu"), Dense(6, 2))
    before = _state(wide)
    with pytest.raises(ValueError, match=r"'0\.weight': expected shape \(6, 4\), got \(5, 4\)"):
        gpunet.load(path, wide, strict=False)
    assert _same(_state(wide), before)
    # the model would load, the optimizer's per-parameter state cannot: nothing changes
    path2, other = _trained_pair(tmp_path)
    src = _model(0)
    src_opt = optim.Adam(src)
    loss = gpunet.SoftmaxCrossEntropy()
    loss(src(numpy.ones((3, 4), numpy.float32)), numpy.array([0, 1, 1]))
    src.backward(loss.backward())
    src_opt.step()                 # moments of the saved model's shapes: (2, 5) for its head
    gpunet.save(path2, src, src_opt)
    opt = optim.Adam(other)
    before = _state(other)
    with pytest.raises(ValueError, match=rf"gpunet\.load: {re.escape(str(path2))}"):
        gpunet.load(path2, other, opt, strict=False)
    assert _same(_state(other), before)


@pytest.mark.parametrize("bad", ["no", 0, None])
def test_load_strict_must_be_a_bool(tmp_path, bad):
    path = tmp_path / "ck.npz"
    gpunet.save(path, _model(0))
    with pytest.raises(TypeError, match=rf"^gpunet\.load: expected strict to be a bool \(True or False\), got {re.escape(repr(bad))}"):
        gpunet.load(path, _model(1), strict=bad)


def test_a_read_only_file_system_is_found_before_training(tmp_path, monkeypatch, capsys):
    """Found by the failure-path audit: the checks before a run that ends by writing a file
    (gpunet train --save, ModelCheckpoint, bench --json) read only the permission bits, which
    root passes, so a read-only mount (or /proc) was found by the first write: after
    training (observed: 'gpunet train --save /proc/x.npz' trained 30 epochs, then failed).
    The check now also creates and removes the temporary file gpunet.save would create.
    Simulated: creating a file in the folder fails with EROFS, as on a read-only mount."""
    from gpunet.checkpoint import unwritable
    import gpunet.cli
    folder = tmp_path / "ro"
    folder.mkdir()
    real_open = os.open

    def read_only(name, flags, mode=0o777, *a, **k):
        if os.path.dirname(os.path.abspath(str(name))) == str(folder) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)
        return real_open(name, flags, mode, *a, **k)
    monkeypatch.setattr(os, "open", read_only)
    assert unwritable(folder / "m.npz") == f"cannot create a file in {folder} (Read-only file system)"
    assert unwritable(tmp_path / "m.npz") is None and os.listdir(tmp_path) == ["ro"]   # the probe is removed

    assert gpunet.cli.main(["train", "--save", str(folder / "m.npz"), "--epochs", "1", "--quiet",
                            "--device", "cpu"]) == 2
    cap = capsys.readouterr()
    assert cap.err.strip() == (f"gpunet train: error: --save {folder / 'm.npz'}: cannot create a file in "
                               f"{folder} (Read-only file system)")
    assert "test accuracy" not in cap.out

    X = numpy.random.default_rng(0).normal(size=(32, 4)).astype(numpy.float32)
    y = numpy.arange(32) % 3
    gpunet.manual_seed(0)
    model = gpunet.Sequential(gpunet.Dense(4, 3))
    tr = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model, lr=0.1))
    with pytest.raises(ValueError, match=r"^ModelCheckpoint: path .*m\.npz: cannot create a file in .*"
                                         r"\(Read-only file system\); expected a file path it can write"):
        tr.fit((X, y), epochs=2, progress=False,
               callbacks=[gpunet.ModelCheckpoint(folder / "m.npz", monitor="loss")])
    assert tr.global_step == 0
