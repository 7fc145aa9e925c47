"""CUDA graphs: capture a whole training step once, replay it with one launch.

A step of a small model is dozens of short kernels, each launched from Python; a CUDA graph
records them once (``cupy.cuda.Stream.begin_capture`` / ``end_capture``) and replays all
of them with a single ``cudaGraphLaunch`` (``cupy.cuda.Graph.launch``): no Python, no
per-kernel launch cost. What a graph replays is frozen at capture: the kernels, their
arguments (scalars included) and every buffer address. So the step must

* read its batch from *static* input buffers, allocated before capture, into which each
  batch is copied (``static_x[...] = xb``);
* keep its state in place: parameters, optimizer state, and everything else the step
  reads must be the same arrays at every replay (gpunet's optimizers keep lr and step
  counts in device buffers for this, and the loss scaler its scale);
* make no host sync (reading a loss, ``bool()`` of a device value): CUDA refuses them
  during capture, and so does the sim.

Arrays the step allocates (activations, gradients, the loss) come from memory reserved
for the graph (CuPy: the pool of the capture stream, which nothing else allocates from;
the sim: buffers the capture keeps); the arrays ``capture`` returns are overwritten by
each replay, like PyTorch's static outputs.

Usage in a hand-written loop (``Trainer(..., cuda_graph=True)`` does all of this)::

    static_x, static_y = xp.empty_like(x0), xp.empty_like(y0)   # full-size batches
    def step():
        loss = loss_fn(model(static_x), static_y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        return loss
    static_x[...] = x0; static_y[...] = y0
    step()                                    # one eager step first: kernels, tables, state
    g = gpunet.cuda.CUDAGraph(device)
    static_x[...] = x1; static_y[...] = y1
    loss = g.capture(step, model=model)       # records the step and runs it once
    for xb, yb in batches:                    # same shapes
        static_x[...] = xb; static_y[...] = yb
        g.replay()                            # loss now holds this step's loss
        losses.append(loss.copy())

A batch of another shape (the last, partial one) runs eagerly, outside the graph.

State that changes every step lives on the device and is updated there: ``Dropout``
keeps its draw counter in a device buffer that a single-thread launch advances (each
replay draws the mask an eager step with that counter draws; reading ``counter`` waits for
the device, setting it writes in place), ``BatchNorm`` updates its running statistics in
place (``updated_in_place``: a replay refuses once they were replaced).

Limits (refused or caught): a layer that passes a new host value to a kernel each step
cannot be replayed (the sim catches it); a parameter
that gains or loses its gradient needs a new capture, as does replacing the model's or the
optimizer's arrays (``model.to``, ``load_state_dict``); callbacks that run Python per step
(``on_backward_end``) run at capture only. Only ``lr`` may change between replays (written
to the device before each); other hyper-parameters are frozen. Past 64 parameter tensors
of a dtype, the optimizer's and clipping's tables hold gradient addresses: the graph uses
its own copy of each such table, patched in the graph (one small fill per such gradient),
so any number of parameters can be captured. The graph keeps alive every array it reads
that the host might drop (``CUDAGraph.keep``).

On the sim device a graph is checked rather than trusted: replay re-runs the captured
Python with every launch, kernel argument (bytes), operand address and allocation compared
with the capture, allocations served from the captured buffers, and raises
``gpunet.sim._counters.GraphReplayError`` naming the first difference: a step that
reallocates or changes a host value fails loudly instead of silently replaying stale
addresses. It counts as one launch (``cudaGraphLaunch``) and ``graph_launches``.
"""
from __future__ import annotations

import weakref

_capture = None

#: Attributes in which layers keep a buffer from one training step for the next to reuse
#: (Conv2D's im2col columns).
STEP_BUFFERS = ("_cols",)


def release_step_buffers(model):
    """Drop the buffers that ``model``'s layers keep from one step for the next to reuse,
    so that a capture allocates its own (``CUDAGraph.capture(..., model=)`` does it): a
    buffer from before the capture would be written by every replay even after the layer
    let go of it (memory the host may hand out again). The sim catches the mistake (the
    replay's allocations differ from the capture's)."""
    for layer in model.modules():
        for name in STEP_BUFFERS:
            if getattr(layer, name, None) is not None:
                setattr(layer, name, None)


def capturing():
    """The ``CUDAGraph`` capturing (or, on the sim, replaying) now, or None."""
    return _capture


class _SameArrays:
    """A ``before_replay`` hook: the arrays ``owner.<names>`` that the graph updates in
    place must still be the owner's (not replaced by ``load_state_dict`` or ``to``).
    Hooks that check the same owner and names are equal (registered once)."""

    def __init__(self, owner, names):
        self.owner, self.names = owner, tuple(names)
        self.arrays = tuple(getattr(owner, n) for n in self.names)

    def __eq__(self, other):
        return (isinstance(other, _SameArrays) and other.owner is self.owner
                and other.names == self.names)

    __hash__ = None

    def __call__(self):
        for n, a in zip(self.names, self.arrays):
            if getattr(self.owner, n) is not a:
                raise RuntimeError(f"{type(self.owner).__name__}: its {n} was replaced since the "
                                   "CUDA graph was captured (load_state_dict, model.to); capture "
                                   "the step again")


