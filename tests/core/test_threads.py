"""Concurrent ``freeu.apply`` and ``freeu.remove`` on one U-Net: each is atomic with respect to the others, so after
any interleaving the U-Net holds exactly the hooks of the handle ``active_config`` reports, and ``remove`` leaves none.
"""

from __future__ import annotations

import sys
import threading

import pytest
from conftest import sd15_unet

import freeu


def hook_count(unet) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules())


@pytest.fixture
def eager_switching():
    """Threads switch every microsecond instead of every 5 ms, so the interleavings a loaded machine makes by chance
    happen in every trial."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_concurrent_applies_then_remove_leave_no_hook_behind(eager_switching) -> None:
    unet = sd15_unet()
    window = freeu.apply(unet, preset="sd15", start=0.1)  # one with call hooks on the U-Net itself
    per_handle = hook_count(unet)
    window.remove()
    assert hook_count(unet) == 0 and per_handle > 0
    for trial in range(40):
        barrier, errors = threading.Barrier(4), []

        def worker(k: int, barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            try:
                barrier.wait()
                freeu.apply(unet, preset="sd15", b1=1.0 + 0.01 * k, start=0.1)
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        active = freeu.active_config(unet)
        assert active is not None and hook_count(unet) == per_handle, trial  # only the active handle's hooks
        assert freeu.remove(unet) and freeu.active_config(unet) is None
        assert hook_count(unet) == 0, f"trial {trial}: hooks of replaced handles stayed installed"
