"""minigrad.reuse_memory: inside the block freed arrays come back without page faults;
the policy ends with the block; blocks nest; the user's own policy wins; fit trains
inside it."""
import contextlib
import resource

import numpy as np
import pytest

import minigrad as mg
from minigrad import memory

needs_glibc = pytest.mark.skipif(not memory.supported(),
                                 reason="reuse_memory acts on glibc's malloc only (not here)")

# 40 MB each: above glibc's mmap threshold outside the block (memory.AFTER) and
# below it inside (memory.MMAP_THRESHOLD)
ARRAYS, SIZE = 10, 40 << 20


def page_faults(fn):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def allocate_and_touch(times=ARRAYS):
    for _ in range(times):
        a = np.empty(SIZE, np.uint8)
        a[::4096] = 1  # every page written: each fresh page is a fault
        del a


@needs_glibc
def test_inside_the_block_freed_arrays_come_back_without_faults():
    with mg.reuse_memory() as acting:
        assert acting
        allocate_and_touch(1)  # the heap grows once
        inside = page_faults(allocate_and_touch)
    after = page_faults(allocate_and_touch)
    assert inside <= 5, inside
    assert after >= ARRAYS, after  # mapped afresh again: the block's policy is over


@needs_glibc
def test_blocks_nest_and_the_outermost_one_ends_the_policy():
    with mg.reuse_memory():
        with mg.reuse_memory():
            allocate_and_touch(1)
        still = page_faults(allocate_and_touch)
    assert still <= 5, still
    assert page_faults(allocate_and_touch) >= ARRAYS


@pytest.mark.parametrize("variable, value", [("MALLOC_MMAP_THRESHOLD_", "65536"),
                                             ("MALLOC_TRIM_THRESHOLD_", "65536"),
                                             ("MINIGRAD_REUSE_MEMORY", "0")])
def test_the_users_own_policy_wins(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    calls = []
    monkeypatch.setattr(memory, "_set", lambda *a: calls.append(a) or True)
    assert not memory.supported()
    with mg.reuse_memory() as acting:
        assert acting is False
    assert calls == []


def test_fit_trains_inside_the_block(monkeypatch):
    from autoencoders import VanillaAutoencoder
    seen = []

    @contextlib.contextmanager
    def recording():
        seen.append("enter")
        yield True
        seen.append("exit")

    monkeypatch.setattr(mg, "reuse_memory", recording)
    x = np.random.default_rng(0).random((32, 6)).astype(np.float32)
    VanillaAutoencoder([6, 2], seed=0).fit(x, epochs=1, batch_size=16, progress=False)
    assert seen == ["enter", "exit"]