def updated_in_place(owner, *names):
    """Under capture, note that the step updates the arrays ``owner.<names>`` in place: the
    graph keeps them alive and refuses to replay once one was replaced. No-op otherwise."""
    cap = _capture
    if cap is None:
        return
    hook = _SameArrays(owner, names)
    if hook in cap._hooks:          # the sim's replay re-runs the step: noted already
        return
    cap.before_replay(hook)
    for a in hook.arrays:
        cap.keep(a)


def _weak_replay(cap):
    """``cap._replay_on_sim`` without holding ``cap`` (see ``CUDAGraph.capture``)."""
    ref = weakref.ref(cap)

    def replay():
        owner = ref()
        if owner is None:
            raise RuntimeError("gpunet.sim: the CUDAGraph that captured this graph is gone; "
                               "replay through CUDAGraph.replay")
        owner._replay_on_sim()
    return replay


class CUDAGraph:
    """One captured step on ``device`` (``"cuda"``, ``"cuda:N"`` or ``"sim"``):
    ``capture(fn, *args, model=None, **kwargs)`` records ``fn``'s device work as a graph,
    runs it once and returns ``fn``'s result (its arrays are the graph's static outputs);
    with ``model``, its layers' step-to-step buffers are released first
    (``release_step_buffers``). ``replay()`` runs it again with one launch. See the module
    docstring."""

    def __init__(self, device="cuda"):
        from ..backend import _parse
        kind, index = _parse(device)
        if kind not in ("cuda", "sim"):
            raise ValueError(f"CUDAGraph: expected a 'cuda' or 'sim' device, got {device!r}")
        self.device = device
        self._kind, self._index = kind, index
        self._graph = None
        self._hooks = []
        self._keep = {}            # id -> object (an object kept is alive, so its id is its own)
        self._run = None

    def before_replay(self, hook):
        """Call ``hook()`` before every replay, outside the graph (an optimizer writes its
        current lr to the device there), and before the graph's first run, the one
        ``capture`` makes: on CUDA right before that launch; on the sim, whose capture
        runs the work as it records it, at once, outside the recording (the hook is
        registered before the captured work that reads what it writes)."""
        if hook not in self._hooks:
            self._hooks.append(hook)
            if self._kind == "sim" and self._graph is None:
                from ..sim import _counters
                with _counters.outside_capture():
                    hook()

    def keep(self, obj):
        """Keep ``obj`` (an array the graph reads) alive as long as the graph; once each.
        At capture only: the sim's replays re-run the captured step, and with it every
        ``keep``, on the captured buffers, which the graph holds already (an object made
        anew at each replay, such as the optimizer table patched for gradients past the
        64 kernel arguments, was kept once per replay: one more per step, for good)."""
        if self._graph is None:
            self._keep.setdefault(id(obj), obj)

    def _modules(self):
        from ..backend import require_cuda, require_sim
        if self._kind == "sim":
            return require_sim()
        return require_cuda(self._index)

    def capture(self, fn, *args, model=None, **kwargs):
        """Record ``fn(*args, **kwargs)`` as the graph and run it once; returns its result."""
        global _capture
        if self._graph is not None:
            raise RuntimeError("CUDAGraph.capture: this graph is captured already; make a new one")
        if _capture is not None:
            raise RuntimeError("CUDAGraph.capture: another graph is being captured")
        xp = self._modules()
        dev = xp.cuda.Device(self._index)
        with dev:
            stream = xp.cuda.Stream(non_blocking=True)
        if model is not None:
            release_step_buffers(model)
        _capture = self
        try:
            with dev, stream:
                stream.begin_capture()
                try:
                    out = fn(*args, **kwargs)
                finally:
                    graph = stream.end_capture()
        finally:
            _capture = None
        self._graph = graph
        if self._kind == "sim":        # the sim executed the work while capturing it
            def run():
                if model is not None:  # the layers' Python state as at capture
                    release_step_buffers(model)
                fn(*args, **kwargs)
            self._run = run
            # the sim's Graph calls back into this object at each launch: weakly, so that the
            # two are no reference cycle, which only the cyclic gc frees (they hold the step's
            # buffers); whoever launches holds this object (CUDAGraph.replay)
            graph._replay = _weak_replay(self)
        else:
            for hook in self._hooks:   # as before every replay: the lr of this step, ...
                hook()
            with dev:
                graph.launch(stream=xp.cuda.get_current_stream())
        return out

    def _replay_on_sim(self):
        global _capture
        _capture = self              # the Python re-runs the capture's code path
        try:
            self._run()
        finally:
            _capture = None

    def replay(self):
        """Run the hooks, then the captured step (one graph launch on the current stream)."""
        if self._graph is None:
            raise RuntimeError("CUDAGraph.replay: nothing captured yet (call capture first)")
        for hook in self._hooks:
            hook()
        xp = self._modules()
        with xp.cuda.Device(self._index):
            self._graph.launch(stream=xp.cuda.get_current_stream())
