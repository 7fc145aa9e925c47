"""The training loop: ``Trainer``, ``History`` and callbacks.

One step, top to bottom: forward → loss → ``zero_grad`` → backward (chain rule, in reverse
layer order) → optimizer step. The step is the same on every device; only the arrays differ.

On a GPU (``"cuda"``, ``"sim"``) a steady-state step makes no host sync: each step's loss
and correct count are written into a small device record, which the host reads only when
the progress bar refreshes (time-based, at most ``1 / PROGRESS_REFRESH_SECONDS`` times a
second) and at the end of the epoch; the checks that need the values (a non-finite loss, a
bad label flagged by the softmax-CE kernel) run on what was read then, and still name the
step. ``(X, y)`` data is copied to the device once when it fits (``gpunet.data``'s
residency rule), so a step moves no bytes from the host either.
"""
from __future__ import annotations

import inspect
import math
import operator
import os
import signal
import threading
import time
import warnings
import weakref

import numpy

from .backend import array_hint, device_of, get_array_module, is_array, resolve_device, to_device, to_numpy, synchronize
from .amp import GradScaler, MixedPrecision, _check_precision
from .data import DataLoader, check_same_device, plain_array
from .functional.losses import check_labels
from .losses import BCEWithLogits, MSELoss, SoftmaxCrossEntropy
from .layers.base import Layer

#: Seconds between two progress-bar refreshes, each of which reads the running loss and
#: accuracy from the device (one host sync).
PROGRESS_REFRESH_SECONDS = 0.25


def _clock():
    """The clock that times progress refreshes (``time.perf_counter``; tests replace it)."""
    return time.perf_counter()
from . import _args
from .optim import ReduceLROnPlateau, _listed, clip_grad_norm as _clip_norm, clip_grad_value as _clip_value

try:  # tqdm is a runtime dependency; imported here so the bar's absence is loud
    from tqdm.auto import tqdm
except ImportError as e:  # pragma: no cover
    raise ImportError("gpunet needs tqdm: pip install tqdm") from e


def _positive(name, value):
    return _args.real("Trainer", name, value, low=0.0, low_open=True)


def _check_cuda_graph(cuda_graph, device, comm):
    """``cuda_graph`` for ``Trainer(cuda_graph=...)``: a bool, True only on a GPU (or the
    sim) and without ``comm`` (see ``gpunet.cuda.graphs``)."""
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"Trainer: expected cuda_graph to be a bool, got {cuda_graph!r}")
    if not cuda_graph:
        return False
    if device == "cpu":
        raise ValueError("Trainer: cuda_graph=True needs a 'cuda' or 'sim' model, got one on 'cpu'")
    if comm is not None:
        raise ValueError("Trainer: cuda_graph=True with comm= is not supported (the gradient "
                         "all-reduce runs host code during backward)")
    return True


_NEW_TRAINER = "create a new Trainer(model, loss_fn, optimizer, ...) with the one you want"


def _metric_names(metrics):
    """``metrics`` for ``Trainer(metrics=...)``: a name or a sequence of names (None: none),
    as the tuple the Trainer keeps: ``("accuracy",)`` or ``()``."""
    metrics = (metrics,) if isinstance(metrics, str) else tuple(
        _listed(metrics or (), "Trainer", "metrics to be a tuple of metric names such as ('accuracy',)"))
    for m in metrics:
        if not isinstance(m, str) or m not in ("accuracy", "acc"):
            raise ValueError(f"Trainer: unknown metric {m!r}; known metrics: 'accuracy'")
    return tuple("accuracy" for _ in metrics[:1])


def _check_scheduler(optimizer, scheduler, scheduler_interval):
    """``scheduler`` (None or a schedule of ``optimizer``) and ``scheduler_interval``
    (``"epoch"`` or ``"step"``; ``"epoch"`` for ``ReduceLROnPlateau``) for a Trainer."""
    if scheduler is not None:
        if not (hasattr(scheduler, "step") and hasattr(scheduler, "state_dict")):
            raise TypeError(f"Trainer: expected scheduler to be a learning-rate schedule from "
                            f"gpunet.optim (StepLR, …), got {type(scheduler).__name__}")
        if getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError(f"Trainer: the scheduler {type(scheduler).__name__} schedules another "
                             f"optimizer than the Trainer's; create it with this optimizer")
    if not isinstance(scheduler_interval, str) or scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"Trainer: expected scheduler_interval 'epoch' or 'step', got "
                         f"{scheduler_interval!r}")
    if isinstance(scheduler, ReduceLROnPlateau) and scheduler_interval != "epoch":
        raise ValueError(f"Trainer: ReduceLROnPlateau is stepped once per epoch with the monitored "
                         f"value (scheduler_interval='epoch'), got scheduler_interval="
                         f"{scheduler_interval!r}")


def _check_scaler(scaler, precision):
    """``scaler`` for a Trainer: None, or a ``GradScaler`` with ``precision="fp16"``."""
    if scaler is not None and not isinstance(scaler, GradScaler):
        raise TypeError(f"Trainer: expected scaler to be a gpunet.amp.GradScaler, got "
                        f"{type(scaler).__name__}")
    if scaler is not None and precision != "fp16":
        raise ValueError("Trainer: a loss scaler is for precision='fp16'")


def _warn_stale_optimizer(model, optimizer):
    """Warn (at each ``fit``) when the optimizer holds parameters that are not the model's:
    the model was edited after the optimizer was built (``model[-1] = Dense(...)``, a layer
    replaced or removed), so the optimizer updates the old layers and never the new ones,
    silently (a PyTorch loop behaves the same, without a word). An optimizer over a subset of
    the model's parameters (freezing the rest) is not warned about."""
    params = getattr(optimizer, "params", None)
    if not isinstance(params, list):
        return
    mine = {id(p) for p in model.parameters()}
    stale = sum(id(p) not in mine for p in params)
    if mine and stale:
        missing = sum(1 for p in model.parameters() if all(p is not q for q in params))
        warnings.warn(f"Trainer.fit: the optimizer updates {stale} parameter(s) that are not the model's, "
                      f"and {missing} of the model's are not in it: was the model edited (a layer "
                      f"replaced or removed) after the optimizer was built? Those layers will not "
                      f"train; build the optimizer (and the Trainer) after editing the model",
                      UserWarning, stacklevel=3)


def _warn_resume_from_epoch_0(trainer, initial_epoch):
    """Warn when the first ``fit`` of a Trainer starts at epoch 0 with an optimizer whose
    state was loaded (``gpunet.load``, ``load_state_dict``) after steps were taken: a resumed
    run without ``initial_epoch`` takes epoch 0's shuffle again, counts ``global_step`` and
    ``ModelCheckpoint``'s epochs from 0 (a later resume from such a file starts at the wrong
    epoch) and, as ``epochs`` is the epoch to stop at, runs that many epochs more. The loaded
    mark is cleared by any fit, so this is said once per load."""
    opt = trainer.optimizer
    opt = getattr(opt, "optimizer", opt)    # a DistributedOptimizer's: the mark is the optimizer's
    if not getattr(opt, "_loaded", False):
        return
    opt._loaded = False
    taken = max(opt.steps, default=0)
    if not initial_epoch and trainer.global_step == 0 and taken:
        warnings.warn(f"Trainer.fit: the optimizer's state was loaded with {taken} steps taken, but fit "
                      f"starts at epoch 0: to continue the saved run, pass fit(..., initial_epoch="
                      f"meta['epoch']) (with epochs the epoch to stop at), so that it takes the saved "
                      f"run's next shuffles and counts its steps and ModelCheckpoint's epochs on from "
                      f"there", UserWarning, stacklevel=3)


def _warn_unseeded_resume(loader, initial_epoch):
    """Warn when ``fit(initial_epoch=k)`` resumes a run on a shuffling loader whose seed was
    drawn at random when it was made (``seed=None``): epoch ``k``'s order is that of
    ``(seed, k)``, and this seed is not the one the saved run drew, so the resumed epochs
    visit the samples in other orders than the run that never stopped (nothing else
    differs, and nothing in a checkpoint holds a loader's seed)."""
    drawn = getattr(loader, "_drawn_seed", None)
    if loader.shuffle and drawn is not None and drawn == loader.seed:
        warnings.warn(f"Trainer.fit: initial_epoch={initial_epoch} resumes a run, but train is shuffled "
                      f"with a seed drawn at random (seed=None gave {loader.seed}), not the one the saved "
                      f"run drew: its epochs will visit the samples in other orders than that run's. "
                      f"Pass seed= (an int; fit's default for (X, y) data is 0) in every run, or the "
                      f"saved run's loader.seed if you kept it", UserWarning, stacklevel=3)


def _check_parts(model, loss_fn, optimizer, scheduler=None, scaler=None):
    """The model is a Layer, the loss a loss object, and the optimizer one that updates some
    of the model's parameters (one built over another model would train nothing)."""
    # a class where an instance belongs (Trainer(model, SoftmaxCrossEntropy, optim.Adam)) has a
    # backward, a step and a zero_grad too: name it before the checks below let it through
    for what, obj, make in (("model", model, "its layers"), ("loss_fn", loss_fn, ""),
                            ("optimizer", optimizer, "model.parameters(), lr=..."),
                            ("scheduler", scheduler, "optimizer, ..."), ("scaler", scaler, "")):
        if isinstance(obj, type):
            raise TypeError(f"Trainer: expected {what} to be an object, got the class {obj.__name__}; "
                            f"create one: {obj.__name__}({make})")
    if not isinstance(model, Layer):
        raise TypeError(f"Trainer: expected model to be a gpunet Layer, got {type(model).__name__}")
    if not (callable(loss_fn) and hasattr(loss_fn, "backward")):
        raise TypeError(f"Trainer: expected loss_fn to be a loss object with backward() (e.g. "
                        f"gpunet.SoftmaxCrossEntropy()), got {type(loss_fn).__name__}")
    if not (hasattr(optimizer, "step") and hasattr(optimizer, "zero_grad")):
        raise TypeError(f"Trainer: expected optimizer to be a gpunet optimizer (with step and "
                        f"zero_grad), got {type(optimizer).__name__}")
    params = getattr(optimizer, "params", None)
    if isinstance(params, list) and params:
        mine = {id(p) for p in model.parameters()}
        if mine and not any(id(p) in mine for p in params):
            raise ValueError(f"Trainer: the optimizer updates none of the model's parameters; "
                             f"expected an optimizer built over this model "
                             f"({type(optimizer).__name__}(model, ...))")


_HOOKS = ("on_train_begin", "on_epoch_begin", "on_backward_end", "on_batch_end", "on_epoch_end",
          "on_train_end")
# what gpunet passes to each hook, for the check of a callback's own hooks before training
_HOOK_ARGS = {"on_train_begin": ("trainer",), "on_epoch_begin": ("trainer", "epoch"),
              "on_backward_end": ("trainer",), "on_batch_end": ("trainer", "step", "logs"),
              "on_epoch_end": ("trainer", "epoch", "logs"), "on_train_end": ("trainer",)}
_NO_BATCH_BEGIN = (None, "gpunet calls no hook before a batch: on_backward_end(trainer) runs after each "
                         "backward, on_batch_end(trainer, step, logs) after each step")
_NO_VALIDATION_HOOK = (None, "gpunet calls no hook around validation: the val_* values are in the logs "
                             "that on_epoch_end(trainer, epoch, logs) receives")
_NO_PREDICT_HOOK = (None, "gpunet's predict and evaluate call no callbacks")
# other frameworks' hooks, which gpunet's Trainer never calls: (gpunet's hook or None, hint)
_FOREIGN_HOOKS = {
    "on_train_batch_end": ("on_batch_end", "gpunet's is on_batch_end(trainer, step, logs)"),
    "on_train_batch_begin": _NO_BATCH_BEGIN, "on_batch_begin": _NO_BATCH_BEGIN,
    "on_train_batch_start": _NO_BATCH_BEGIN,
    "on_train_start": ("on_train_begin", "gpunet's is on_train_begin(trainer)"),
    "on_fit_start": ("on_train_begin", "gpunet's is on_train_begin(trainer)"),
    "on_fit_end": ("on_train_end", "gpunet's is on_train_end(trainer)"),
    "on_epoch_start": ("on_epoch_begin", "gpunet's is on_epoch_begin(trainer, epoch)"),
    "on_train_epoch_start": ("on_epoch_begin", "gpunet's is on_epoch_begin(trainer, epoch)"),
    "on_train_epoch_end": ("on_epoch_end", "gpunet's is on_epoch_end(trainer, epoch, logs)"),
    "on_after_backward": ("on_backward_end", "gpunet's is on_backward_end(trainer)"),
    "on_before_optimizer_step": ("on_backward_end", "gpunet's is on_backward_end(trainer), after the "
                                                    "backward and before the optimizer step"),
    **{name: _NO_VALIDATION_HOOK for name in (
        "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
        "on_validation_start", "on_validation_end", "on_validation_epoch_start",
        "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end")},
    **{name: _NO_PREDICT_HOOK for name in (
        "on_predict_begin", "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end")},
}


def _check_hooks(cb, i, who):
    """A callback's own hooks, before training: one defined with another framework's
    signature (Keras' ``on_epoch_end(self, epoch, logs)``, without the trainer) raised a
    ``TypeError`` only at the end of the first epoch, after it trained; one under another
    framework's name (Keras' ``on_train_batch_end``) was never called, silently. Both raise
    ``TypeError`` here, naming gpunet's hook. A foreign name is let through when the class
    also overrides the gpunet hook it stands for (a callback written for both)."""
    cls = type(cb)
    for hook, args in _HOOK_ARGS.items():
        if getattr(cls, hook, None) is getattr(Callback, hook):
            continue                        # the base's no-op
        try:
            inspect.signature(getattr(cb, hook)).bind(*args)
        except TypeError:
            raise TypeError(f"{who}: callbacks[{i}] ({cls.__name__}).{hook} cannot take the arguments gpunet "
                            f"passes, {hook}({', '.join(args)}) (Keras' hooks take no trainer)") from None
        except ValueError:                  # no signature to read (a builtin): leave it
            pass
    for name, (ours, hint) in _FOREIGN_HOOKS.items():
        if callable(getattr(cls, name, None)) and (
                ours is None or getattr(cls, ours, None) is getattr(Callback, ours)):
            raise TypeError(f"{who}: callbacks[{i}] ({cls.__name__}) defines {name}, another framework's "
                            f"hook, which gpunet's Trainer never calls; {hint}")


