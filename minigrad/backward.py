"""The backward pass: from an output back to the leaves, one node at a time.

:func:`backward_pass` walks the tensors reachable from the output in an iterative
topological order (outputs first), calls each node's ``backward`` -- its
vector-Jacobian product -- once its gradient is complete, hands the results to the
node's parents, and drops each gradient as soon as it has been used.  Leaves
accumulate theirs in ``.grad``.

A primitive's ``backward`` may return its input gradients in the broadcast
(output) shape: :func:`unbroadcast` -- the only place that does so -- sums them
back to each input's shape.
"""
from __future__ import annotations

import numpy

__all__ = ["backward_pass", "unbroadcast"]


def backward_pass(root, grad, retain_graph=False, order=None):
    """Accumulate d(root)/d(leaf), seeded with ``grad``, into every leaf's ``.grad``;
    the graph is released on the way unless ``retain_graph``.  ``order``: the
    topological order of a retained graph, when the caller kept it (a replayed
    step, :mod:`minigrad.replay`)."""
    if order is None:
        order = _topological_order(root)
    grads = {id(root): grad}
    handed_out = {id(grad)}  # arrays a leaf may not adopt (see _accumulate_leaf)
    for tensor in order:
        g = grads.pop(id(tensor), None)  # dropped here: freed once used
        node = tensor._node
        if node is None:
            if tensor._released:
                raise RuntimeError("backward: part of this graph was already released "
                                   "by an earlier backward(); pass retain_graph=True to it")
            if g is not None:
                _accumulate_leaf(tensor, g, handed_out)
            continue
        if g is not None:
            parent_grads = node.backward(g)
            if not isinstance(parent_grads, tuple):
                parent_grads = (parent_grads,)
            for parent, pg in zip(node.parents, parent_grads):
                if pg is None or not parent._requires_grad:
                    continue
                pg = unbroadcast(pg, parent.data.shape, parent.data.dtype)
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg
            del parent_grads, g
        if not retain_graph:
            tensor._node = None
            tensor._released = True


def unbroadcast(grad, shape, dtype):
    """Sum ``grad`` (in a broadcast shape) back to ``shape`` and cast to ``dtype``.

    NumPy broadcasting prepends axes and stretches axes of length 1; the
    gradient of a broadcast is the sum over exactly those axes.
    """
    if type(grad) is numpy.ndarray and grad.shape == shape and grad.dtype == dtype:
        return grad  # the common case: nothing to reduce or cast
    shape = tuple(shape)
    if grad.shape != shape:
        extra = grad.ndim - len(shape)
        if extra < 0:
            raise RuntimeError(f"internal error: gradient of shape {grad.shape} for an "
                               f"input of shape {shape}")
        if extra:
            grad = grad.sum(axis=tuple(range(extra)))
        stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
        if stretched:
            grad = grad.sum(axis=stretched, keepdims=True)
        if grad.shape != shape:
            raise RuntimeError(f"internal error: cannot reduce a gradient of shape "
                               f"{grad.shape} to the input shape {shape}")
    if grad.dtype != dtype:
        grad = grad.astype(dtype)
    # a reduction to shape () gives NumPy a scalar rather than an array
    return numpy.asarray(grad) if isinstance(grad, numpy.generic) else grad


def _accumulate_leaf(tensor, g, handed_out):
    """Add ``g`` to ``tensor.grad``.  A first gradient is adopted without a copy when
    the leaf may own it: an array of its own memory, writable, of the leaf's dtype,
    and not handed to anyone else in this pass (``Add`` passes one array to both
    of its inputs; the seed belongs to the caller).  Otherwise it is copied, so a
    later ``grad += ...`` can never write into another tensor's gradient."""
    if tensor.grad is not None:
        tensor.grad += g
        return
    flags = g.flags
    if (flags.owndata and getattr(flags, "writeable", True) and g.dtype == tensor.dtype
            and id(g) not in handed_out):
        tensor.grad = g
    else:
        tensor.grad = tensor.xp.array(g, dtype=tensor.dtype, copy=True)
    handed_out.add(id(tensor.grad))


def _topological_order(root):
    """Tensors reachable from ``root`` through recorded nodes, outputs first.

    Iterative depth-first search, parents visited in argument order, so the
    order is deterministic and graph depth is limited only by memory.
    """
    postorder, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, children_done = stack.pop()
        if children_done:
            postorder.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._node is not None:
            for parent in reversed(tensor._node.parents):
                if parent._requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    postorder.reverse()
    return postorder
