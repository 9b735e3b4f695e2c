"""Record a step once, replay it: the same kernels without the per-node Python.

Eager minigrad rebuilds the graph on every call: each operation goes through its
Module, ``Function.apply`` (inputs to tensors, the device, a new node, a new
Tensor) and, on the way back, a fresh topological sort.  On the main job that
bookkeeping is 8-10% of a training step (``benchmarks/step_by_hand.py``).  But a
training step builds the same graph every time -- the same operations on arrays
of the same shapes -- so :class:`Step` records the nodes one call creates, in
the order they ran, and afterwards runs only their ``forward`` and ``backward``
methods on the new data::

    step = Step(lambda x: model_loss(x), Tensor(first_batch))   # runs and records
    total = step.outputs                                         # eager outputs
    step.backward()                                              # into .grad
    ...
    total = step.run(next_batch)          # the recorded nodes' forwards, new data
    step.backward()                       # their backwards, in the recorded order

What a recorded step may hold, and what a replay remakes:

* its **inputs** (the tensors given to :class:`Step`): new arrays each run, of the
  recorded shapes and dtypes;
* **parameters** and other leaves made before the step: read afresh each run (an
  optimizer may swap a parameter's array between steps);
* **sources**: leaves made *inside* the step from fresh numbers -- a VAE's
  ε ~ N(0, I), a denoiser's corrupted input -- declared with :func:`source`,
  whose ``make()`` draws their next array on every replay, in the recorded order
  (so a random generator is drawn from exactly as in eager steps);
* constants (Python numbers, arrays made from shapes): kept as recorded;
* tensors made from other tensors without a gradient (comparisons, ``detach``,
  constant branches of ``where``): recorded with :func:`note` and recomputed.

A replay equals the eager step bit for bit (same kernels, same order, same
gradient accumulation) as long as the step's Python does not depend on the
data: no branch on a value, no leaf made from fresh numbers without
:func:`source`.  Checks written in Python inside the step (a loss's check that
its targets lie in [0, 1], say) run when the step is recorded, not on replays:
data is to be checked before it is replayed, as ``fit`` checks every batch it
reads.  A training loop holds a :class:`Steps`: one recording per input
shape, replayed after.  ``fit`` replays the steps of the package's own models (see
:mod:`autoencoders.training`), dropping the recordings at each epoch's end (a KL
weight that ramps with the epoch is a constant of the step), and is checked against
eager training for every flavor in ``tests/test_replay.py``.
"""
from __future__ import annotations

import threading

from .backward import _topological_order, backward_pass

__all__ = ["Step", "Steps", "source", "note", "is_recording"]


class _Tape(threading.local):
    """What the current thread is recording: the nodes (``Function.apply`` appends
    ``(node, input tensors, params, output)``) and the sources, or None."""
    nodes = None
    sources = None


_tape = _Tape()


def is_recording():
    """Whether a :class:`Step` is being recorded in this thread."""
    return _tape.nodes is not None


def source(tensor, make):
    """Declare that the leaf ``tensor``, made inside a step from fresh numbers, is
    remade by ``make()`` (its next array, of the same shape and dtype) on every
    replay.  Outside a recording it does nothing.  Returns ``tensor``."""
    if _tape.sources is not None:
        _tape.sources.append((tensor, make))
    return tensor


def note(op, inputs, result, **params):
    """Record ``result``, made from the Tensors ``inputs`` outside ``Function.apply``
    (a comparison, a detach: no gradient flows through it), so that a replay
    recomputes it as ``op.forward(*(t.data for t in inputs), **params)``.
    Returns ``result``."""
    if _tape.nodes is not None:
        _tape.nodes.append((op, tuple(inputs), params, result))
    return result


def _signature(arrays):
    """What a recorded step depends on in its inputs: their shapes and dtypes."""
    return tuple((a.shape, a.dtype) for a in arrays)