def _check_callbacks(callbacks, who):
    if isinstance(callbacks, Callback):
        raise TypeError(f"{who}: expected callbacks to be a list of callbacks, got "
                        f"{type(callbacks).__name__} (write callbacks=[...])")
    if callbacks is None:           # Keras' default, which its users pass
        return []
    callbacks = _listed(callbacks, who, "callbacks to be a list of callbacks")
    for i, cb in enumerate(callbacks):
        if isinstance(cb, type):    # callbacks=[EarlyStopping]: its hooks are there, unbound
            raise TypeError(f"{who}: expected callbacks[{i}] to be a callback object, got the class "
                            f"{cb.__name__}; create one: {cb.__name__}(...)")
        missing = [h for h in _HOOKS if not hasattr(cb, h)]
        if missing:
            raise TypeError(f"{who}: callbacks[{i}] must be a gpunet.train.Callback (with "
                            f"{', '.join(missing)}), got {type(cb).__name__}")
        _check_hooks(cb, i, who)
    return callbacks


def _check_comm(comm, optimizer):
    """``comm`` for ``Trainer(comm=...)``: a communicator, and with more than one process an
    optimizer that averages the gradients over it."""
    if _args.communicator("Trainer", "comm", comm, ("rank", "size", "allreduce", "bcast_object"),
                          none=True) is None:
        return None
    if comm.size > 1 and getattr(optimizer, "comm", None) is not comm:
        raise ValueError(f"Trainer: comm has {comm.size} processes but the optimizer "
                         f"{type(optimizer).__name__} does not average gradients over it; wrap it: "
                         "gpunet.distributed.DistributedOptimizer(optimizer, comm)")
    return comm


def _log_float(who, key, value, by=""):
    """``float(value)`` for the epoch's logs entry ``key``: a number (a Python or NumPy int,
    float or bool, or a 0-d array; on a device, reading it is one host sync). Anything else
    (a str, None, a list, an array of several values) raises ``TypeError`` naming the key,
    ``by`` (the callback that wrote it) and what it got, instead of ``float()``'s own message."""
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    shape = getattr(value, "shape", None)
    got = f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else repr(value)[:80]
    raise TypeError(f"{who}: logs[{key!r}]{by} is {got}; the epoch's logs hold numbers only (one "
                    f"float per epoch goes into the History): write a float, int or 0-d array, e.g. "
                    f"logs[{key!r}] = float(value)")


class History:
    """Per-epoch records: ``history["loss"]``, ``history["val_accuracy"]``, …

    ``history.history`` maps each key to a list with one float per epoch run;
    ``history.epoch`` lists the epoch indices (0-based).
    """

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: dict):
        """Record one epoch: ``epoch`` and ``float(v)`` of every value of ``logs``. All the
        values are converted before anything is recorded, so a value that is not a number
        raises ``TypeError`` naming its key and leaves the History as it was (a half-recorded
        epoch would leave its lists of different lengths)."""
        values = {k: _log_float("History.append", k, v) for k, v in logs.items()}
        self.epoch.append(int(epoch))
        for k, v in values.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key):
        try:
            return self.history[key]
        except KeyError:
            # a KeyError still (a dict's), naming what was recorded (Keras 1's 'acc'/'val_acc'
            # are 'accuracy'/'val_accuracy' here, and val_* need fit(..., val=...))
            hint = ("; val_* keys need fit(..., val=(X_val, y_val))" if str(key).startswith("val_")
                    and not any(k.startswith("val_") for k in self.history) else "")
            raise KeyError(f"History: no {key!r}; recorded: {', '.join(map(repr, self.history)) or 'nothing'}"
                           f"{hint}") from None

    def __contains__(self, key):
        return key in self.history

    def keys(self):
        return self.history.keys()

    def plot(self, path):
        """Train/validation loss and accuracy curves to ``path`` (needs the ``plot`` extra)."""
        from .plot import plot_history
        return plot_history(self, path)

    def __repr__(self):
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


class Callback:
    """Hooks the Trainer calls, in order: ``on_train_begin``; per epoch
    ``on_epoch_begin``, then per step ``on_backward_end`` (gradients ready, before the
    optimizer step) and ``on_batch_end``; ``on_epoch_end(trainer, epoch, logs)``, where a
    callback may add keys to ``logs`` (numbers, which go into the History as floats; any other
    value raises ``TypeError`` naming the key and the callback, and that epoch is not
    recorded) or set
    ``trainer.stop_training = True`` (set earlier, in ``on_batch_end``, it too takes effect
    at the end of that epoch, which runs to its last batch and is recorded; Keras' ``fit``
    stops after the batch); finally ``on_train_end``, which runs even when
    ``fit`` raises after ``on_train_begin`` (a non-finite loss, Ctrl-C), so that
    ``EarlyStopping`` puts the best weights back then too, and for every callback even when
    another one's ``on_train_end`` raises (the first such error is raised after all ran).

    Every hook takes the trainer first. ``Trainer.fit`` checks a callback's hooks before
    training: one that cannot take gpunet's arguments (Keras' ``on_epoch_end(self, epoch,
    logs)``) or one under another framework's name, which gpunet never calls (Keras'
    ``on_train_batch_end``, Lightning's ``on_validation_epoch_end``), raises ``TypeError``
    naming gpunet's hook.

    ``on_batch_end``'s ``logs["loss"]`` is the batch's loss: a float on the CPU; on a GPU
    the 0-d device array, so that the step stays free of host syncs (``float()`` it to
    read it, at the cost of one sync)."""

    def on_train_begin(self, trainer): pass
    def on_epoch_begin(self, trainer, epoch): pass
    def on_backward_end(self, trainer): pass
    def on_batch_end(self, trainer, step, logs): pass
    def on_epoch_end(self, trainer, epoch, logs): pass
    def on_train_end(self, trainer): pass


def _check_logs(logs, cb, checked):
    """After ``cb.on_epoch_end``: each value of the epoch's logs that is not a float yet
    goes through ``_log_float`` (once: ``checked`` holds the ids seen), so that one a callback
    wrote that is not a number raises there, naming the callback and the key, before a later
    callback or the History reads it. The values are left as they were written."""
    for k, v in logs.items():
        if type(v) is not float and id(v) not in checked:
            _log_float("Trainer.fit", k, v, f" (written by {type(cb).__name__}.on_epoch_end)")
            checked.add(id(v))


def _hold_interrupts(trainer):
    """During ``fit``: a SIGINT handler that holds a Ctrl-C arriving in the middle of a step's
    update (the optimizer's loop over the parameters, the loss scaler's step and update, the
    schedule's step, the step count: ``trainer._updating``) until that update is complete, so
    that an interrupted run never holds some parameters updated and the others not; anywhere
    else it raises ``KeyboardInterrupt`` at once, as Python's own handler does, and so does a
    second Ctrl-C during the same update. Installed only in the main thread and over
    Python's default handler (one of the user's own is left alone); returns the handler to
    put back, or None."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        return None
    trainer._updating = trainer._sigint_held = False

    def held(signum, frame):
        if trainer._updating and not trainer._sigint_held:
            trainer._sigint_held = True
            return
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, held)
    return signal.default_int_handler


def _train_end(callbacks, trainer):
    """Every callback's ``on_train_end``, even when one of them raises: an error in one does
    not keep the others from running (``EarlyStopping`` restoring the best weights after a
    callback before it failed); the first error is raised once all have run."""
    first = None
    for cb in callbacks:
        try:
            cb.on_train_end(trainer)
        except Exception as e:
            if first is None:
                first = e
    if first is not None:
        raise first


def _improves(mode, value, best, min_delta):
    """Whether ``value`` improves on ``best`` (None: nothing seen yet) by more than
    ``min_delta``. NaN never improves, not even on nothing, as in Keras (whose best starts
    at +-inf): a NaN epoch is neither the best one nor a bar that later epochs cannot pass."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _monitored(who, monitor, logs) -> float:
    """The value of ``monitor`` in an epoch's ``logs``; ``ValueError`` listing the keys there
    when it is absent (with the fix when it is a ``val_*`` key and ``fit`` had no ``val``)."""
    if monitor not in logs:
        hint = ("; pass val= to fit to get val_* keys" if monitor.startswith("val_")
                and not any(k.startswith("val_") for k in logs) else "")
        if monitor in ("acc", "val_acc"):
            hint += f"; {monitor!r} is Keras' old name of {monitor + 'uracy'!r}"
        raise ValueError(f"{who}: monitor {monitor!r} is not among the epoch's logs {sorted(logs)}{hint}")
    return float(logs[monitor])


def _mode_for(who, monitor, mode):
    """``monitor`` checked (a str: a key of the epoch's logs) and the direction of ``mode``
    (``"auto"``: max for accuracies, min for everything else)."""
    if not isinstance(monitor, str):
        raise TypeError(f"{who}: expected monitor to be the name of a logged value (a str such as "
                        f"'val_loss' or 'val_accuracy'), got {monitor!r}")
    if isinstance(mode, str) and mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ValueError(f"{who}: expected mode to be 'auto', 'min' or 'max', got {mode!r}")
    return "max" if "acc" in monitor else "min"


