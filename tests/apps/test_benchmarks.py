"""The benchmark scripts' pieces that can be wrong without anyone noticing: the memory tracker, the interleaving,
the Markdown the results document is made of, and one small real section returning sane numbers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import benchlib as bl  # noqa: E402
import filter_speed  # noqa: E402
import run_all  # noqa: E402

MB4 = 1000 * 1000 * 4


# -- memory tracker -------------------------------------------------------------------------------------------------


def test_tracker_counts_a_known_allocation_and_its_release() -> None:
    with bl.MemoryTracker() as tracker:
        a = torch.empty(1000, 1000)
        assert tracker.current == MB4
        del a
        assert tracker.current == 0
        b = torch.empty(1000, 1000)  # reuses the freed memory: peak stays at one, total counts two
        del b
    assert (tracker.peak, tracker.allocated, tracker.count) == (MB4, 2 * MB4, 2)


def test_tracker_peak_of_two_live_tensors_and_dtype_sizes() -> None:
    with bl.MemoryTracker() as tracker:
        a = torch.zeros(1000, 1000)
        b = torch.zeros(1000, 1000, dtype=torch.bfloat16)
        del a, b
    assert tracker.peak == MB4 + MB4 // 2
    assert tracker.current == 0


def test_tracker_ignores_views_in_place_and_preexisting_tensors() -> None:
    x = torch.randn(1000, 1000)
    with bl.MemoryTracker() as tracker:
        x.mul_(2.0)  # in place on a tensor from before: nothing allocated
        y = x.t()[:10]  # a view of it
        torch.mul(x, 3.0, out=x)
        z = x.clone()  # a real allocation
        w = z.view(-1)[:5]  # a view keeps z's storage alive
        del z
        assert tracker.current == MB4
        del w
        assert tracker.current == 0
    assert (tracker.peak, tracker.allocated, tracker.count) == (MB4, MB4, 1)
    assert y.shape == (10, 1000)


def test_tracker_sees_what_an_op_returns_not_its_internal_scratch() -> None:
    x = torch.randn(2, 8, 16, 16)
    with bl.MemoryTracker() as tracker:
        out = torch.cat([x, x], dim=1)
    assert tracker.allocated == 2 * x.numel() * 4
    assert out.shape == (2, 16, 16, 16)


# -- timing helpers -------------------------------------------------------------------------------------------------


def test_interleaved_rotates_the_order_and_drops_the_warm_up() -> None:
    calls: list[str] = []
    contenders = [bl.Contender(n, lambda n=n: calls.append(n)) for n in "abc"]
    times = bl.interleaved(contenders, repeats=3, device=torch.device("cpu"), warmup=1)
    assert calls == list("abcbcacababc")
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(v >= 0 for t in times.values() for v in t)


def test_interleaved_runs_setup_and_teardown_around_each_timed_call() -> None:
    events: list[str] = []
    c = bl.Contender("x", lambda: events.append("run"), lambda: events.append("up"), lambda: events.append("down"))
    bl.interleaved([c], repeats=2, device=torch.device("cpu"), warmup=0)
    assert events == ["up", "run", "down"] * 2


def test_paired_ratios_and_quartiles() -> None:
    assert bl.paired_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError, match="as many rounds"):
        bl.paired_ratios([1.0], [1.0, 2.0])
    assert bl.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    assert bl.quartiles([7.0]) == (7.0, 7.0)


# -- Markdown -------------------------------------------------------------------------------------------------------


def test_markdown_table_columns() -> None:
    text = bl.markdown_table(["model", "ours (ms)", "a | b"], [["sd15", 1.5, "x|y"], ["sdxl", 2, ""]])
    lines = text.splitlines()
    assert lines[0] == "| model | ours (ms) | a \\| b |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[2] == "| sd15 | 1.5 | x\\|y |"
    assert lines[3] == "| sdxl | 2 |  |"
    # every line has the same number of unescaped separators: 3 columns
    assert {line.replace("\\|", "").count("|") for line in lines} == {4}
    with pytest.raises(ValueError, match="2 cells for 3 headers"):
        bl.markdown_table(["a", "b", "c"], [["1", "2"]])


def test_document_blocks_replace_only_their_own_section_and_device() -> None:
    text = run_all.HEADER
    text = run_all.update_document(text, "cpu", "CPU: x", {"unet": "### c\n\nold unet\n"})
    text = run_all.update_document(text, "cpu", "CPU: x", {"filter": "### a\n\nfilter rows\n"})
    text = run_all.update_document(text, "cuda-h200", "CUDA: H200", {"unet": "### c\n\ngpu unet\n"})
    text = run_all.update_document(text, "cpu", "CPU: x", {"unet": "### c\n\nnew unet\n"})
    assert text.startswith(run_all.HEADER.rstrip())
    assert "old unet" not in text
    assert text.count("new unet") == 1 and text.count("gpu unet") == 1 and text.count("filter rows") == 1
    cpu = text[text.index("<!-- bench:cpu -->") : text.index("<!-- /bench:cpu -->")]
    assert cpu.index("filter rows") < cpu.index("new unet")  # sections in the canonical order
    assert "gpu unet" not in cpu
    assert text.count("## CPU: x") == 1 and text.count("## CUDA: H200") == 1
    assert run_all.update_document(text, "cpu", "CPU: x", {"unet": "### c\n\nnew unet\n"}) == text


# -- one tiny real section ------------------------------------------------------------------------------------------


def _number(cell: str) -> float:
    return float(cell.rstrip("x %").replace("+", ""))


def test_filter_section_at_one_tiny_size_returns_sane_numbers() -> None:
    section = filter_speed.filter_section(["sd15"], ["float32"], 1, 8, 1, torch.device("cpu"))
    assert section.headers[6:8] == ["diffusers / ours", "ours / clone"]
    (row,) = section.rows
    assert row[:3] == ["sd15", "float32", "10 @ 8x8"]
    numbers = [_number(c) for c in row[3:]]
    assert all(math.isfinite(v) and v > 0 for v in numbers[:8])
    scratch_ours, scratch_diffusers = numbers[8:10]
    assert section.headers[11:13] == ["scratch at peak (MiB): ours", "diffusers"]
    assert 0 <= scratch_ours < scratch_diffusers  # diffusers holds a complex spectrum and a mask besides its result
    assert numbers[-1] < 1e-5  # ours and diffusers compute the same filter
    assert "| sd15 | float32 | 10 @ 8x8 |" in section.markdown()


def test_join_section_hooks_agree_with_diffusers() -> None:
    section = filter_speed.join_section(["sd15"], ["bfloat16"], 1, 8, 1, torch.device("cpu"))
    (row,) = section.rows
    numbers = [_number(c) for c in row[3:]]
    assert all(math.isfinite(v) and v > 0 for v in numbers[:10])
    assert all(math.isfinite(v) and v >= 0 for v in numbers[10:-1])
    assert numbers[-1] < 0.1  # bfloat16: ours and diffusers round differently, by a few units in the last place


# -- time in FreeU's own code ---------------------------------------------------------------------------------------


def test_code_timer_sums_the_time_inside_and_restores_the_hooks() -> None:
    """The timer sees every FreeU hook and every diffusers apply_freeu call of a forward, times what runs inside
    (a hook made to sleep 20 ms is timed at least that), and puts the original hooks back."""
    import time

    from conftest import sd15_unet, unet_inputs

    import freeu

    unet = sd15_unet()
    inputs = unet_inputs(unet, size=8, batch=1)
    assert bl.module_hooks(unet) == []
    freeu.apply(unet, b1=1.5, b2=1.6, s1=0.9, s2=0.2, version=2)
    before = [hooks[key] for hooks, key in bl.module_hooks(unet)]
    joins = sum(p.stage is not None for p in freeu.plan(unet, "official"))
    timer = bl.CodeTimer(torch.device("cpu"))
    with torch.no_grad(), bl.timing_hooks(unet, timer) as wrapped:
        unet(**inputs)
    assert wrapped == len(before) == timer.calls >= joins > 0
    assert [hooks[key] for hooks, key in bl.module_hooks(unet)] == before
    freeu.remove(unet)

    slow = bl.CodeTimer(torch.device("cpu"))
    handle = unet.register_forward_pre_hook(lambda module, args: time.sleep(0.02))
    with torch.no_grad(), bl.timing_hooks(unet, slow):
        unet(**inputs)
    handle.remove()
    assert slow.calls == 1 and slow.seconds >= 0.02

    theirs = bl.CodeTimer(torch.device("cpu"))
    unet.enable_freeu(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
    with torch.no_grad(), bl.timing_diffusers_freeu(theirs):
        unet(**inputs)
    unet.disable_freeu()
    # diffusers calls apply_freeu at every join of its up blocks, and it acts only at those of the first two
    plan = freeu.plan(unet, "diffusers")
    assert theirs.calls == len(plan) > sum(p.stage is not None for p in plan) > 0
    assert theirs.seconds > 0