class Step:
    """``fn(*inputs)`` run once and recorded; :meth:`run` replays it on new arrays.

    ``inputs`` are Tensors; ``fn`` returns Tensors in any structure (a tuple, a
    dict of terms ...), kept as :attr:`outputs` -- the same Tensor objects, with the
    latest data, after every run.  ``root`` names the output that
    :meth:`backward` differentiates (default: ``outputs`` itself, or its first item
    when it is a tuple).
    """

    def __init__(self, fn, *inputs, root=None):
        if _tape.nodes is not None:
            raise RuntimeError("replay.Step: a step is already being recorded in this thread")
        _tape.nodes, _tape.sources = [], []
        try:
            self.outputs = fn(*inputs)
        finally:
            self.nodes, self.sources = _tape.nodes, _tape.sources
            _tape.nodes = _tape.sources = None
        self.inputs = inputs
        self.signature = _signature(t.data for t in inputs)
        if root is None:
            root = self.outputs[0] if isinstance(self.outputs, tuple) else self.outputs
        self.root = root
        self.order = _topological_order(root) if root._requires_grad else None

    def accepts(self, *arrays):
        """Whether ``arrays`` have the recorded inputs' shapes and dtypes."""
        return _signature(arrays) == self.signature

    def run(self, *arrays):
        """The recorded step on new input arrays: each source remade, each node's
        forward run in the recorded order; returns :attr:`outputs`."""
        if not self.accepts(*arrays):
            got = [(tuple(a.shape), str(a.dtype)) for a in arrays]
            want = [(tuple(s), str(d)) for s, d in self.signature]
            raise ValueError(f"replay.Step.run: inputs of (shape, dtype) {got}; the step was "
                             f"recorded with {want} (record a new Step for other shapes)")
        return self._replay(arrays)

    def _replay(self, arrays):
        for tensor, array in zip(self.inputs, arrays):
            tensor.data = array
        for tensor, make in self.sources:
            tensor.data = make()
        for node, tensors, params, result in self.nodes:
            result.data = node.forward(*[t.data for t in tensors], **params)
        return self.outputs

    def backward(self):
        """d(root)/d(leaf) into every leaf's ``.grad`` (seed 1), walking the recorded
        order; the nodes stay for the next run."""
        if self.order is None:
            raise RuntimeError("replay.Step.backward: the recorded root does not require "
                               "a gradient")
        root = self.root
        seed = root.xp.ones(root.data.shape, dtype=root.data.dtype)
        backward_pass(root, seed, retain_graph=True, order=self.order)


class Steps:
    """The calls of a step function, each recorded once and replayed after.

    ``steps(*tensors)`` returns ``fn(*tensors)``'s outputs: the first call with a
    given signature (the inputs' shapes and dtypes) records a :class:`Step`, later
    calls with it replay that step on the tensors' arrays; :meth:`backward` then
    differentiates the last call's root (the outputs, or their first item when
    they are a tuple).  With ``replay=False`` every call runs ``fn`` eagerly and
    :meth:`backward` is the root's own ``backward()``: the same loop serves both,
    which is how ``fit`` and the benchmarks take their steps::

        steps = Steps(lambda x: model_loss(x), replay=True)
        for batch in batches:
            total = steps(Tensor(batch))
            steps.backward()
            optimizer.step()

    :meth:`clear` forgets the recordings (and the arrays their last call left
    alive), so that the next call records afresh: ``fit`` clears at every epoch's
    end, because what an epoch makes constant (a KL weight that ramps with the epoch)
    is a constant of the recorded step.
    """

    def __init__(self, fn, replay=True):
        self.fn, self.replay = fn, bool(replay)
        self.recorded = {}  # signature -> Step
        self.last = None    # the last call's Step, or its root when eager

    def __call__(self, *tensors):
        if not self.replay:
            outputs = self.fn(*tensors)
            self.last = outputs[0] if isinstance(outputs, tuple) else outputs
            return outputs
        arrays = [t.data for t in tensors]
        key = _signature(arrays)
        step = self.recorded.get(key)
        if step is None:
            step = self.recorded[key] = Step(self.fn, *tensors)
        else:
            step._replay(arrays)
        self.last = step
        return step.outputs

    def backward(self):
        """The last call's root differentiated into the leaves' ``.grad``."""
        if self.last is None:
            raise RuntimeError("replay.Steps.backward: no step has run yet")
        self.last.backward()

    def clear(self):
        """Forget every recording: the next call records again."""
        self.recorded.clear()
        self.last = None