def _monitor_properties(who):
    """``monitor`` and ``mode`` of a callback, checked on assignment as in its constructor
    (``_mode_for``); ``mode`` reads as ``"min"`` or ``"max"``, and a mode given as ``"auto"``
    follows a later assignment of ``monitor`` (``"val_accuracy"``: max)."""
    def set_monitor(self, value):
        self.__dict__["_mode"] = _mode_for(who, value, self.__dict__.get("_mode_given", "auto"))
        self.__dict__["_monitor"] = value

    def set_mode(self, value):
        self.__dict__["_mode"] = _mode_for(who, self.monitor, value)
        self.__dict__["_mode_given"] = value

    return (property(operator.attrgetter("_monitor"), set_monitor,
                     doc="The key of the epoch's logs watched (a str, checked on assignment)."),
            property(operator.attrgetter("_mode"), set_mode,
                     doc="'min' or 'max' (assign 'auto', 'min' or 'max'; 'auto': max for accuracies)."))


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    ``mode="auto"`` minimizes losses and maximizes accuracies. ``restore_best=True`` puts
    back the weights (and batch-norm statistics) of the best epoch when training stops or
    ends; Dropout counters are not rewound, so a later ``fit`` draws fresh masks.
    Each ``fit`` starts afresh (best value, epochs waited, best weights), as Keras'
    ``EarlyStopping`` does at ``on_train_begin``; checkpoints do not hold this state, so a
    resumed run counts its patience from the epoch it resumes at.

    A NaN monitored value never improves, so it counts as an epoch waited, as in Keras
    (Lightning's ``check_finite=True`` stops at once instead); a NaN training loss never
    gets here: ``fit`` raises ``FloatingPointError`` at that step, and ``on_train_end``
    still restores the best weights. A ``monitor`` that is not in the epoch's logs raises
    ``ValueError`` listing the keys there (Keras warns and goes on without stopping).
    """

    # checked on assignment too, as the constructor's arguments are
    patience = _args.integer_property("EarlyStopping", "patience", "Epochs without improvement before "
                                      "stopping (an int >= 0).", low=0)
    restore_best = _args.flag_property("EarlyStopping", "restore_best", "Put back the best epoch's weights "
                                       "at the end (a bool).")
    best = _args.real_property("EarlyStopping", "best", "The best monitored value of this fit (None before "
                               "the first epoch; a number or +-inf, checked on assignment).",
                               finite=False, none=True)
    min_delta = _args.real_property("EarlyStopping", "min_delta", "The least change that counts as an "
                                    "improvement (a finite number >= 0).", low=0.0)
    monitor, mode = _monitor_properties("EarlyStopping")

    def __init__(self, monitor="val_loss", patience=5, restore_best=True, min_delta=0.0, mode="auto",
                 **unknown):
        if unknown:
            raise _unexpected_keyword("EarlyStopping", unknown, _KERAS_CALLBACKS)
        self.monitor = monitor
        self.patience = patience
        self.restore_best = restore_best
        self.min_delta = min_delta
        self.mode = mode
        self.best = None
        self.best_epoch = None
        self.stopped_epoch = None
        self._wait = 0
        self._best_state = None

    def on_train_begin(self, trainer):
        self.best, self.best_epoch, self.stopped_epoch, self._wait, self._best_state = None, None, None, 0, None

    def on_epoch_end(self, trainer, epoch, logs):
        value = _monitored("EarlyStopping", self.monitor, logs)
        if _improves(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best:
                self._best_state = trainer.model.state_dict()
        else:
            self._wait += 1
            if self._wait >= self.patience:
                self.stopped_epoch = epoch
                trainer.stop_training = True

    def on_train_end(self, trainer):
        if self.restore_best and self._best_state is not None:
            # the best epoch's weights and statistics, but each Dropout's counter stays where
            # it is (PyTorch's RNG is not in a state_dict either): training on after the
            # restore draws new masks, not again the ones drawn since the best epoch
            from .layers.dropout import Dropout
            drops = [(d, d.counter) for d in trainer.model.modules() if isinstance(d, Dropout)]
            trainer.model.load_state_dict(self._best_state)
            for d, counter in drops:
                d.counter = counter


def _path(path):
    try:
        os.fspath(path)
    except TypeError:
        raise TypeError(f"ModelCheckpoint: expected path to be a str or os.PathLike, got "
                        f"{type(path).__name__}") from None
    return path


class ModelCheckpoint(Callback):
    """Save the model, the optimizer and the Trainer's LR scheduler (when it has one) to
    ``path`` with ``gpunet.save`` whenever ``monitor`` improves (``save_best_only=False``:
    after every epoch), with metadata ``epoch`` (epochs completed) and the epoch's logs.
    Resume with ``meta = gpunet.load(path, model, optimizer, scheduler=scheduler)`` and
    ``fit(..., initial_epoch=meta["epoch"])``. ``epoch`` counts the epochs of every ``fit``
    of the Trainer, as its shuffles do: ``fit(epochs=2)`` twice trains as one
    ``fit(epochs=4)`` (see ``Trainer.fit``), and the second fit's checkpoints say epoch 3
    and 4, not 1 and 2 as its History and Keras' ``{epoch}`` would, so a resume with
    ``fit(epochs=4, initial_epoch=meta["epoch"])`` continues that run bit for bit (on the same
    BLAS kernels and thread count, guide §9; with
    ``epochs=2``, the second fit's own stop, it raises ``ValueError``: the initial epoch is
    past it), and a template path does not overwrite the first fit's files. Under ``Trainer(comm=...)`` only rank 0
    writes (every process holds the same model and optimizer state; the file resumes on
    any number of processes). With ``precision="fp16"`` the Trainer's
    loss scaler is saved too (``gpunet.load(..., scaler=trainer.scaler)``).

    ``best`` (the best monitored value so far) is kept from one ``fit`` to the next, as
    Keras keeps it: continuing a run with another ``fit(..., initial_epoch=k)`` and the
    same callback overwrites the file only with a better epoch. A run resumed in a new
    process starts from ``initial_value_threshold`` (Keras' name), e.g.
    ``ModelCheckpoint(path, initial_value_threshold=meta["val_loss"])`` with the metadata
    of the file it resumes from; None: the first epoch is saved.

    ``path`` may be a template, as Keras' ``filepath`` is: ``"ckpt-{epoch:02d}.npz"`` or
    ``"best-{val_loss:.3f}.npz"`` is formatted with ``epoch`` (the metadata's: epochs completed)
    and the epoch's logs, so each saved epoch gets its own file (without a template, each
    save replaces the one file). A field the logs do not hold raises ``ValueError`` naming
    it and the keys there, at the first save; a path without braces is used as it is. The
    metadata and the template hold every key of the epoch's logs (``"scheduler"`` and
    ``"scaler"`` too), except that ``epoch`` is always the count above: a callback's own
    logged ``"epoch"`` stays in the History only."""

    # checked on assignment too, as the constructor's arguments are
    save_best_only = _args.flag_property("ModelCheckpoint", "save_best_only", "Save only when monitor "
                                         "improves (a bool; False: every epoch).")
    monitor, mode = _monitor_properties("ModelCheckpoint")
    best = _args.real_property("ModelCheckpoint", "best", "The best monitored value saved so far (None: "
                               "none yet; a number or +-inf, checked on assignment).", finite=False, none=True)
    path = _args.checked_property("ModelCheckpoint", "path", "Where to save (a str or os.PathLike, maybe a "
                                  "template; checked on assignment).", lambda who, name, value: _path(value))

    def __init__(self, path=None, monitor="val_loss", save_best_only=True, mode="auto",
                 initial_value_threshold=None, **unknown):
        if unknown:
            raise _unexpected_keyword("ModelCheckpoint", unknown, _KERAS_CHECKPOINT)
        self.path = path
        # any number but NaN; inf is a bar too
        initial_value_threshold = _args.real("ModelCheckpoint", "initial_value_threshold",
                                             initial_value_threshold, finite=False, none=True)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = mode
        self.best = initial_value_threshold

    def on_train_begin(self, trainer):
        # fail before the first epoch, not after it
        from .checkpoint import unwritable
        problem = unwritable(self.path)
        if problem:
            raise ValueError(f"ModelCheckpoint: path {os.fspath(self.path)}: {problem}; expected a "
                             f"file path it can write")

    def _file(self, epoch, logs):
        """``path``, formatted with the 1-based ``epoch`` and the logs when it has braces."""
        path = os.fspath(self.path)
        if "{" not in path:
            return path
        try:
            return path.format(**{**logs, "epoch": int(epoch) + 1})
        except (KeyError, IndexError) as e:
            field = repr(e.args[0]) if isinstance(e, KeyError) else "a positional field"
            raise ValueError(f"ModelCheckpoint: path {path!r} asks for {field}, which the epoch's logs "
                             f"do not hold; it may use 'epoch' and {sorted(logs)}") from None
        except ValueError as e:           # a format spec that does not fit, or stray braces
            raise ValueError(f"ModelCheckpoint: path {path!r} is not a template str.format can fill "
                             f"with epoch and the epoch's logs ({e}); double a literal brace: {{{{ }}}}") from None

    def on_epoch_end(self, trainer, epoch, logs):
        from .checkpoint import _write
        if self.save_best_only:
            value = _monitored("ModelCheckpoint", self.monitor, logs)
            if not _improves(self.mode, value, self.best, 0.0):
                return
            self.best = value
        # the epochs this Trainer has completed over all its fits, which initial_epoch resumes
        # from: in a second fit, epoch + 1 would name the shuffle of an epoch of the first
        done = getattr(trainer, "_next_order", int(epoch) + 1)
        path = self._file(done - 1, logs)   # on every process: a bad template fails everywhere
        if getattr(trainer, "comm", None) is not None and trainer.comm.rank != 0:
            return                       # the processes hold the same model: rank 0 writes
        # the logs under their own names, except that 'epoch' is always the count resumed from
        # (a callback may have logged its own; scheduler= and scaler= are no metadata names here)
        try:
            _write(path, trainer.model, trainer.optimizer, trainer.scheduler, getattr(trainer, "scaler", None),
                   {"epoch": done, **{k: float(v) for k, v in logs.items() if k != "epoch"}})
        except OSError as e:    # its folder removed, a full disk: the run stops, the model is still here
            why = (f"ModelCheckpoint could not save epoch {done} ({e.strerror}); fit stops here, and the "
                   f"trained model is still in memory: save it elsewhere with gpunet.save(path, "
                   f"trainer.model, trainer.optimizer)")
            raise (type(e)(e.errno, why, e.filename) if e.errno is not None else type(e)(why)) from e


def _as_input(X, dtype, who):
    """``X`` as an array: NumPy/CuPy arrays as they are; anything else (a list, nested
    lists, a tuple) through ``numpy.asarray`` and, carrying no dtype of its own, cast to the
    model's parameter dtype ``dtype`` (as Keras casts to its float type). An array-like
    with a dtype of its own (a CPU ``torch.Tensor``) is converted and keeps it. A
    ``numpy.matrix`` becomes an ndarray, a masked array raises ``TypeError`` (``plain_array``)."""
    X = plain_array(who, "X", X)
    if is_array(X):
        return X
    if isinstance(X, DataLoader):       # its batches (shuffled, maybe) are not X's rows in order
        raise TypeError(f"{who}: expected X as an array, got a DataLoader; pass its samples: "
                        f"{who.rpartition('.')[2]}(loader.X)")
    # Keras' predict(x) given (X, y), the pair evaluate takes
    pair = ("; X goes alone (labels go with evaluate((X, y)))" if isinstance(X, tuple) and len(X) == 2
            and all(hasattr(a, "shape") for a in X) else "")
    try:
        a = numpy.asarray(X)
    except (ValueError, TypeError, RuntimeError) as e:     # torch raises RuntimeError too
        raise TypeError(f"{who}: expected X as an array or a (nested) list of numbers, got "
                        f"{type(X).__name__} that does not convert ({e}){array_hint(X)}{pair}") from e
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{who}: expected X as an array or a (nested) list of numbers, got "
                        f"{type(X).__name__} converting to dtype {a.dtype}{pair}")
    return a.astype(dtype) if dtype is not None and not hasattr(X, "dtype") else a


def _check_nonempty(X, who, name):
    if X.ndim == 0:
        raise ValueError(f"{who}: expected {name} with samples along axis 0, got a 0-d array")
    if int(X.shape[0]) == 0:
        raise ValueError(f"{who}: {name} is empty (X of shape {tuple(X.shape)}); expected at "
                         f"least one sample")


_KERAS_FIT = {"validation_data": "val=(X_val, y_val)", "verbose": "progress=True or False",
              "validation_split": "split the data yourself and pass val=(X_val, y_val)",
              "x": "the data as one tuple: fit((X, y))", "y": "the data as one tuple: fit((X, y))",
              "class_weight": "gpunet has no class weights (resample the rarer classes, or write a "
                              "Loss of your own)",
              "sample_weight": "gpunet has no sample weights (repeat or resample rows, or write a "
                               "Loss of your own)",
              "steps_per_epoch": "gpunet runs each epoch over all of train's batches (for shorter "
                                 "epochs pass a slice of the data)",
              "validation_batch_size": "val as a DataLoader, val=DataLoader(X_val, y_val, batch_size=n) "
                                       "(a tuple val is batched by max(batch_size, 256))",
              "validation_freq": "gpunet validates after every epoch when given val (to validate less "
                                 "often, leave val out and call trainer.evaluate((X_val, y_val)) in a "
                                 "Callback's on_epoch_end)",
              "validation_steps": "gpunet validates on all of val (pass a slice of it)",
              "max_queue_size": "gpunet's DataLoader batches in the calling thread",
              "workers": "gpunet's DataLoader batches in the calling thread",
              "use_multiprocessing": "gpunet's DataLoader batches in the calling thread"}
# Keras' keywords of its evaluate and predict, and what gpunet has instead
_KERAS_EVALUATE = {"x": "the data as one tuple: evaluate((X, y))", "y": "the data as one tuple: evaluate((X, y))",
                   "verbose": "gpunet's evaluate prints nothing",
                   "return_dict": "gpunet's evaluate always returns a dict",
                   "sample_weight": _KERAS_FIT["sample_weight"],
                   "steps": "gpunet evaluates all of the data (pass a slice of it)",
                   "callbacks": "gpunet's evaluate takes no callbacks"}
_KERAS_PREDICT = {"x": "X as the first argument: predict(X)", "verbose": "gpunet's predict prints nothing",
                  "steps": "gpunet predicts all of X (pass a slice of it)",
                  "callbacks": "gpunet's predict takes no callbacks"}


# Keras' compile keywords, and what gpunet's Trainer takes instead
_KERAS_COMPILE = {"loss": "loss_fn= (a loss object, e.g. SoftmaxCrossEntropy())",
                  "jit_compile": "gpunet compiles nothing (Trainer(..., cuda_graph=True) replays a "
                                 "captured step on a GPU)",
                  "loss_weights": "gpunet has one loss per Trainer"}


class _Required:
    """The default of an argument that has none (``Trainer.fit``'s ``train``): it lets a
    call with Keras' ``x=`` keyword reach the ``TypeError`` that names gpunet's way, where
    Python would say only that ``train`` is missing."""

    def __repr__(self):
        return "<required>"


_REQUIRED = _Required()


def _required(who, name, value, unknown, hints):
    """Keras' keywords in ``unknown`` raise the ``TypeError`` naming gpunet's; then a
    missing ``value`` raises Python's own message for a missing argument."""
    if unknown:
        raise _unexpected_keyword(who, unknown, hints)
    if value is _REQUIRED:
        raise TypeError(f"{who}() missing 1 required positional argument: {name!r}")
# Keras' keywords of its EarlyStopping and ModelCheckpoint, and what gpunet has instead
_KERAS_CALLBACKS = {
    "restore_best_weights": "restore_best=True or False",
    "verbose": "gpunet's callbacks print nothing (read stopped_epoch, best, best_epoch)",   # EarlyStopping's
    "baseline": "gpunet has no baseline (stop in a callback of your own: trainer.stop_training = True)",
    "start_from_epoch": "gpunet counts the patience from the first epoch",
    "filepath": "path (the first argument)",
    "save_weights_only": "gpunet always saves the model and the optimizer (gpunet.load(path, model) "
                         "loads only the model)",
    "save_freq": "gpunet writes a checkpoint at the end of an epoch only",
}

# ModelCheckpoint has neither stopped_epoch nor best_epoch: say what it has
_KERAS_CHECKPOINT = {**_KERAS_CALLBACKS, "verbose": "gpunet's callbacks print nothing (read best; "
                                                    "gpunet.load(path, model) returns the saved epoch)"}


def _unexpected_keyword(who, unknown, hints=_KERAS_FIT):
    return _args.unexpected_keyword(who, unknown, hints)


def _as_loader(data, batch_size, shuffle, seed, dtype, who, name, device=None, comm=None):
    """A DataLoader for ``data`` (an ``(X, y)`` pair or a DataLoader) that yields at least
    one batch; empty data raises ``ValueError`` naming ``who`` and ``name``. An ``(X, y)``
    pair gets ``device`` (on a GPU: resident when it fits, see ``gpunet.data``) and ``comm``
    (this process's shard of each global batch)."""
    if isinstance(data, DataLoader):
        if data.y is None:      # it yields X batches alone, which fit/evaluate cannot unpack
            raise TypeError(f"{who}: {name} is a DataLoader without labels (it yields X batches "
                            f"alone); build it as DataLoader(X, y, ...)")
        loader = data
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
        if y is None:
            raise TypeError(f"{who}: {name} must be an (X, y) tuple with labels y, got y=None")
        X = _as_input(X, dtype, who)
        _check_nonempty(X, who, name)
        if is_array(y):
            check_same_device(X, y, who, name)
        loader = DataLoader(X, y, batch_size=batch_size, shuffle=shuffle, seed=seed,
                            device=None if device == "cpu" else device, comm=comm)
    else:
        raise _not_data(data, who, name)
    if len(loader) == 0:
        raise ValueError(f"{who}: {name} yields no batch ({loader.num_samples} samples, batch_size "
                         f"{loader.batch_size}, drop_last={loader.drop_last})")
    return loader


def _check_loader_settings(loader, batch_size, shuffle, seed):
    """``fit``'s ``batch_size``, ``shuffle`` and ``seed`` build the loader of ``(X, y)`` data; a
    DataLoader given as ``train`` batches and shuffles as it was built. A value given to fit
    that is not fit's default and contradicts the loader's own was ignored silently (fit(loader,
    batch_size=128) trained with the loader's 32); it raises ``ValueError`` instead, as Keras'
    fit refuses a batch_size for a dataset."""
    defaults = inspect.signature(Trainer.fit).parameters
    given = [(name, value, own) for name, value, own in (
        ("batch_size", batch_size, loader.batch_size), ("shuffle", shuffle, loader.shuffle),
        ("seed", seed, loader.seed)) if value != defaults[name].default and value != own]
    if given:
        name, value, own = given[0]
        raise ValueError(f"Trainer.fit: train is a DataLoader, which uses its own {name}={own!r}; fit's "
                         f"{name}={value!r} applies to (X, y) data only: build the loader with "
                         f"DataLoader(..., {name}={value!r}), or pass train=(X, y)")


def _not_data(data, who, name):
    """The ``TypeError`` for ``data`` that is neither an ``(X, y)`` pair nor a DataLoader."""
    # an array here is most often Keras' fit(X, y) / evaluate(X, y): y went to the next argument
    method = who.rpartition(".")[2]
    hint = (f"; X and y go together as one tuple: {method}((X, y))"
            + (", and validation data as val=(X_val, y_val)" if method == "fit"
               else ", and outputs without labels come from predict(X)" if method == "evaluate" else "")
            if hasattr(data, "shape") else "")
    got = type(data).__name__
    if isinstance(data, (tuple, list)):
        got = f"a {got} of {len(data)} item{'s' * (len(data) != 1)}"
        if len(data) == 3:      # Keras' (x, y, sample_weight), its validation_data's form too
            hint = "; Keras' (X, y, sample_weight) has no gpunet form: gpunet has no sample weights"
    elif name == "val" and isinstance(data, float):     # Keras' validation_split=0.2
        hint = "; a fraction is Keras' validation_split, which gpunet does not take: split X yourself"
    return TypeError(f"{who}: {name} must be an (X, y) tuple or a DataLoader, got {got}{hint}")


def _check_monitors(callbacks, metrics, has_val):
    """Before training: an ``EarlyStopping`` or a best-only ``ModelCheckpoint`` that
    monitors one of the keys a Trainer can log (``loss``, ``accuracy``, their ``val_*``)
    which this run will not log (no ``val``; no ``"accuracy"`` metric) would only fail at
    the end of the first epoch (Keras warns there and stops nothing). Not once a callback
    of the user's own (a class from outside gpunet) comes first in the list: it may write
    that key into the logs itself. Keras' old names ``acc`` and ``val_acc`` raise naming
    ``accuracy`` and ``val_accuracy``."""
    logged = {"loss", "learning_rate", *metrics}
    if has_val:
        logged |= {f"val_{k}" for k in ("loss", *metrics)}
    for cb in callbacks:
        if not type(cb).__module__.startswith("gpunet."):
            return
        if not (isinstance(cb, EarlyStopping) or (isinstance(cb, ModelCheckpoint) and cb.save_best_only)):
            continue
        m = cb.monitor
        if m in ("acc", "val_acc"):     # Keras' old names: they would fail after the first epoch
            raise ValueError(f"Trainer.fit: {type(cb).__name__} monitors {m!r}, Keras' old name of "
                             f"{m + 'uracy'!r}, which is the key gpunet logs; monitor={m + 'uracy'!r}")
        if m in logged or m not in ("loss", "accuracy", "val_loss", "val_accuracy"):
            continue
        if m.startswith("val_") and not has_val:
            raise ValueError(f"Trainer.fit: {type(cb).__name__} monitors {m!r}, which needs "
                             f"validation data: pass val=(X_val, y_val) to fit, or monitor "
                             f"{m[4:]!r} (the training {m[4:]})")
        raise ValueError(f"Trainer.fit: {type(cb).__name__} monitors {m!r}, which this Trainer does "
                         f"not compute (it was built with metrics={metrics!r}); build it with "
                         f"metrics=('accuracy',) or monitor {'val_loss' if has_val else 'loss'!r}")


def _plateau_monitor(scheduler, metrics, has_val):
    """Before training: the key of the epoch's logs that a ``ReduceLROnPlateau`` schedule
    is stepped with (its ``monitor``; None: ``val_loss`` with validation data, else
    ``loss``). It is stepped before the callbacks run, so the key must be one the Trainer
    logs itself, and ``mode`` must go the way the key improves (a loss down, an accuracy
    up): anything else raises ``ValueError``."""
    monitor, mode = scheduler.monitor, scheduler.mode
    if monitor is None:
        if mode == "max":
            raise ValueError("Trainer.fit: ReduceLROnPlateau(mode='max') needs monitor='accuracy' or "
                             "'val_accuracy' (without monitor it watches the loss, which is minimized)")
        monitor = "val_loss" if has_val else "loss"
    logged = ["loss", *metrics]
    if has_val:
        logged += [f"val_{k}" for k in ("loss", *metrics)]
    if monitor not in logged:
        hint = ("; pass val=(X_val, y_val) to fit to get val_* keys" if monitor.startswith("val_")
                and not has_val else
                "; build the Trainer with metrics=('accuracy',)" if monitor.endswith("accuracy") and not metrics
                else "; to watch a value that a callback computes, call scheduler.step(value) in "
                "that callback instead of passing scheduler= to the Trainer")
        raise ValueError(f"Trainer.fit: ReduceLROnPlateau monitors {monitor!r}, which this run does not "
                         f"log (it logs {', '.join(repr(k) for k in logged)}){hint}")
    want = "max" if monitor.endswith("accuracy") else "min"
    if mode != want:
        raise ValueError(f"Trainer.fit: ReduceLROnPlateau monitors {monitor!r} with mode={mode!r}: "
                         f"it would cut the rate while the model improves; pass mode={want!r}")
    return monitor


def _nonfinite_note(loader) -> str:
    """Where the data of ``loader`` holds NaN or inf, for the message about a non-finite
    loss: ``"X holds 2 NaN/inf values, in rows 3 and 7"`` (rows of the data as given; and so
    for ``y``), ``""`` when both are finite. One pass over the data (one sync on a device),
    made only once a loss was not finite."""
    found = []
    for name, a in (("X", loader.X), ("y", loader.y)):
        if a is None or a.dtype.kind not in "fc":
            continue
        xp = get_array_module(a)
        bad = ~xp.isfinite(a)
        count = int(bad.sum())
        if not count:
            continue
        rows = to_numpy(bad.reshape(a.shape[0], -1).any(axis=1).nonzero()[0]).tolist()
        shown = ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
        found.append(f"{name} holds {count} NaN/inf value{'s' * (count != 1)}, in "
                     f"row{'s' * (len(rows) != 1)} {shown}")
    return "; ".join(found)


def _named_layers(model, prefix=""):
    """``(state_dict path, layer)`` for every layer inside ``model`` (``"1"``, ``"2.block.0"``),
    depth first; the model itself is ``"model"``."""
    if not prefix:
        yield "model", model
    for name, child in model.named_children():
        yield prefix + name, child
        yield from _named_layers(child, prefix + name + ".")


def _first_layer(model):
    """The layer that sees the data (descending into nested Sequentials)."""
    while hasattr(model, "layers") and len(model.layers):
        model = model.layers[0]
    return model


def _loss_array(loss_fn, loss):
    """``loss`` as ``loss_fn`` returned it, when it is an array (0-d, or one value per sample
    as ``reduction="none"`` gives; a NumPy scalar counts): a loss of one's own that returns a
    Python float, None or a tuple raised ``AttributeError: 'float' object has no attribute
    'ndim'`` from inside the Trainer's bookkeeping; it raises ``TypeError`` naming the loss
    and what it returned instead. A type check, no device work."""
    if type(loss) is numpy.ndarray or is_array(loss):
        return loss
    hint = ("; return the array you computed it from (a float() of it also waits for a GPU)"
            if isinstance(loss, (int, float)) and not isinstance(loss, bool) else "")
    raise TypeError(f"Trainer: loss_fn {type(loss_fn).__name__} returned {type(loss).__name__}; expected the "
                    f"loss as an array on the model's device, 0-d (or one value per sample, as "
                    f"reduction='none' gives), as gpunet's losses return it{hint}")


class _NonFiniteLoss(Exception):
    """A training step on the CPU whose loss is not finite, stopped after the loss and before
    its backward and update (``_halt_if_nonfinite``); ``_train_epoch`` records the loss and
    raises the ``FloatingPointError`` naming the step."""

    def __init__(self, loss, out):
        super().__init__("non-finite loss")
        self.loss, self.out = loss, out


def _halt_if_nonfinite(loss, out):
    """On the CPU (where reading the loss costs nothing), raise ``_NonFiniteLoss`` when the
    step's loss (its sum, for ``reduction="none"``, as ``_Record`` adds it) is NaN or inf, so
    that no update is made from its gradients: a diverged run keeps the last finite weights,
    the optimizer's state and step counts stay those of the steps applied (as
    ``torch.autograd.detect_anomaly`` stops before ``optimizer.step()``)."""
    value = loss if loss.ndim == 0 else loss.sum()
    if not math.isfinite(float(value)):
        raise _NonFiniteLoss(loss, out)


def _divergence_note(model, out, half=False) -> str:
    """For the non-finite-loss error: whether the model's output of that step held NaN/inf
    or was finite (the loss overflowed; on the CPU, where ``out`` is that step's; None on a
    GPU, which has run on since), and the parameter of the largest magnitude (or those
    holding NaN/inf): what grew. On a GPU it reads the parameters (host syncs), once the
    run has failed. ``half`` (``precision="fp16"``): an
    output with NaN/inf from finite parameters that float32 holds comfortably is most often a
    float16 activation past 65504, which the note says."""
    parts = []
    if out is not None:
        o = to_numpy(out)
        bad = int(o.size - numpy.isfinite(o).sum())
        if bad:
            parts.append(f"its output held {bad} NaN/inf value{'s' * (bad != 1)} of {o.size}")
        elif o.size:
            parts.append(f"its output was finite, up to |{float(numpy.abs(o).max()):.3g}|, and the loss "
                         f"overflowed")
    worst, broken = None, []
    for name, p in model.named_parameters():
        a = to_numpy(p.data)
        if not a.size:
            continue
        if not numpy.isfinite(a).all():
            broken.append(name)
        else:
            m = float(numpy.abs(a).max())
            if worst is None or m > worst[1]:
                worst = (name, m)
    if half and out is not None and bad and not broken:
        parts.append("with precision='fp16' the forward runs in float16, whose largest value is 65504: "
                     "an activation past it is inf (lower the learning rate, or normalize the inputs "
                     "or the activations, e.g. with BatchNorm)")
    if broken:
        parts.append(f"parameter{'s' * (len(broken) > 1)} holding NaN/inf: {', '.join(broken)} (from an "
                     f"earlier update whose gradients overflowed though its loss was finite, or an "
                     f"assignment)")
    elif worst is not None:
        parts.append(f"the largest parameter is {worst[0]!r}, up to |{worst[1]:.3g}|")
    return "".join("; " + part for part in parts)


class _Record:
    """The running loss and accuracy of one pass, kept on the model's device and read by
    the host in bulk (``read``: one sync), so a step launches 2 small ops for them (argmax,
    compare; with one output column two thresholds and a compare) and never waits.

    Each step's loss (0-d, on the device) is kept as it is until the next ``read`` stacks
    them into ``rows[:steps]``; each sample's hit (argmax of the output == label, or argmax
    of a probability target; binary accuracy for one output column; for several outputs per
    label or with ``BCEWithLogits``, the fraction right: ``_fractions``) goes into ``hits``;
    ``read`` counts the new hits into ``rows[steps]`` and brings ``rows[done:]`` to the host. The host adds the losses in step
    order, so the totals are the sums a per-step ``float(loss)`` would give. ``bad`` is the
    first step whose loss is not finite.

    ``ignore``: the loss's ``ignore_index``. A sample with that integer label is neither
    a hit nor counted: each sample's "counted" flag goes into ``valid``, and each step's
    count into ``rows[steps + 1 + step]`` (one more small reduction per step); a mean
    loss is weighted by that count, and ``counted`` (the denominator of both the loss and
    the accuracy) adds them up. The pass's loss is then the mean over the counted samples,
    whatever the batch size and order (as one ``SoftmaxCrossEntropy`` call over the whole
    data would give). Without it every sample counts (``counted`` follows ``seen`` on
    the host, nothing more is launched).

    The loss's terms (``mean``: whether its reduction is the mean, so the step's value is
    weighted by its count; ``threshold``; ``ignore``) come with each step, because
    ``Trainer.loss_fn`` may be assigned in the middle of a pass and counts from the next
    step. ``ignore`` given to the constructor is the first step's, to size ``rows`` and
    ``valid`` up front; a later step's ``ignore_index`` grows them then (once per pass).
    ``metrics`` is fixed for the pass: accuracy is counted over all of its samples."""

    def __init__(self, xp, steps, samples, metrics, ignore=None):
        self.xp, self.metrics = xp, metrics
        self.steps, self.samples = steps, samples
        self.rows = xp.zeros(steps + 1 + (0 if ignore is None else steps), dtype=numpy.float64)
        self.hits = xp.zeros(samples if metrics else 0, dtype=bool)
        self.valid = xp.zeros(samples if ignore is not None else 0, dtype=bool)
        self.losses = []            # losses of the steps not read yet
        self.n = []                 # batch sizes, on the host
        self.mean = []              # per step: the loss was a mean (weight it by the count)
        self.by_valid = []          # per step: its count is in rows (an ignore_index applied)
        self.done = 0               # steps read so far
        self.total = 0.0            # sum of per-sample losses over the steps read
        self.correct = 0
        self.seen = 0               # samples of the steps read
        self.counted = 0            # of those, the samples not ignored
        self.filled = 0             # samples recorded
        self.bad = None             # (step, value) of the first non-finite loss

    def add(self, loss, out, y, mean=True, threshold=0.5, ignore=None, elementwise=False):
        """Record a step made with a loss of these terms (see the class); returns the
        batch's loss (0-d, on the device)."""
        value = loss if loss.ndim == 0 else loss.sum()
        self.losses.append(value)
        n = int(out.shape[0])
        binary = out.ndim == 2 and out.shape[1] == 1
        valid = None
        if ignore is not None:
            if self.valid.size == 0:    # a loss with ignore_index assigned during the pass
                self._grow()
            valid = self.valid[self.filled:self.filled + n]
            if y.ndim == 1 and y.dtype.kind in "iu" and not binary:
                self.xp.not_equal(y, ignore, out=valid)
            else:                   # probability or binary targets: ignore_index does not apply
                valid[...] = True
            valid.sum(dtype=numpy.float64, out=self.rows[self.steps + 1 + len(self.n), ...])
        if self.metrics:
            hits = self.hits[self.filled:self.filled + n]
            if binary:              # no argmax to take
                # one output column: a hit is (out > threshold) == (y > 0.5)
                self.xp.equal(out.reshape(n) > threshold, y.reshape(n) > 0.5, out=hits)
            elif elementwise or out.ndim != 2:
                hits = self._fractions(out, y, n, threshold, elementwise)
            else:
                target = y.argmax(axis=1) if y.ndim == 2 else y
                self.xp.equal(out.argmax(axis=1), target, out=hits)
            if valid is not None:
                if hits.dtype == bool:
                    hits &= valid
                else:
                    hits *= valid
        self.filled += n
        self.n.append(n)
        self.mean.append(mean)
        self.by_valid.append(valid is not None)
        return value

    def _fractions(self, out, y, n, threshold, elementwise):
        """Each sample's hit as the fraction of its outputs that are right (into ``hits``,
        made float64 at the first such batch of the pass), when a sample has several: every
        element of ``BCEWithLogits`` outputs (multi-label, masks) and of an output with one
        channel along axis 1 is a binary hit, as for one output column; otherwise each
        position of an ``(N, C, ...)`` output is a hit when its argmax along axis 1 is the
        integer label ``(N, ...)``, or the argmax of a target of the output's shape. Targets
        that fit neither raise ``ValueError`` naming both shapes."""
        xp = self.xp
        if self.hits.dtype == bool:
            self.hits = self.hits.astype(numpy.float64)
        hits = self.hits[self.filled:self.filled + n]
        if elementwise or out.shape[1:2] in ((), (1,)):
            ok = y.size == out.size
            if ok:
                right = xp.equal(out.reshape(n, -1) > threshold, y.reshape(n, -1) > 0.5)
        else:
            pred = out.argmax(axis=1)
            target = y if y.ndim == out.ndim - 1 else y.argmax(axis=1) if y.shape == out.shape else None
            ok = target is not None and target.shape == pred.shape
            if ok:
                right = xp.equal(pred, target).reshape(n, -1)
        if not ok:
            raise ValueError(f"Trainer: the accuracy metric cannot compare outputs of shape "
                             f"{tuple(out.shape)} with targets of shape {tuple(y.shape)} (expected targets "
                             f"of the outputs' shape, or integer labels without axis 1); build the "
                             f"Trainer with metrics=() to train without it")
        right.mean(axis=1, out=hits)
        return hits

    def _grow(self):
        """Room for per-step counts: ``rows`` gains ``steps`` entries, ``valid`` one flag per
        sample (the steps before had no ``ignore_index``: their counts are their sizes)."""
        rows = self.xp.zeros(2 * self.steps + 1, dtype=numpy.float64)
        rows[:self.steps + 1] = self.rows
        self.rows = rows
        self.valid = self.xp.zeros(self.samples, dtype=bool)

    def read(self):
        """Bring the steps not yet read to the host (one sync) and add them up."""
        upto, steps = len(self.n), self.steps
        if upto <= self.done:
            return
        self.xp.stack(self.losses, out=self.rows[self.done:upto])
        self.losses = []
        if self.metrics:
            self.hits[self.seen:self.filled].sum(dtype=numpy.float64, out=self.rows[steps, ...])
        rows = to_numpy(self.rows[self.done:]).tolist()
        for i, v in enumerate(rows[:upto - self.done]):
            s, n = self.done + i, self.n[self.done + i]
            if not math.isfinite(v) and self.bad is None:
                self.bad = (s, v)
            k = int(rows[steps + 1 + s - self.done]) if self.by_valid[s] else n
            self.total += v * k if self.mean[s] else v
            self.seen += n
            self.counted += k
        if self.metrics:
            self.correct += rows[steps - self.done]     # whole counts, unless _fractions
        self.done = upto


class Trainer:
    """Fit, evaluate and predict with ``model``, ``loss_fn`` and ``optimizer``.

    ``device=None`` keeps the model where its parameters are; a device string moves the
    model there first. ``(X, y)`` data on the host is copied to a GPU model's device once
    when it fits (``gpunet.data.fits_on_device``) and batched there; otherwise, and for
    DataLoaders given as they are, batches are moved to the model's device as they are
    produced.
    ``metrics``: a tuple of names; ``"accuracy"`` (argmax of the output against an
    integer label or the argmax of a probability target) is the one built in. With one
    output column there is no argmax to take: accuracy is then binary, as Keras's
    ``binary_accuracy``: the output above 0 (``BCEWithLogits``: a logit) or above 0.5 (any
    other loss: a probability or a 0/1 regression target) against a target above 0.5.
    ``BCEWithLogits`` is scored that way on every output element (multi-label ``(N, C)``
    targets, masks), as Keras scores binary cross-entropy. A sample with several outputs per
    label scores the fraction it gets right: ``(N, 1, ...)`` outputs (an autoencoder's or a
    mask's) element by element as above, ``(N, C, ...)`` ones position by position by the
    argmax along axis 1; targets that fit neither raise ``ValueError`` naming both shapes
    (pass ``metrics=()``). For a regression the accuracy means nothing: ``fit`` warns
    (``RuntimeWarning``) when ``MSELoss`` targets leave ``[0, 1]``.
    Samples whose integer label is the loss's ``ignore_index`` count neither as hits nor
    in the denominator of the accuracy (as Keras leaves a loss's ``ignore_class`` out of
    its metrics), and the loss is the mean over the other samples (each batch's mean
    weighted by its count of them), so it does not depend on the batch size or order.

    ``scheduler``: a learning-rate schedule of ``optimizer`` (``gpunet.optim.StepLR``,
    ``ExponentialLR``, ``CosineAnnealingLR``, ``LinearWarmup``), stepped as a PyTorch loop
    steps it, after ``optimizer.step()``: once at the end of each epoch's training
    (``scheduler_interval="epoch"``, before validation and the callbacks' ``on_epoch_end``,
    so a checkpoint saved there holds the next epoch's rate) or after every optimizer step
    (``"step"``). ``ModelCheckpoint`` saves its state. ``ReduceLROnPlateau`` is stepped
    once per epoch after validation (before the callbacks) with the logged value of its
    ``monitor`` (default ``val_loss`` with validation data, else ``loss``; checked before
    the first epoch); ``scheduler_interval="step"`` is refused for it.

    ``clip_grad_norm=max_norm`` rescales the gradients to a global L2 norm of at most
    ``max_norm`` (``gpunet.optim.clip_grad_norm``; the norm before clipping is kept in
    ``trainer.last_grad_norm``, a Python float; on a device reading it is one host sync);
    ``clip_grad_value=c`` clamps each gradient element into ``[-c, c]``. At most one of the
    two, as in Keras. Clipping happens after the callbacks'
    ``on_backward_end`` (they see the raw gradients) and right before ``optimizer.step()``.

    The History records, besides the loss and metrics, ``learning_rate``: the rate of the
    epoch's last optimizer step.

    ``precision="fp16"`` (default ``"fp32"``): mixed precision (``gpunet.amp``). The model's
    parameters and the optimizer's state stay float32 (master weights); forward and
    backward run on float16 copies of the Dense and Conv2D parameters with float16
    activations (``gpunet.amp.MixedPrecision``); the output is cast to float32 for the
    loss; BatchNorm keeps float32 statistics. The loss gradient is scaled by
    ``trainer.scaler`` (``scaler=``, default ``gpunet.amp.GradScaler()``: 2**16, x2 after
    2000 clean steps, x0.5 and the step skipped on inf/NaN gradients); clipping unscales
    first; callbacks' ``on_backward_end`` see the scaled gradients. Evaluate and predict
    run in float16 as well. On a device, loss scaling makes no host sync (the skip decision
    is the optimizer kernel's, see ``GradScaler``). The data are float32 (or float16), as
    for PyTorch's autocast: uint8, integer, bool and float64 inputs raise ``ValueError``
    with the cast, as they do without mixed precision.

    ``cuda_graph=True`` (a ``"cuda"`` or ``"sim"`` model): each ``fit`` runs its first
    full-size batch eagerly, captures the second as a CUDA graph (forward, loss, backward,
    clipping, optimizer, loss scaling: ``gpunet.cuda.graphs``) and replays it for every
    following batch of that shape, which is first copied into the graph's static input
    buffers; a batch of another shape (the last, partial one) runs eagerly. A replayed
    step is one graph launch, plus 2 copies in (the batch) and the record's 3 small
    launches (a copy of the loss, argmax, compare), with the same results as the eager
    step (``Dropout`` draws its mask from a counter on the device, ``BatchNorm`` updates its
    running statistics in place). Callbacks' ``on_backward_end`` runs at capture only.
    ``comm`` is refused (``ValueError``); a schedule may change ``lr`` (written to the device
    before each replay), other hyper-parameters are frozen.

    ``comm`` (a ``gpunet.distributed`` communicator): data-parallel training, one Trainer
    per process. ``(X, y)`` training data is sharded (``gpunet.distributed.shard``:
    ``batch_size`` is the per-process batch, the global batch is ``comm.size`` times it);
    the optimizer must be a ``DistributedOptimizer`` over ``comm`` when ``comm.size > 1``.
    The logged loss and accuracy (train and val) are the means over every process's
    samples, the same numbers on every process (reduced, then broadcast from rank 0), so
    callbacks such as ``EarlyStopping`` decide alike everywhere; ``stop_training`` is rank
    0's. ``(X, y)`` validation/evaluation data is split into contiguous shares (no padding).
    The progress bar is rank 0's and ``ModelCheckpoint`` writes from rank 0 only; a
    checkpoint resumes on any number of processes (keep the global batch to continue the
    same run). ``last_epoch_samples``/``last_epoch_seconds`` stay this process's. The
    gradients are averaged right after backward (``optimizer.synchronize()``), so callbacks,
    clipping and the loss scaler's inf/NaN check see the same values on every process.

    Assigned afterwards (``trainer.clip_grad_norm = 1.0``, from a callback too): ``loss_fn``,
    ``metrics``, ``scheduler``, ``scheduler_interval``, ``clip_grad_norm``,
    ``clip_grad_value``, ``scaler``, ``comm`` and ``cuda_graph`` are checked as the arguments
    are and used from the next step (a captured CUDA graph is captured again); a ``loss_fn``
    assigned in the middle of an epoch enters that epoch's logged loss with its own
    reduction and ``ignore_index`` from its first step, and ``metrics``, counted over whole
    passes, from the next epoch (or ``evaluate``). ``model``,
    ``optimizer``, ``precision`` and ``device`` are fixed, since the float16 copies, the
    model's place and the schedule were made from them: assigning one raises
    ``AttributeError``; create a new Trainer instead (Keras re-``compile``s for the same).
    Likewise a model moved after ``Trainer(...)`` (``model.to("cuda")``): ``fit``,
    ``evaluate`` and ``predict`` raise ``ValueError`` naming both devices.
    """

    # settings that may be assigned after construction: checked as the arguments are (the
    # setters below); the ones something was built from are read-only
    model = _args.read_only("Trainer", "model", "The model (fixed at construction).", _NEW_TRAINER)
    optimizer = _args.read_only("Trainer", "optimizer", "The optimizer (fixed at construction).", _NEW_TRAINER)
    precision = _args.read_only("Trainer", "precision", "'fp32' or 'fp16' (fixed at construction).",
                                "the float16 copies of the parameters and the loss scaler are made "
                                "from it; " + _NEW_TRAINER)
    device = _args.read_only("Trainer", "device", "The model's device (fixed at construction).",
                             "the model (and a precision='fp16' trainer's float16 copies) were moved "
                             "there; " + _NEW_TRAINER)

    def __init__(self, model, loss_fn=_REQUIRED, optimizer=_REQUIRED, metrics=("accuracy",), device=None, *,
                 scheduler=None, scheduler_interval="epoch", clip_grad_norm=None, clip_grad_value=None,
                 precision="fp32", scaler=None, comm=None, cuda_graph=False, **unknown):
        # Keras' compile(loss=..., optimizer=...) names the loss 'loss'
        _required("Trainer", "loss_fn", loss_fn, unknown, _KERAS_COMPILE)
        _required("Trainer", "optimizer", optimizer, {}, {})
        self._model, self._optimizer = model, optimizer
        self._graph = None          # (batch key, CUDAGraph, static x, static y, loss, output)
        self._graph_warm = None     # the batch key of the eager warm-up step
        self._cuda_graph = False
        self.comm = comm
        self._precision = _check_precision(precision, "Trainer")
        _check_parts(model, loss_fn, optimizer, scheduler, scaler)
        self._loss_fn = loss_fn
        _check_scaler(scaler, precision)
        _check_scheduler(optimizer, scheduler, scheduler_interval)
        if clip_grad_norm is not None and clip_grad_value is not None:
            raise ValueError("Trainer: pass clip_grad_norm or clip_grad_value, not both")
        self._scheduler = self._clip_grad_norm = self._clip_grad_value = None
        self.scheduler, self.scheduler_interval = scheduler, scheduler_interval
        self.clip_grad_norm, self.clip_grad_value = clip_grad_norm, clip_grad_value
        self._last_grad_norm = None
        self.metrics = metrics
        if device is not None:
            try:
                device = resolve_device(device)
            except ValueError as e:        # an unknown device name
                raise ValueError(f"Trainer: device={device!r}: {e}") from None
            model.to(device)
        self._device = model.device
        self.amp = MixedPrecision(model) if precision == "fp16" else None
        self.scaler = scaler
        self.stop_training = False
        self.history = None
        self.epoch = 0
        self.global_step = 0
        self._next_order = 0        # the shuffle epoch a fit without initial_epoch starts at
        self._callbacks = []
        self._step_lr = None
        self._halt_nonfinite = False    # fit on the CPU: a non-finite loss stops its step
        self._updating = False          # inside a step's update (fit holds a Ctrl-C then)
        self._sigint_held = False       # a Ctrl-C held during the update, raised after it
        self._halted_out = None         # that step's output, for the error's note
        self.cuda_graph = cuda_graph

    def _recapture(self):
        """A setting a captured CUDA graph holds changed: capture again at the next batch."""
        self._graph = self._graph_warm = None

    def _set_loss_fn(self, value):
        _check_parts(self.model, value, self.optimizer)
        self._loss_fn = value
        self._recapture()

    def _set_comm(self, value):
        value = _check_comm(value, self.optimizer)
        if self.cuda_graph:                 # graphs are captured without comm only
            _check_cuda_graph(True, self.device, value)
        self._comm = value

    def _set_metrics(self, value):
        self._metrics = _metric_names(value)

    def _set_scheduler(self, value):
        _check_parts(self.model, self.loss_fn, self.optimizer, value)
        _check_scheduler(self.optimizer, value, getattr(self, "_scheduler_interval", "epoch"))
        self._scheduler = value

    def _set_scheduler_interval(self, value):
        _check_scheduler(self.optimizer, self.scheduler, value)
        self._scheduler_interval = value

    def _set_clip_grad_norm(self, value):
        self._set_clip("clip_grad_norm", value, "clip_grad_value")

    def _set_clip_grad_value(self, value):
        self._set_clip("clip_grad_value", value, "clip_grad_norm")

    def _set_clip(self, name, value, other):
        value = None if value is None else _positive(name, value)
        if value is not None and getattr(self, other) is not None:
            raise ValueError(f"Trainer: pass clip_grad_norm or clip_grad_value, not both; set {other} "
                             f"to None first")
        self.__dict__["_" + name] = value
        self._recapture()

    def _set_scaler(self, value):
        if value is not None:
            _check_parts(self.model, self.loss_fn, self.optimizer, scaler=value)
        _check_scaler(value, self.precision)
        self._scaler = (value or GradScaler()) if self.precision == "fp16" else None
        self._recapture()

    def _set_cuda_graph(self, value):
        self._cuda_graph = _check_cuda_graph(value, self.device, self.comm)
        self._recapture()

    # reads are C attrgetters (a few per step); the setters above check as the constructor does
    loss_fn = property(operator.attrgetter("_loss_fn"), _set_loss_fn, doc=(
        "The loss object (checked on assignment as the argument is; the next step uses it)."))
    comm = property(operator.attrgetter("_comm"), _set_comm, doc=(
        "None or the communicator of data-parallel training (checked on assignment as the "
        "argument is: with more than one process the optimizer must average over it)."))
    metrics = property(operator.attrgetter("_metrics"), _set_metrics, doc=(
        "The metric names, ``(\"accuracy\",)`` or ``()``; assign a name, names or None (checked "
        "as the argument is; counted from the next epoch or evaluate)."))
    scheduler = property(operator.attrgetter("_scheduler"), _set_scheduler, doc=(
        "None or a learning-rate schedule of ``optimizer`` (checked on assignment as the argument "
        "is, with ``scheduler_interval``)."))
    scheduler_interval = property(operator.attrgetter("_scheduler_interval"), _set_scheduler_interval, doc=(
        "``\"epoch\"`` or ``\"step\"`` (checked on assignment, with ``scheduler``)."))
    clip_grad_norm = property(operator.attrgetter("_clip_grad_norm"), _set_clip_grad_norm, doc=(
        "None or the global L2 norm the gradients are clipped to (a finite number > 0; checked on "
        "assignment; not with clip_grad_value)."))
    clip_grad_value = property(operator.attrgetter("_clip_grad_value"), _set_clip_grad_value, doc=(
        "None or the bound the gradient elements are clamped to (a finite number > 0; checked on "
        "assignment; not with clip_grad_norm)."))
    scaler = property(operator.attrgetter("_scaler"), _set_scaler, doc=(
        "The loss scaler of a ``precision=\"fp16\"`` trainer, None otherwise; assigning a "
        "``GradScaler`` replaces it (None: a new default one), checked as the argument is."))
    @property
    def last_grad_norm(self):
        """The global L2 norm of the last step's gradients before clipping (with
        ``clip_grad_norm=``), a Python float on every device (None before the first clipped
        step), as the History's values are. On a device the norm stays there during training
        (``gpunet.optim.clip_grad_norm`` returns a 0-d device array, no host sync per step);
        each read copies that one number to the host (a host sync), so reading it costs
        nothing while training and one sync when you look."""
        v = self._last_grad_norm
        return v if v is None or type(v) is float else float(v)

    cuda_graph = property(operator.attrgetter("_cuda_graph"), _set_cuda_graph, doc=(
        "Whether ``fit`` captures and replays a CUDA graph (a bool; True only on a ``\"cuda\"`` "
        "or ``\"sim\"`` model and without ``comm``; checked on assignment)."))

    # -- one step --------------------------------------------------------------------------
    def train_step(self, xb, yb):
        """forward → loss → backward → (clip) → update (→ per-step schedule); returns
        ``(loss, output)`` on the device."""
        self._step_lr = float(self.optimizer.lr)
        try:
            loss, out = self._device_step(xb, yb)
            self._after_step()
        finally:
            self._release_interrupt()
        return loss, out

    def _release_interrupt(self):
        """The end of a step's update: a Ctrl-C that ``fit``'s handler held during it
        (``_hold_interrupts``) is raised now, once the update, the schedule's step and the
        step count are all done."""
        self._updating = False
        if self._sigint_held:
            self._sigint_held = False
            raise KeyboardInterrupt

    def _after_step(self):
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.global_step += 1

    def _graph_step(self, xb, yb):
        """``train_step`` through a CUDA graph (``cuda_graph=True``): the first batch of a
        shape runs eagerly (kernels compiled, optimizer tables and state made), the second
        is captured (``gpunet.cuda.graphs.CUDAGraph``, into static copies of the batch),
        the next ones of that shape are copied into the static buffers and replayed; a
        batch of another shape (the last, partial one) runs eagerly. Returns ``(loss,
        output, static)``: with ``static``, both are the graph's arrays, overwritten by the
        next replay."""
        from .cuda.graphs import CUDAGraph
        key = (tuple(xb.shape), xb.dtype, tuple(yb.shape), yb.dtype)
        st = self._graph
        if st is None and self._graph_warm != key:
            self._graph_warm = key
            return (*self.train_step(xb, yb), False)
        if st is not None and st[0] != key:
            return (*self.train_step(xb, yb), False)
        self._step_lr = float(self.optimizer.lr)
        try:
            if st is None:
                sx, sy = xb.copy(), yb.copy()
                g = CUDAGraph(self.device)
                # the step is held weakly by the graph, which this Trainer holds: on the sim,
                # whose replays re-run it, a bound method made the two a reference cycle, and
                # a dropped Trainer and its model waited for the cyclic gc (the replays come
                # from this Trainer, so it is alive whenever the step runs)
                step = weakref.WeakMethod(self._device_step)
                loss, out = g.capture(lambda x, y: step()(x, y), sx, sy, model=self.model)
                self._graph = (key, g, sx, sy, loss, out)
            else:
                _, g, sx, sy, loss, out = st
                sx[...] = xb
                sy[...] = yb
                self._updating = True       # one launch: the whole step, update included
                g.replay()
            self._after_step()
        finally:
            self._release_interrupt()
        return loss, out, True

    def _device_step(self, xb, yb):
        """The device work of a step: forward, loss, backward, clipping, the update."""
        out = self._forward(xb)
        if self.amp is None:
            loss = _loss_array(self.loss_fn, self.loss_fn(out, yb))
            if self._halt_nonfinite:
                _halt_if_nonfinite(loss, out)
            self.model.zero_grad()
            self.model.backward(self.loss_fn.backward())
        else:
            try:
                loss = _loss_array(self.loss_fn, self.loss_fn(out, yb))
                if self._halt_nonfinite:
                    _halt_if_nonfinite(loss, out)
                self.model.zero_grad()
                self.amp.backward(self.scaler.scale(self.loss_fn.backward()))
            finally:
                self.amp.restore()     # float32 masters in place even when the loss raised
        sync = getattr(self.optimizer, "synchronize", None)
        if sync is not None:        # a DistributedOptimizer: average before anything reads them
            sync()
        for cb in self._callbacks:
            cb.on_backward_end(self)
        self._updating = True       # from here to the step count, a Ctrl-C waits (fit)
        if self.scaler is not None and (self.clip_grad_norm is not None
                                        or self.clip_grad_value is not None):
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm is not None:
            self._last_grad_norm = _clip_norm(self.optimizer.params, self.clip_grad_norm)
        elif self.clip_grad_value is not None:
            _clip_value(self.optimizer.params, self.clip_grad_value)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)    # skipped on inf/NaN gradients
            self.scaler.update()
        return loss, out

    def _forward(self, x):
        return self.model.forward(x) if self.amp is None else self.amp.forward(x)

    def fit(self, train=_REQUIRED, val=None, epochs=10, batch_size=64, shuffle=True, seed=0, callbacks=(),
            progress=True, initial_epoch=0, **unknown) -> History:
        """Train for ``epochs`` epochs; returns the History (also ``self.history``).

        ``train``/``val``: ``(X, y)`` tuples or DataLoaders. For tuples, a DataLoader with
        ``batch_size``, ``shuffle`` and ``seed`` is built (a DataLoader given as ``train`` keeps
        its own three: one of them given to ``fit`` that contradicts the loader's raises
        ``ValueError`` rather than being ignored), which keeps the last, partial batch
        of ``N % batch_size`` samples (PyTorch's ``drop_last=False``; a DataLoader with
        ``drop_last=True`` drops it), and the epoch's loss weights each batch by its
        samples; epoch ``k`` visits the samples in
        the order of ``(seed, k)``, so a run resumed with ``initial_epoch=k`` after
        ``gpunet.load`` continues bit for bit (with the same BLAS kernels and thread count,
        guide §9). A fit without ``initial_epoch`` on a Trainer
        that has trained before goes on with the orders after those of its last epoch (so
        ``fit(epochs=1)`` in a loop reshuffles at each call, as Keras' ``fit`` and a PyTorch
        ``DataLoader`` do, and ``fit(epochs=5)`` twice takes the orders of one
        ``fit(epochs=10)``); its History and callbacks still count its epochs from 0.
        A non-finite loss raises ``FloatingPointError`` naming the epoch and step (and the
        rows of the training data that hold NaN or inf, when there are any) and ends the run
        there, as Keras' ``TerminateOnNaN`` would stop it (the callbacks' ``on_train_end``
        still runs, the epochs before stay in ``trainer.history``, and a ``ModelCheckpoint``
        file keeps the last good epoch). On the CPU that step stops after its loss, before its
        backward and update (Keras applies that update first): the model keeps the weights
        that gave the loss (unless ``EarlyStopping(restore_best=True)`` puts its best epoch's
        back; BatchNorm's running statistics took in that step's batch, as in PyTorch), and
        the optimizer's state and ``trainer.global_step`` are those of the steps applied; the
        message adds whether the output held NaN/inf or the loss overflowed, and the largest
        parameter (or those holding NaN/inf). On a GPU the loss is read later (below), so the updates up
        to that read were applied. A non-finite ``val_loss`` is recorded and warned
        about (``RuntimeWarning``, once per fit, naming the rows of ``val`` that hold NaN or
        inf), as validation cannot corrupt the weights.
        A Ctrl-C (SIGINT) that arrives during a step's update (the optimizer's loop over the
        parameters, the loss scaler, the schedule's step, the step count) is held until that
        update is complete, then raised, so an interrupted model never holds half an update;
        anywhere else, and a second one, it is raised at once (a handler installed for the fit,
        in the main thread, over Python's default one only).
        Empty data raises ``ValueError``. Before the first epoch, ``val``'s first sample goes
        through the model and the loss (as ``evaluate`` runs them), so validation data of
        the wrong shape, dtype or labels fails then, naming ``val``, not after an epoch; and
        with ``SoftmaxCrossEntropy`` every integer label of ``train`` and ``val`` is checked
        against the model's outputs (one pass over ``y``): a label outside ``[0, C)``, other
        than ``ignore_index``, raises ``ValueError`` naming its row of the data; so do a
        ``BCEWithLogits`` target outside ``[0, 1]`` and a negative probability target of
        ``SoftmaxCrossEntropy``, where the loss has no minimum, and a batch of one sample (the
        last, ``N % batch_size == 1``) on which a ``BatchNorm`` of the model would get one
        value per channel and refuse to train, after the epoch's other steps.
        Under ``comm`` these checks (the callbacks' ``on_train_begin`` and each epoch's
        validation too) fail on every process when they fail on one: that process raises
        its error, the others a ``RuntimeError`` naming its rank, rather than waiting for
        it in the next all-reduce.
        On a GPU the loss is read in bulk (see the module's docstring), so these errors come
        at the next progress refresh or at the end of the epoch, still naming the step
        where the loss first was not finite; a label outside the classes raises the loss's
        ``ValueError`` naming it and the step. ``(X, y)`` data that fits on the GPU is
        copied there once and batched there.
        The logged ``loss`` is the per-sample mean over the epoch (for a loss with
        ``reduction="sum"`` or ``"none"``: the summed loss divided by the number of
        samples; samples labelled with the loss's ``ignore_index`` are not counted).
        ``learning_rate`` is the rate of the epoch's last optimizer step; with a
        ``scheduler``, a resumed run restores its state with ``gpunet.load(...,
        scheduler=...)``. While fitting, the first layer
        skips the gradient with respect to the data (its ``input_grad`` is set False and
        restored after), as PyTorch skips it for tensors that do not require grad.

        ``epochs`` is the epoch to stop at, as in Keras: ``initial_epoch=k`` runs epochs
        ``k .. epochs-1``; an ``initial_epoch`` past ``epochs`` raises ``ValueError`` (Keras
        runs nothing, silently). ``trainer.global_step`` counts the optimizer steps of every
        ``fit``; a fit with ``initial_epoch=k`` starts it at ``k * len(loader)``, the steps those
        epochs took (the resume contract keeps the data and the batch size), as Lightning
        restores its ``global_step`` from a checkpoint: on a fresh Trainer after
        ``gpunet.load``, and on this one resumed from a checkpoint after an interrupted fit,
        whose partial epoch's steps it had counted (continuing this Trainer's own last epoch,
        the count is that already).

        Without ``val``, an ``EarlyStopping`` or best-only ``ModelCheckpoint`` monitoring
        ``val_loss`` or ``val_accuracy`` raises ``ValueError`` before the first epoch (Keras
        warns at each epoch's end and neither stops nor saves), and so does one monitoring
        ``accuracy``/``val_accuracy`` on a Trainer built with ``metrics=()``, unless a
        callback of your own comes before it in ``callbacks`` (it may write that key into
        the logs); a
        ``monitor`` missing from an epoch's logs raises at that epoch's end, listing the keys
        there.

        Keras' keywords are not taken (a ``TypeError`` names gpunet's): ``validation_data``
        is ``val``, ``verbose`` is ``progress``, ``x=X, y=y`` is the one tuple ``(X, y)``;
        ``validation_split`` has none (split ``X`` yourself and pass ``val``), nor have
        ``class_weight``, ``sample_weight``, ``steps_per_epoch``, ``validation_freq``,
        ``validation_steps`` and ``shuffle="batch"`` (the message says what to do instead);
        ``validation_batch_size`` is the batch size of a DataLoader passed as ``val``.
        """
        _required("Trainer.fit", "train", train, unknown, _KERAS_FIT)
        epochs = _args.integer("Trainer.fit", "epochs", epochs, low=0)
        initial_epoch = _args.integer("Trainer.fit", "initial_epoch", initial_epoch, low=0)
        try:
            shuffle = _args.flag("Trainer.fit", "shuffle", shuffle)
        except TypeError as e:
            if not (isinstance(shuffle, str) and shuffle == "batch"):
                raise
            raise type(e)(f"{e}; Keras' shuffle='batch' (shuffling in batch-sized chunks, for HDF5 "
                          f"data) is not one of gpunet's: shuffle=True shuffles the samples") from None
        batch_size = _args.integer("Trainer.fit", "batch_size", batch_size, low=1)
        seed = _args.integer("Trainer.fit", "seed", seed, low=0, none=True)
        progress = _args.flag("Trainer.fit", "progress", progress)
        if isinstance(train, DataLoader):
            _check_loader_settings(train, batch_size, shuffle, seed)
        if initial_epoch > epochs:
            raise ValueError(f"Trainer.fit: initial_epoch={initial_epoch} is past epochs={epochs}; epochs "
                             f"is the epoch to stop at, not the number of epochs to run (as in Keras): "
                             f"for {epochs} more epoch{'s' * (epochs != 1)} pass epochs={initial_epoch + epochs}")
        callbacks = _check_callbacks(callbacks, "Trainer.fit")
        self._check_model_device("Trainer.fit")
        dtype = self.model.dtype
        self._graph = self._graph_warm = None    # captured again: the arrays may have changed

        drawn = None
        if seed is None and self.comm is not None and self.comm.size > 1 and not isinstance(train, DataLoader):
            # seed=None: every process shuffles with rank 0's draw, agreed on here, before the
            # checks below, which may fail on one process alone (the loader would agree on it in
            # a collective among them, leaving the others waiting there)
            drawn = seed = int(self.comm.bcast_object(int(numpy.random.SeedSequence().entropy), root=0))

        def data():         # the data checks: on one process of several, they may fail alone
            loader = _as_loader(train, batch_size, shuffle, seed, dtype, "Trainer.fit", "train",
                                self.device, self.comm)
            if drawn is not None:
                loader._drawn_seed = drawn      # drawn all the same: a resume on it warns
            shared = self._share(val)
            vloader = None if shared is None else _as_loader(shared, max(batch_size, 256), False, 0, dtype,
                                                             "Trainer.fit", "val", self.device)
            _check_monitors(callbacks, self.metrics, vloader is not None)
            output = self._first_output(loader)     # one sample's, made once for the checks
            self._check_loss_input(output)
            self._check_class_labels(loader, "Trainer.fit", "train", output=output)
            self._check_target_range(loader, "Trainer.fit", "train")
            self._check_batches_of_one(loader)
            self._warn_regression_accuracy(loader.y)
            if vloader is not None:
                self._check_label_dtype(vloader, "Trainer.fit", "val")
                self._check_val_fits(vloader)
                self._check_class_labels(vloader, "Trainer.fit", "val", output=output)
                self._check_target_range(vloader, "Trainer.fit", "val")
            return loader, vloader
        loader, vloader = self._agree("Trainer.fit", "the checks of the data before training "
                                      "(train, val and val's first sample through the model)", data)
        _warn_stale_optimizer(self.model, self.optimizer)
        if initial_epoch:
            _warn_unseeded_resume(loader, initial_epoch)
        _warn_resume_from_epoch_0(self, initial_epoch)
        progress = progress and (self.comm is None or self.comm.rank == 0)
        first = _first_layer(self.model)
        first_input_grad = getattr(first, "input_grad", None)
        plateau = (_plateau_monitor(self.scheduler, self.metrics, vloader is not None)
                   if isinstance(self.scheduler, ReduceLROnPlateau) else None)
        if initial_epoch:
            # a run resumed (gpunet.load, then fit(initial_epoch=k)) on a fresh Trainer, or on
            # this one after an interrupted fit whose partial epoch's steps it counted: the k
            # epochs before took k * len(loader) steps, as the resume contract keeps the data
            # and the (global) batch size (a fit continuing this Trainer's is there already)
            self.global_step = initial_epoch * len(loader)
        self._callbacks = callbacks
        self.history = History()
        self.stop_training = False
        warned_val = False
        def begin():        # a callback's check (a checkpoint path) may fail on one process
            for cb in self._callbacks:
                cb.on_train_begin(self)
        self._agree("Trainer.fit", "the callbacks' on_train_begin", begin)
        prior = _hold_interrupts(self)
        try:
            if first_input_grad is not None:
                first.input_grad = False   # nothing consumes the gradient w.r.t. the data
            # the shuffle: epoch k takes the order of (seed, k); a fit without initial_epoch goes
            # on from the orders of the fits before it, as Keras and a PyTorch loop reshuffle
            order_base = 0 if initial_epoch else self._next_order
            for epoch in range(initial_epoch, epochs):
                self.epoch = epoch
                logs = self._train_epoch(loader, epoch, epochs, progress, order_base + epoch)
                self._next_order = order_base + epoch + 1
                logs["learning_rate"] = self._step_lr
                if self.scheduler is not None and self.scheduler_interval == "epoch" and plateau is None:
                    self.scheduler.step()
                if vloader is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate(vloader)[0].items()})
                    if not (math.isfinite(logs["val_loss"]) or warned_val):
                        warned_val = True       # once per fit: the History holds every epoch's
                        note = _nonfinite_note(vloader)
                        warnings.warn(
                            f"Trainer.fit: val_loss is {logs['val_loss']} at epoch {epoch + 1} while "
                            f"the training loss is finite: "
                            + (f"the validation data {note}" if note else "the validation data is "
                               "finite, so the model's outputs overflow on it")
                            + " (EarlyStopping, ModelCheckpoint and ReduceLROnPlateau never count such "
                            "an epoch as an improvement)", RuntimeWarning, stacklevel=2)
                if plateau is not None:     # after validation, before the callbacks (a checkpoint)
                    self.scheduler.step(logs[plateau])
                checked = set()
                for cb in self._callbacks:
                    cb.on_epoch_end(self, epoch, logs)
                    _check_logs(logs, cb, checked)
                if self.comm is not None:
                    self.stop_training = bool(self.comm.bcast_object(bool(self.stop_training)))
                self.history.append(epoch, logs)
                if progress and vloader is not None:
                    tqdm.write("  " + "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k.startswith("val_")))
                if self.stop_training:
                    break
        finally:
            if prior is not None:
                signal.signal(signal.SIGINT, prior)
            if first_input_grad is not None:
                first.input_grad = first_input_grad
            callbacks, self._callbacks = self._callbacks, []
            _train_end(callbacks, self)
        return self.history

    def _one_output(self, loader):
        """The model's output for the first sample of ``loader``'s data, in eval mode (the
        mode is restored): what the checks before training look at."""
        was = self.model.training
        self.model.eval()
        try:
            return self._forward(self._to_model(loader.X[:1]))
        finally:
            self.model.train(was)

    def _first_output(self, loader):
        """``output()``: :meth:`_one_output` of ``loader``, run at the first call only and
        kept, so that the checks before training that need it share one forward."""
        kept = []

        def output():
            if not kept:
                kept.append(self._one_output(loader))
            return kept[0]
        return output

    def _check_loss_input(self, output):
        """The loss's first-call checks (``Loss._check_input``: a prediction that looks
        like the output of the activation the loss applies itself, or one column of logits)
        on ``output()``, one sample's, before training: on a device they read it (one sync),
        which the first step would otherwise do."""
        if not getattr(self.loss_fn, "_checked_input", True):
            self.loss_fn._check_input(output())

    def _check_class_labels(self, loader, who, name, when=" before training", output=None):
        """For a ``SoftmaxCrossEntropy``: every integer class label of ``loader``'s data
        (one pass over ``y``) against the model's number of outputs (one sample through the
        model in eval mode, as ``_check_val_fits`` runs one), so that a label outside
        ``[0, C)`` (other than ``ignore_index``) raises ``ValueError`` naming its row of the
        data before anything trains. Without it the loss names the row of a batch (a
        shuffled one, at that), and on a GPU only at the next read of the losses."""
        f, y = self.loss_fn, loader.y
        if not isinstance(f, SoftmaxCrossEntropy) or y is None:
            return
        self._check_label_dtype(loader, who, name)
        if y.ndim == 2:                     # float probability targets (_check_label_dtype)
            out = output() if output is not None else self._one_output(loader)
            if out.ndim == 2 and int(y.shape[1]) != int(out.shape[1]):
                err = ValueError(f"{who}: {name}'s probability targets (y of shape {tuple(y.shape)}) have "
                                 f"{int(y.shape[1])} columns, but the model gives {int(out.shape[1])} outputs "
                                 f"(one per class); build the targets with {int(out.shape[1])} columns, or "
                                 f"give the last layer {int(y.shape[1])} outputs")
                err.label_rows = True
                raise err
            return
        if y.ndim != 1 or y.dtype.kind not in "iu":
            return
        out = output() if output is not None else self._one_output(loader)   # for the class count
        if out.ndim != 2:
            return                          # the loss names that at the first step
        xp = get_array_module(y)
        logits = xp.broadcast_to(xp.zeros((), out.dtype), (int(y.shape[0]), int(out.shape[1])))
        try:
            check_labels("softmax_cross_entropy", logits, y, f.ignore_index)
        except ValueError as e:
            whose = (f"this process's share of {name}" if name != "train" and self.comm is not None
                     and self.comm.size > 1 else f"{name}'s")     # _share: contiguous rows
            err = ValueError(f"{who}: {name}'s labels do not fit the model's {int(out.shape[1])} outputs "
                             f"(all {int(y.shape[0])} checked{when}; the row is {whose}): {e}")
            err.label_rows = True           # evaluate tells it from an error of the check's forward
            raise err from None

    def _check_label_dtype(self, loader, who, name):
        """For a ``SoftmaxCrossEntropy``: labels that no number of classes makes right raise
        ``ValueError`` with ``who``, ``name`` and the data's shape, before any pass (else the
        loss names the shape of a batch, or of ``_check_val_fits``' one sample): 1-D labels
        that are not integers (float, bool), 2-D ones that are not floats (Keras' ``(N, 1)``
        sparse labels, integer one-hot rows), and any other number of dimensions."""
        f, y = self.loss_fn, loader.y
        if not isinstance(f, SoftmaxCrossEntropy) or y is None:
            return
        n, kind = int(y.shape[0]) if y.ndim else 0, y.dtype.kind
        if y.ndim == 1 and kind not in "iu":
            xp = get_array_module(y)
            try:
                check_labels("softmax_cross_entropy", xp.broadcast_to(xp.zeros((), "float32"), (n, 1)),
                             y, f.ignore_index)
            except ValueError as e:
                err = ValueError(f"{who}: {name}'s labels (y of shape {tuple(y.shape)}): {e}")
                err.label_rows = True       # evaluate raises it in place of its pass's error
                raise err from None
            return
        if y.ndim == 1 or (y.ndim == 2 and kind == "f"):
            return
        hint = ("" if y.ndim != 2 or kind not in "iub" else
                "; class indices go as a 1-D array: y.ravel()" if y.shape[1] == 1 else
                "; one-hot rows go as floats (y.astype(numpy.float32)) or as class indices (y.argmax(1))")
        err = ValueError(f"{who}: {name}'s labels (y of shape {tuple(y.shape)}, dtype {y.dtype.name}): "
                         f"SoftmaxCrossEntropy takes integer class labels of shape ({n},) or float "
                         f"probability targets of shape ({n}, C){hint}")
        err.label_rows = True
        raise err

    def _check_batches_of_one(self, loader):
        """Before training: an epoch with a batch of one sample (the last, ``N % batch_size
        == 1`` without ``drop_last``; every one with ``batch_size=1``) stopped at that batch,
        after the epoch's other steps had trained, when a BatchNorm of the model saw one value
        per channel there (its training mode cannot estimate a variance; PyTorch refuses it
        too). Only then (such a batch, and a BatchNorm in the model), one sample goes through
        the model in eval mode with each BatchNorm's input shape recorded, and a BatchNorm
        that would get one value per channel raises ``ValueError`` naming it, the batch and
        the ways out. (N, C, H, W) inputs with more than one pixel per channel pass. Data
        sharded over processes (``comm``) is left to the layer's own check."""
        n, bs = loader.num_samples, loader.batch_size
        if (self.comm is not None and self.comm.size > 1) or getattr(loader, "comm", None) is not None:
            return
        if not (bs == 1 or (n % bs == 1 and not loader.drop_last)):
            return
        from .layers.batchnorm import BatchNorm
        norms = [(path, m) for path, m in _named_layers(self.model) if isinstance(m, BatchNorm)]
        if not norms:
            return
        seen, own = {}, []
        for path, bn in norms:
            if id(bn) in seen:
                continue
            seen[id(bn)] = None
            had = vars(bn).get("forward")

            def forward(x, _f=bn.forward, _k=id(bn)):
                seen[_k] = tuple(x.shape)
                return _f(x)
            vars(bn)["forward"] = forward
            own.append((bn, had))
        try:
            self._one_output(loader)
        finally:
            for bn, had in own:
                if had is None:
                    vars(bn).pop("forward", None)
                else:
                    vars(bn)["forward"] = had
        for path, bn in norms:
            shape = seen.get(id(bn))
            if shape is None or len(shape) < 2 or math.prod(shape[2:]) > 1:
                continue
            which = (f"batch_size={bs}: every batch holds one sample" if bs == 1 else
                     f"its last batch holds one sample ({n} samples, batch_size={bs})")
            raise ValueError(
                f"Trainer.fit: train would stop at a batch of one sample, after the epoch's other steps "
                f"trained: {which}, and {type(bn).__name__} {path!r} gets inputs of shape "
                f"(1, {', '.join(map(str, shape[1:]))}) there, one value per channel, from which "
                f"training cannot estimate a variance; pass train as DataLoader(X, y, batch_size={bs}, "
                f"drop_last=True) to drop that batch, or a batch_size that leaves no batch of one")

    def _check_target_range(self, loader, who, name):
        """Targets where the loss has no minimum, refused before training with a
        ``ValueError`` naming the first such row (one pass over ``y``): for
        ``BCEWithLogits`` targets outside ``[0, 1]`` (-1/+1 labels trained to a loss of -307
        in 4 epochs, without a word), for ``SoftmaxCrossEntropy`` negative probability
        targets (-1/+1 one-hot rows)."""
        f, y = self.loss_fn, loader.y
        if y is None or y.dtype.kind not in "iuf":
            return
        if isinstance(f, BCEWithLogits):
            outside = (y < 0) | (y > 1)
        elif isinstance(f, SoftmaxCrossEntropy) and y.ndim == 2 and y.dtype.kind == "f":
            outside = y < 0
        else:
            return
        if not bool(outside.any()):
            return
        xp = get_array_module(y)
        row = int(xp.argmax(outside.reshape(int(y.shape[0]), -1).any(axis=1)))
        lo, hi = float(y.min()), float(y.max())
        if isinstance(f, BCEWithLogits):
            raise ValueError(f"{who}: BCEWithLogits takes targets in [0, 1] (0/1 labels or probabilities), "
                             f"but {name}'s run from {lo:g} to {hi:g} (row {row}: {to_numpy(y[row]).tolist()}), "
                             f"where the loss has no minimum; -1/+1 labels become 0/1 with (y + 1) / 2, and "
                             f"integer labels of more than two classes go with SoftmaxCrossEntropy")
        raise ValueError(f"{who}: SoftmaxCrossEntropy takes probability targets of at least 0 (one-hot rows, "
                         f"or probabilities), but {name}'s run from {lo:g} to {hi:g} (row {row}), where the "
                         f"loss has no minimum; -1/+1 one-hot rows become 0/1 with (y + 1) / 2, or pass "
                         f"the class indices y.argmax(1)")

    def _warn_regression_accuracy(self, y, who="Trainer.fit", name="train", stacklevel=5):
        """Before training (and in ``evaluate``), with the ``accuracy`` metric and ``MSELoss``:
        targets ``y`` outside ``[0, 1]`` (a regression's; one pass over ``y``) make that
        accuracy (outputs and targets thresholded at 0.5, or their argmax) mean nothing: a
        ``RuntimeWarning`` says so (house prices scored 'accuracy 1.0' at a loss of 4.7e10)."""
        if (not (self.metrics and isinstance(self.loss_fn, MSELoss)) or y is None or y.dtype.kind not in "iuf"
                or y.size == 0):
            return
        lo, hi = float(y.min()), float(y.max())
        if 0.0 <= lo and hi <= 1.0:
            return
        warnings.warn(f"{who}: the accuracy metric scores outputs and targets as classes (above "
                      f"0.5, or the argmax over columns), but {name}'s targets run from {lo:g} to {hi:g}, "
                      f"as a regression's do, and its accuracy means nothing there; build the Trainer "
                      f"with metrics=() (Keras' and PyTorch's default: no metric)", RuntimeWarning,
                      stacklevel=stacklevel)    # the caller of fit (through data() and _agree) or evaluate

    def _check_val_fits(self, vloader):
        """The first validation sample through the model and the loss (``evaluate``: eval
        mode, nothing a training step reads changes) before the first epoch: validation
        data of the wrong shape, dtype or labels fails now, naming ``val``, not after an
        epoch of training. A shape check alone would not do: a model ending in global
        pooling takes images of any size."""
        try:
            self._evaluate_pass(DataLoader(vloader.X[:1], vloader.y[:1], batch_size=1))
        except (ValueError, TypeError) as e:
            kind = ValueError if isinstance(e, ValueError) else TypeError
            raise kind(f"Trainer.fit: val does not fit the model and loss (checked on its first "
                       f"sample, before training): {e}") from e

    def _train_epoch(self, loader, epoch, epochs, progress, order_epoch):
        self.model.train()
        for cb in self._callbacks:
            cb.on_epoch_begin(self, epoch)
        loader.set_epoch(order_epoch)
        on_host = self.device == "cpu"
        rec = self._record(loader)
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, leave=True, dynamic_ncols=True)
        t0 = time.perf_counter()
        last_refresh = _clock()
        seen = 0
        try:
            self._halt_nonfinite = on_host
            for step, (xb, yb) in enumerate(loader):
                xb, yb = self._to_model(xb), self._to_model(yb)
                if self.cuda_graph:
                    loss, out, static = self._graph_step(xb, yb)
                    value = rec.add(loss.copy() if static else loss, out, yb, *self._loss_terms())
                else:
                    try:
                        loss, out = self.train_step(xb, yb)
                    except _NonFiniteLoss as halt:      # CPU: before its backward and update
                        loss, out = halt.loss, halt.out
                        self._halted_out = out
                    value = rec.add(loss, out, yb, *self._loss_terms())
                seen += int(xb.shape[0])
                if on_host:      # reading is free on the CPU: check every step, as it happens
                    rec.read()
                    self._check(rec, epoch, loader)
                    value = float(value)
                for cb in self._callbacks:
                    cb.on_batch_end(self, step, {"loss": value})
                if progress:
                    bar.update(1)
                    now = _clock()
                    if now - last_refresh >= PROGRESS_REFRESH_SECONDS or step == len(loader) - 1:
                        last_refresh = now
                        rec.read()
                        self._check(rec, epoch, loader)
                        post = {"loss": f"{rec.total / max(rec.counted, 1):.4f}"}
                        if rec.metrics:
                            post["acc"] = f"{rec.correct / max(rec.counted, 1):.4f}"
                        post["samples/s"] = f"{seen / max(time.perf_counter() - t0, 1e-9):,.0f}"
                        bar.set_postfix(post)
            rec.read()
            self._check(rec, epoch, loader)
        finally:
            self._halt_nonfinite = False
            bar.close()
        synchronize()
        if self.scaler is not None and self.device != "cpu":   # one read per epoch, not per step
            self.scaler._check_alive(f" (found at the end of epoch {epoch + 1})")
        self.last_epoch_seconds = time.perf_counter() - t0
        self.last_epoch_samples = rec.seen
        return self._logs(rec)

    def _logs(self, rec):
        """Mean loss (and accuracy) of a pass; with ``comm``, over every process's samples
        (the sums all-reduced, then rank 0's result broadcast: identical everywhere)."""
        total, correct, counted = float(rec.total), float(rec.correct), float(rec.counted)
        if self.comm is not None and self.comm.size > 1:
            sums = self.comm.allreduce(numpy.array([total, correct, counted]))
            total, correct, counted = (float(v) for v in self.comm.broadcast(sums))
        logs = {"loss": total / max(counted, 1.0)}
        if rec.metrics:         # as the pass began: a metric switched on during it counts from the next
            logs["accuracy"] = correct / max(counted, 1.0)
        return logs

    def _agree(self, who, what, run):
        """``run()`` on this process; with ``comm`` (more than one process), the processes
        then tell each other whether it raised (one all-reduce of a flag per rank), so
        that an error on one of them does not leave the others waiting for it in the next
        collective: the failing process raises its own error, every other one a
        ``RuntimeError`` naming the failing rank(s)."""
        comm = self.comm
        if comm is None or comm.size == 1:
            return run()
        failed = numpy.zeros(comm.size)
        try:
            out = run()
        except Exception:
            failed[comm.rank] = 1.0
            comm.allreduce(failed)          # the others learn it; this error stays this process's
            raise
        ranks = [r for r, f in enumerate(comm.allreduce(failed)) if f]
        if ranks:
            raise RuntimeError(f"{who}: {what} failed on rank{'s' * (len(ranks) > 1)} "
                               f"{', '.join(map(str, ranks))} of {comm.size} (that process raised the "
                               f"error); rank {comm.rank} stops too instead of waiting for it in the "
                               f"next collective")
        return out

    def _share(self, data):
        """This process's contiguous share of an ``(X, y)`` pair (``comm``); anything else
        as it is."""
        if self.comm is None or self.comm.size == 1 or not (isinstance(data, (tuple, list))
                                                            and len(data) == 2):
            return data
        X, y = data
        n, r, size = len(X), self.comm.rank, self.comm.size
        if n < size:
            raise ValueError(f"Trainer: {n} evaluation samples cannot be shared by {size} processes")
        lo, hi = r * n // size, (r + 1) * n // size
        return X[lo:hi], (None if y is None else y[lo:hi])

    def _check(self, rec, epoch, loader):
        """Raise for the first step read whose loss was not finite: the softmax-CE kernel's
        ``ValueError`` when a bad label made it so, else ``FloatingPointError``, which names
        the rows of ``loader``'s data that hold NaN or inf when there are any."""
        if rec.bad is None:
            return
        step, value = rec.bad
        where = f"epoch {epoch + 1}, step {step + 1}"
        if self.device != "cpu":
            from .cuda.softmax_xent import raise_label_error
            try:
                raise_label_error(rec.rows)
            except ValueError as e:
                raise ValueError(f"{e}; at {where}") from None
        note = _nonfinite_note(loader)
        # on the CPU the step stopped before its backward and update (_halt_if_nonfinite)
        restores = any(isinstance(cb, EarlyStopping) and cb.restore_best and cb._best_state is not None
                       for cb in self._callbacks)
        kept = ("; that step's update was not applied: " + (
                    "EarlyStopping(restore_best=True) puts back its best epoch's weights" if restores else
                    "the model holds the weights that gave this loss")
                + _divergence_note(self.model, self._halted_out, self.precision == "fp16")
                if self.device == "cpu" else
                f"; read at step {rec.done} (on a GPU the losses are read in bulk): the updates of the "
                f"steps up to it were applied" + _divergence_note(self.model, None))
        self._halted_out = None
        if note:
            raise FloatingPointError(f"non-finite loss {value} at {where}: the training data {note}; "
                                     f"drop or fill those rows{kept}")
        raise FloatingPointError(
            f"non-finite loss {value} at {where} "
            f"(lower the learning rate, clip gradients, or check the inputs){kept}")

    def _record(self, loader):
        """A ``_Record`` for one pass over ``loader`` on the model's device."""
        p = next(iter(self.model.parameters()), None)
        xp = numpy if p is None else get_array_module(p.data)
        return _Record(xp, len(loader), loader.num_samples, bool(self.metrics),
                       ignore=getattr(self.loss_fn, "ignore_index", None))

    def _loss_terms(self):
        """``(mean, threshold, ignore, elementwise)`` of the loss as it is now, for
        ``_Record.add``: read at every step, since ``loss_fn`` (or its
        ``reduction``/``ignore_index``) may be assigned from a callback in the middle of a pass."""
        f = self._loss_fn
        bce = isinstance(f, BCEWithLogits)
        return (getattr(f, "reduction", "mean") == "mean", 0.0 if bce else 0.5,
                getattr(f, "ignore_index", None), bce)

    def _to_model(self, a):
        if a is None:
            return None
        if self.device == "cpu":
            return a if isinstance(a, numpy.ndarray) else to_numpy(a)
        if device_of(a) == self.device:     # resident batches: no device lookup per step
            return a
        return to_device(a, self.device)

    def _check_model_device(self, who):
        """The model must still be on the Trainer's device: moved after ``Trainer(...)``
        (``model.to("cuda")``), its first layer would reject the batches the Trainer puts on
        the old device, with an error naming the layer and ``to_device``."""
        now = self.model.device
        if now != self._device:
            raise ValueError(f"{who}: the model is on {now!r}, but this Trainer was made for it on "
                             f"{self._device!r} (the model was moved after Trainer(...)); make a new "
                             f"Trainer for the moved model, or pass device={now!r} to it, or move the "
                             f"model back with model.to({self._device!r})")

    # -- inference ---------------------------------------------------------------------------
    def evaluate(self, data=_REQUIRED, batch_size=256, **unknown) -> dict:
        """Mean loss (and accuracy) over ``data`` in eval mode; the mode is restored after.

        ``data``: an ``(X, y)`` pair or a DataLoader; empty data raises ``ValueError``. The
        loss is the per-sample mean, as in ``fit``. On a GPU the per-batch losses and
        counts stay on the device and are read once, at the end (one host sync); a bad
        label raises the loss's ``ValueError`` then, naming the label's row of ``data`` (a pass
        that fails on a label checks all of them then). A loss that is not finite is returned
        with a ``RuntimeWarning`` naming the rows of the data that hold NaN or inf (or saying
        there are none: the model's outputs overflow). With ``MSELoss`` and the accuracy
        metric, NumPy targets outside [0, 1] warn (``RuntimeWarning``) that the accuracy
        means nothing for a regression, as ``fit`` does. Under ``comm``, an error on one process
        (its share of the data does not fit) is raised there, and every other process
        raises a ``RuntimeError`` naming that rank instead of waiting for it in the
        all-reduce of the logs. Keras' ``evaluate(X, y)`` and ``x=``/``y=`` raise
        ``TypeError`` naming ``evaluate((X, y))``, as Keras' other keywords name gpunet's way."""
        _required("Trainer.evaluate", "data", data, unknown, _KERAS_EVALUATE)
        if not isinstance(data, (DataLoader, tuple, list)):    # before batch_size: evaluate(X, y)
            raise _not_data(data, "Trainer.evaluate", "data")
        batch_size = _args.integer("Trainer.evaluate", "batch_size", batch_size, low=1)
        self._check_model_device("Trainer.evaluate")
        y = data.y if isinstance(data, DataLoader) else data[1] if len(data) == 2 else None
        if isinstance(y, numpy.ndarray):    # host labels only: evaluate reads the device once
            self._warn_regression_accuracy(y, "Trainer.evaluate", "data", stacklevel=3)
        logs, loader = self._evaluate(data, batch_size, rows=True)
        if not math.isfinite(logs["loss"]):
            note = _nonfinite_note(loader)
            warnings.warn(f"Trainer.evaluate: the loss is {logs['loss']}: "
                          + (f"the data {note}" if note else "the data is finite, so the model's "
                             "outputs overflow on it"), RuntimeWarning, stacklevel=2)
        return logs

    def _evaluate(self, data, batch_size=256, rows=False):
        """``evaluate``'s logs, without its warning, and the loader of this process's data.
        ``rows``: a loss error of the pass is checked against every label of the data
        (``_check_class_labels``), so that a bad label is named by its row of the data,
        not of its batch (the check runs only then: nothing is added to a good pass)."""
        loaders = []

        def local():
            loaders.append(_as_loader(self._share(data), batch_size, False, 0, self.model.dtype,
                                      "Trainer.evaluate", "data", self.device))
            try:
                return self._evaluate_pass(loaders[0])
            except ValueError:
                if rows:
                    try:
                        self._check_class_labels(loaders[0], "Trainer.evaluate", "data", when="")
                    except Exception as e:
                        if getattr(e, "label_rows", False):
                            raise
                        # else the labels are not the cause: the pass's own error follows
                raise
        return self._logs(self._agree("Trainer.evaluate", "the evaluation", local)), loaders[0]

    def _evaluate_pass(self, loader):
        """``evaluate``'s pass over ``loader`` on this process (no collective): its
        ``_Record``, read."""
        was = self.model.training
        self.model.eval()
        rec = self._record(loader)
        try:
            for xb, yb in loader:
                xb, yb = self._to_model(xb), self._to_model(yb)
                out = self._forward(xb)
                loss = _loss_array(self.loss_fn, self.loss_fn(out, yb))
                self.loss_fn._grad = None
                rec.add(loss, out, yb, *self._loss_terms())
            rec.read()
        finally:
            self.model.train(was)
        if rec.bad is not None and self.device != "cpu":
            from .cuda.softmax_xent import raise_label_error
            raise_label_error(rec.rows)
        return rec

    def predict(self, X=_REQUIRED, batch_size=256, **unknown):
        """Model outputs for ``X`` in eval mode, in batches of ``batch_size``, concatenated,
        as a NumPy array.

        ``X``: a NumPy or CuPy array (kept in its dtype: a float64 array for a float32
        model raises the layer's dtype error), or an array-like — a list, nested lists —
        which is converted with ``numpy.asarray`` and cast to the model's dtype, as Keras
        does. Anything else raises ``TypeError``; an empty ``X`` raises ``ValueError``.
        Keras' keywords (``x=``, ``verbose=``) raise ``TypeError`` naming gpunet's way.
        The outputs can differ in the last bits with ``batch_size`` (the BLAS picks its
        kernel by the number of rows); the same ``batch_size`` gives the same bits.
        """
        _required("Trainer.predict", "X", X, unknown, _KERAS_PREDICT)
        X = _as_input(X, self.model.dtype, "Trainer.predict")
        _check_nonempty(X, "Trainer.predict", "X")
        batch_size = _args.integer("Trainer.predict", "batch_size", batch_size, low=1)
        self._check_model_device("Trainer.predict")
        was = self.model.training
        self.model.eval()
        n, result = int(X.shape[0]), None
        try:
            for start in range(0, n, batch_size):
                out = to_numpy(self._forward(self._to_model(X[start:start + batch_size])))
                rows = min(batch_size, n - start)
                if result is None:      # the outputs go straight into one array: not held twice
                    if out.ndim == 0 or int(out.shape[0]) != rows:
                        raise ValueError(f"Trainer.predict: expected the model's output with one row per "
                                         f"sample ({rows} for X[{start}:{start + rows}]), got shape "
                                         f"{tuple(out.shape)}")
                    result = numpy.empty((n,) + out.shape[1:], out.dtype)
                elif out.shape != (rows,) + result.shape[1:] or out.dtype != result.dtype:
                    raise ValueError(f"Trainer.predict: the model's output for X[{start}:{start + rows}] "
                                     f"has shape {tuple(out.shape)} and dtype {out.dtype}, the first batch's "
                                     f"{tuple(result.shape[1:])} per sample and dtype {result.dtype}")
                result[start:start + rows] = out
        finally:
            self.model.train(was)
        return result
