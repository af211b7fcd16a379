"""freeu tune: the search on a synthetic objective, the command end to end on a tiny demo-style model, resume after
an interruption, and the preset file it writes in freeu.apply, the command line, freeu eval and the page."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import freeu
from freeu.apps.cli import main
from freeu.apps.tune.search import (
    draw_candidates,
    parse_space,
    plan_rungs,
    rung_cost,
    schedule_for_budget,
    successive_halving,
)

tomllib = pytest.importorskip("tomllib")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
pytestmark = pytest.mark.usefixtures("one_thread")

# small everywhere: 2 DDIM steps, few patches and directions, few replicates
FAST = ["--steps", "2", "--reference-count", "32", "--swd-patches", "16", "--swd-projections", "32",
        "--bootstrap", "200", "--set-bootstrap", "50", "--no-progress"]  # fmt: skip
SEARCH = ["--seeds", "8", "--min-seeds", "4", "--budget", "60", "--confirm-seeds", "8"]


# --- the search alone --------------------------------------------------------------------------------------------


OPTIMUM = {"b1": 1.31, "b2": 1.52, "s1": 0.63, "s2": 0.84}


def true_objective(settings: dict) -> float:
    return math.sqrt(sum((settings[k] - v) ** 2 for k, v in OPTIMUM.items()))


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_the_search_finds_the_known_optimum_of_a_synthetic_objective_within_its_budget(noise) -> None:
    """A fake evaluation: the distance to a known optimum, plus noise that shrinks with the seeds as a metric's
    would. The search must pick the drawn candidate nearest the optimum, and make no more images than the budget."""
    space = parse_space()
    budget, seeds = 1216, 64
    rungs = schedule_for_budget(budget, seeds)
    assert rung_cost(rungs) <= budget < rung_cost(plan_rungs(rungs[0].candidates + 1, seeds))
    assert [(r.candidates, r.seeds) for r in rungs] == [(65, 16), (3, 32), (2, 64)]
    candidates = draw_candidates(space, rungs[0].candidates, seed=0)
    names = [f"c{i:02d}" for i in range(len(candidates))]
    settings = dict(zip(names, candidates, strict=True))
    made: set[tuple[str, int]] = set()
    rng = random.Random(0)

    def evaluate(index, alive, count):
        made.update((n, s) for n in ["off", *alive] for s in range(count))
        return {n: true_objective(settings[n]) + rng.gauss(0, noise / math.sqrt(count)) for n in alive}

    winner, history = successive_halving(names, rungs, evaluate)
    best = min(names, key=lambda n: true_objective(settings[n]))
    assert winner == best
    # the box's diagonal is 1.51: 65 quasi-random points leave the nearest within a sixth of it
    assert true_objective(settings[winner]) < 0.25
    assert len(made) == rung_cost(rungs) <= budget  # each (setting, seed) image once
    assert [len(h) for h in history] == [r.candidates for r in rungs]
    # higher-is-better objectives: the same search on the negated objective
    winner_up, _ = successive_halving(names, rungs, lambda i, a, c: {n: -v for n, v in evaluate(i, a, c).items()},
                                      lower_is_better=False)  # fmt: skip
    assert winner_up == best


def test_a_resumed_search_takes_finished_rungs_from_the_record() -> None:
    rungs = plan_rungs(8, 32, min_seeds=8)
    names = [f"c{i}" for i in range(8)]
    calls: list[int] = []

    def evaluate(index, alive, count):
        calls.append(index)
        return {n: (int(n[1:]) * 7 % 8) + count / 100 for n in alive}

    winner, history = successive_halving(names, rungs, evaluate)
    calls.clear()
    again, history_again = successive_halving(names, rungs, evaluate, done=history[:2])
    assert calls == list(range(2, len(rungs))) and (again, history_again) == (winner, history)
    with pytest.raises(ValueError, match="rung 0 on record scored"):
        successive_halving(names, rungs, evaluate, done=[{"c0": 1.0}])


def test_the_schedule_and_the_space() -> None:
    rungs = plan_rungs(32, 64, eta=2, min_seeds=16)
    assert [(r.candidates, r.seeds) for r in rungs] == [(32, 16), (4, 32), (2, 64)]  # 32 -> 16 -> 8 on one rung
    assert rung_cost(rungs) == 33 * 16 + 5 * 16 + 3 * 32
    space = parse_space(["version=1,2", "s1=0.9", "start=0:0.5"])
    assert space.describe() == "b1=1:1.6 b2=1:1.8 s1=0.9 s2=0.2:1 version=1,2 convention=official start=0:0.5"
    drawn = draw_candidates(space, 20, seed=3)
    assert len({json.dumps(d, sort_keys=True) for d in drawn}) == 20
    assert {d["version"] for d in drawn} == {1, 2} and all(d["s1"] == 0.9 for d in drawn)
    assert all(1.0 <= d["b1"] <= 1.6 and 0 <= d["start"] <= 0.5 and d["b2"] == round(d["b2"], 2) for d in drawn)
    assert drawn == draw_candidates(space, 20, seed=3)  # reproducible
    for bad, message in [("b1=1.6:1.0", "LOW < HIGH"), ("b9=1:2", "KEY one of"), ("version=3", "choose among"),
                         ("start=0:1.5", "in \\[0, 1\\]"), ("convention=0:1", "not a range")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_space([bad])
    with pytest.raises(ValueError, match="nothing left to search"):
        parse_space(["b1=1", "b2=1", "s1=1", "s2=1"])


# --- the command -------------------------------------------------------------------------------------------------


def _generated(out: Path) -> list[dict]:
    """Every record the search's processes appended, one per image made."""
    parts = (out / "search" / "parts").glob("gen-*.jsonl")
    return [json.loads(line) for part in parts for line in part.read_text().splitlines()]


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tuned(tiny_demo, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("tune") / "run"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["tune", "--model", str(tiny_demo), *FAST, *SEARCH, "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_tune_searches_on_search_seeds_confirms_on_others_and_writes_the_winner(tuned) -> None:
    out, printed = tuned
    record = json.loads((out / "tune.json").read_text())
    rungs = schedule_for_budget(60, 8, 2, 4)
    assert len(record["candidates"]) == rungs[0].candidates
    assert [r["seeds"] for r in record["rungs"]] == [r.seeds for r in rungs]
    # each rung's scores are freeu eval's set-level SWD on that rung's seeds; the winner is the last rung's best
    last = record["rungs"][-1]["scores"]
    assert record["winner"] == min(last, key=last.get)
    search = _records(out / "search")
    assert {r["seed"] for r in search} == set(range(8))
    confirm = _records(out / "confirm")
    assert {r["seed"] for r in confirm} == set(range(8, 16))  # disjoint from the search seeds
    assert {r["config"] for r in confirm} == {"off", "tuned", record["preset"]}
    # the winner's images: a candidate's images are made once, every rung reusing the earlier rungs' ones
    lines = [
        json.loads(line) for p in (out / "search" / "parts").glob("*.jsonl") for line in p.read_text().splitlines()
    ]
    assert len(lines) == len({r["key"] for r in lines}) == rung_cost(rungs)
    # the preset file: the winner's settings, and the confirmation's numbers as freeu eval reported them
    data = tomllib.loads((out / "preset.toml").read_text())
    winner = record["candidates"][record["winner"]]
    assert freeu.get_preset(str(out / "preset.toml")).config == freeu.FreeUConfig(**winner)
    metrics = {c["name"]: c for c in json.loads((out / "confirm" / "metrics.json").read_text())["configs"]}
    difference = metrics["tuned"]["set_level"]["swd"]["difference_vs_off"]
    assert data["tune"]["confirmation"]["tuned_minus_off"] == [difference["value"], difference["low"],
                                                              difference["high"]]  # fmt: skip
    assert data["tune"]["confirmation"]["beats_off"] == (difference["high"] < 0)
    assert data["tune"]["search_seeds"] == "0..7" and data["tune"]["confirmation_seeds"] == "8..15"
    report = (out / "report.md").read_text()
    verdict = "beats FreeU off" if difference["high"] < 0 else "Nothing the search found beat FreeU off"
    assert verdict in report and verdict in printed
    assert f"| tuned ({record['winner']}) | {freeu.FreeUConfig(**winner).label()} |" in report
    # an unguided tune: the report states the images made and each rung's best as a difference from FreeU off
    assert f"{rung_cost(rungs)} images per prompt (FreeU off included)" in report
    assert "| best Δ vs off |" in report and "| best score |" not in report
    best = record["winner"]
    assert f"| {best} | {last[best] - record['rungs'][-1]['off']:+.4g} |" in report
    assert (out / "search.png").stat().st_size > 5000 and (out / "confirm" / "samples.png").stat().st_size > 1000


def test_a_tune_refuses_overlapping_seeds_another_folder_and_a_small_budget(tuned, tiny_demo, capsys) -> None:
    out = tuned[0]
    base = ["tune", "--model", str(tiny_demo), *FAST]
    assert main([*base, *SEARCH, "--confirm-first-seed", "4", "--out", str(out)]) == 2
    assert "overlap the search seeds 0..7" in capsys.readouterr().err
    assert main([*base, *SEARCH[:-2], "--confirm-seeds", "8", "--metric", "rapsd", "--out", str(out)]) == 2
    assert "holds a tune of other settings (differs in metric)" in capsys.readouterr().err
    assert main([*base, "--seeds", "64", "--budget", "50", "--out", str(out / "x")]) == 2
    assert "the smallest search (2 candidates and FreeU off on 64 seeds) makes 192 images" in capsys.readouterr().err


def test_interrupted_in_the_middle_it_resumes_without_redoing_finished_work(tuned, tiny_demo, tmp_path, monkeypatch,
                                                                          capsys) -> None:  # fmt: skip
    """Ctrl+C while the second rung is writing images; the same command again finishes with the result of the run
    that was never interrupted, making each image once and evaluating the first rung once."""
    from freeu.apps.evaluate import generation

    out = tmp_path / "run"
    argv = ["tune", "--model", str(tiny_demo), *FAST, *SEARCH, "--out", str(out)]
    original = generation.Store.append
    written = {"count": 0}
    first_rung = plan_rungs(len(json.loads((tuned[0] / "tune.json").read_text())["candidates"]), 8, 2, 4)[0]

    def append(self, record):
        original(self, record)
        written["count"] += 1
        if written["count"] == (first_rung.candidates + 1) * first_rung.seeds + 3:  # three images into rung 2
            raise KeyboardInterrupt

    monkeypatch.setattr(generation.Store, "append", append)
    assert main(argv) == 130
    monkeypatch.setattr(generation.Store, "append", original)
    state = json.loads((out / "tune.json").read_text())
    assert len(state["rungs"]) == 1 and "winner" not in state
    assert main(argv) == 0
    capsys.readouterr()
    log = (out / "log.txt").read_text()
    assert log.count("--seeds 4 ") == 1  # the first rung's evaluation ran once
    lines = [
        json.loads(line) for p in (out / "search" / "parts").glob("*.jsonl") for line in p.read_text().splitlines()
    ]
    assert len(lines) == len({r["key"] for r in lines})  # no image made twice
    reference = json.loads((tuned[0] / "tune.json").read_text())
    again = json.loads((out / "tune.json").read_text())
    assert again["winner"] == reference["winner"] and again["candidates"] == reference["candidates"]
    for a, b in zip(reference["rungs"], again["rungs"], strict=True):
        assert b["scores"].keys() == a["scores"].keys()
        assert all(b["scores"][k] == pytest.approx(v, rel=1e-6) for k, v in a["scores"].items())
    assert tomllib.loads((out / "preset.toml").read_text())["freeu"] == tomllib.loads(
        (tuned[0] / "preset.toml").read_text())["freeu"]  # fmt: skip


# --- the preset file everywhere ----------------------------------------------------------------------------------


def test_the_preset_file_round_trips_through_apply_the_command_line_eval_and_the_page(tuned, tiny_demo, tmp_path,
                                                                                     capsys) -> None:  # fmt: skip
    from freeu.apps.demo_model import load_exported
    from freeu.apps.evaluate.configs import parse_config_arg
    from freeu.apps.imaging import read_settings
    from freeu.apps.tune.preset_file import write_preset

    # a setting with every field a file can hold, written by tune's writer, next to the one tune chose
    rich = tmp_path / "rich.toml"
    stages = freeu.config.parse_stage_settings("3:b=1.1,s=0.7; 1:high=1.05,window=0.25/0.5")
    full = freeu.FreeUConfig(1.21, 1.37, 0.55, 0.83, version=1, convention="diffusers", start=0.1, stop=0.9)
    full = full.with_stages(stages)
    write_preset(rich, full, name="rich", model="tiny", source="test")
    path = tuned[0] / "preset.toml"
    chosen = freeu.get_preset(str(path)).config
    assert freeu.get_preset(str(rich)).config == full and freeu.get_preset(rich).name == "rich"

    # freeu.apply(preset=FILE) is the same hooks as the settings themselves
    unet, _ = load_exported(tiny_demo)
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
    with torch.no_grad():
        off = unet(x, t).sample
        for file, config in ((path, chosen), (rich, full)):
            with freeu.apply(unet, preset=str(file)) as handle:
                by_file = unet(x, t).sample
                assert handle.config == config
            with freeu.apply(unet, config):
                direct = unet(x, t).sample
            assert torch.equal(by_file, direct) and (by_file - off).abs().max() > 1e-3
        assert torch.equal(unet(x, t).sample, off)

    # the command line: --preset FILE gives the image that the same settings given as flags give
    flags = [f"--{k}={getattr(chosen, k)}" for k in ("b1", "b2", "s1", "s2")]
    common = ["generate", "--model", str(tiny_demo), "--steps", "2", "--seed", "3"]
    assert main([*common, "--preset", str(path), "--out", str(tmp_path / "a")]) == 0
    assert main([*common, *flags, "--out", str(tmp_path / "b")]) == 0
    a, b = (read_settings(tmp_path / d / "seed3-freeu.png") for d in ("a", "b"))
    assert a["freeu"] == b["freeu"] == chosen.to_dict() and a["preset"] == str(path)
    assert (tmp_path / "a" / "seed3-freeu.png").read_bytes() != b"" and _pixels(tmp_path / "a") == _pixels(
        tmp_path / "b")  # fmt: skip
    assert main([*common, "--preset", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "c")]) == 2
    assert "missing.toml: cannot read it" in capsys.readouterr().err

    # freeu eval: a configuration is a preset file, named after it, with overrides on top
    config = parse_config_arg(f"{rich} s2=0.5")[0]
    assert config.name == "rich" and config.freeu == full.replace(s2=0.5)

    # the page: the controls a preset file sets give its settings back, and freeu ui starts from it
    pytest.importorskip("gradio")
    from freeu.apps.runtime import load_model
    from freeu.apps.ui import Studio, preset_controls

    for file, config in ((path, chosen), (rich, full)):
        assert Studio.config(**preset_controls(str(file))) == config
    studio = Studio(load_model(str(tiny_demo)), tmp_path / "pngs", preset=str(rich))
    assert studio.default_preset == str(rich)
    ramped = tmp_path / "ramped.toml"
    write_preset(ramped, full.replace(ramp=0.1), name="ramped", model="tiny", source="test")
    with pytest.raises(ValueError, match="sets ramp=0.1, which the page has no control for"):
        preset_controls(str(ramped))


def _pixels(folder: Path) -> bytes:
    from PIL import Image

    with Image.open(folder / "seed3-freeu.png") as image:
        return image.convert("RGB").tobytes()


@pytest.mark.slow
def test_two_processes_with_accelerate_find_what_one_finds(tuned, tiny_demo, tmp_path) -> None:
    """accelerate launch on CPUs: each process samples its share of every rung's units, every process takes the same
    decisions from the rung's report, and the main process writes the results."""
    import os
    import subprocess
    import sys

    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    done = subprocess.run(
        [*launch, "-m", "freeu", "tune", "--model", str(tiny_demo), *FAST, *SEARCH, "--device", "cpu",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [
        json.loads(line) for p in (out / "search" / "parts").glob("*.jsonl") for line in p.read_text().splitlines()
    ]
    assert {r["rank"] for r in lines} == {0, 1} and all(r["unit"] % 2 == r["rank"] for r in lines)
    one, two = (json.loads((folder / "tune.json").read_text()) for folder in (tuned[0], out))
    assert two["winner"] == one["winner"] and two["preset"] == one["preset"]
    for a, b in zip(one["rungs"], two["rungs"], strict=True):
        assert all(b["scores"][k] == pytest.approx(v, rel=1e-2, abs=1e-3) for k, v in a["scores"].items())
    assert tomllib.loads((out / "preset.toml").read_text())["freeu"] == tomllib.loads(
        (tuned[0] / "preset.toml").read_text())["freeu"]  # fmt: skip


def test_tune_on_a_guided_text_to_image_pipeline(tmp_path, capsys) -> None:
    """Prompts, guidance, FreeU off at a stronger guidance in the confirmation, the model's own preset as the
    comparison; a candidate's image, made in a batch of candidates with per-sample factors under classifier-free
    guidance, is the pipeline's own output for that setting."""
    pytest.importorskip("transformers")
    import numpy as np
    import tiny_pipelines

    from freeu.apps.evaluate.generation import load_png
    from freeu.apps.runtime import load_pipeline

    sd = tiny_pipelines.sd_pipeline(tmp_path / "sd")
    reference = tiny_pipelines.random_pictures(tmp_path / "reference", 8)
    out = tmp_path / "tune"
    argv = ["tune", "--model", str(sd), "--prompt", "a cat", "--prompt", "a dog", "--steps", "2", "--guidance", "3",
            "--seeds", "2", "--min-seeds", "1", "--budget", "12", "--confirm-seeds", "2",
            "--guidance-baselines", "auto,6", "--reference", str(reference), "--fid-features", "none", "--clip",
            "none", "--swd-patches", "8", "--swd-projections", "16", "--bootstrap", "50", "--set-bootstrap", "5",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "tune.json").read_text())
    assert record["preset"] == "sd15" and "against FreeU off and sd15" in printed
    confirm = _records(out / "confirm")
    meter = json.loads((out / "confirm" / "guidance.json").read_text())["configs"]
    # the meter saw both prompts (one unit of each, by default), so each prompt is matched with its own scale
    matched = {f"off@{n}": _per_prompt(meter[n]) for n in ("tuned", "sd15")}
    assert {(r["config"], r["guidance"]) for r in confirm} == {("off", 3.0), ("tuned", 3.0), ("sd15", 3.0),
                                                               ("off@cfg6", 6.0), ("off@tuned", 3.0),
                                                               ("off@sd15", 3.0)}  # fmt: skip
    for r in confirm:
        if r["config"] in matched:
            assert r["guidance_schedule"]["scale"] == [matched[r["config"]][r["prompt"]]]
        else:
            assert r["guidance_schedule"] is None
    assert {(r["prompt"], r["seed"]) for r in confirm} == {(p, s) for p in ("a cat", "a dog") for s in (2, 3)}
    report = (out / "report.md").read_text()
    assert "| off@cfg6 | FreeU off, guidance 6 |" in report and "the model's preset" in report
    low, high = min(matched["off@tuned"].values()), max(matched["off@tuned"].values())
    assert (
        f"Against FreeU off at the tuned setting's equivalent guidance (off@tuned, each prompt's own guidance, "
        f"{low:g} to {high:g}" in report
    )
    assert tomllib.loads((out / "preset.toml").read_text())["tune"]["confirmation"]["matched_guidance"] == {
        p: [v] for p, v in matched["off@tuned"].items()}  # fmt: skip
    # the first rung's images of one prompt and seed: every candidate, sampled in one batch with per-sample factors
    first = [r for r in _generated(out) if r["config"] in record["candidates"] and r["prompt"] == "a dog"
             and r["seed"] == 0]  # fmt: skip
    assert len(first) == len(record["candidates"]) >= 3
    # guided: each candidate is scored against FreeU off at its own equivalent guidance, measured by the meter
    assert "each candidate scored against FreeU off at its own equivalent guidance" in printed
    last = record["rungs"][-1]
    metrics = {c["name"]: c for c in json.loads((out / "search" / "metrics.json").read_text())["configs"]}
    meter_search = json.loads((out / "search" / "guidance.json").read_text())["configs"]
    for name, score in last["scores"].items():
        value, baseline = (metrics[n]["set_level"]["swd"]["value"]["value"] for n in (name, f"off@{name}"))
        assert score == pytest.approx(value - baseline) and last["matched"][name] == pytest.approx(baseline)
        schedules = {e["prompt"]: e["scale"] for e in metrics[f"off@{name}"]["guidance_schedules"]}
        assert schedules == {p: [v] for p, v in _per_prompt(meter_search[name]).items()}
    pick = first[-1]
    pipe = load_pipeline(str(sd))
    pipe.set_progress_bar_config(disable=True)
    with freeu.apply(pipe, freeu.FreeUConfig(**pick["freeu"])):
        alone = tiny_pipelines.plain_call(pipe, prompt="a dog", seed=0, count=1, steps=2, guidance=3.0, height=32,
                                          width=32)[0]  # fmt: skip
    stored = load_png(out / "search" / pick["image"]).short()
    assert (stored - torch.from_numpy(np.asarray(alone, dtype=np.int16)).permute(2, 0, 1)).abs().max().item() <= 1


def _per_prompt(entry: dict) -> dict:
    """A guidance.json entry's equivalent scale of each prompt, rounded as a per-prompt matched baseline is."""
    return {p: round(run["equivalent"], 2) for p, run in zip(entry["prompts"], entry["runs"], strict=True)}


def test_the_verdict_needs_the_whole_interval_on_the_better_side() -> None:
    from freeu.apps.evaluate.stats import Estimate
    from freeu.apps.tune.report import Confirmation, nearest_preset

    lower = Confirmation([], "swd", lower_is_better=True)
    higher = Confirmation([], "clip", lower_is_better=False)
    assert lower.better(Estimate(-0.08, -0.1, -0.05)) and not lower.better(Estimate(-0.08, -0.1, 0.01))
    assert not lower.better(Estimate(0.08, 0.05, 0.1))
    assert higher.better(Estimate(0.02, 0.01, 0.03)) and not higher.better(Estimate(0.02, -0.01, 0.03))
    assert nearest_preset(freeu.FreeUConfig(1.44, 1.62, 0.98, 0.85)) == "sd21"
    assert nearest_preset(freeu.FreeUConfig(1.1, 1.2, 0.6, 0.45)) == "sdxl-sweep"
    assert nearest_preset(freeu.FreeUConfig(1.2, 1.35, 0.9, 0.2, version=1)) == "sd14-v1"  # same version first


def test_tune_on_the_class_conditional_demo_model_scores_against_matched_guidance(tmp_path, capsys) -> None:
    out = tmp_path / "tune"
    argv = ["tune", "--model", "demo-classes", "--prompt", "brick", "--prompt", "grass", "--steps", "2", "--seeds",
            "2", "--min-seeds", "1", "--budget", "12", "--confirm-seeds", "2", "--reference-count", "16",
            "--fid-features", "none", "--swd-patches", "8", "--swd-projections", "16", "--bootstrap", "50",
            "--set-bootstrap", "5", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "each candidate scored against FreeU off at its own equivalent guidance" in printed
    record = json.loads((out / "tune.json").read_text())
    last = record["rungs"][-1]
    metrics = {c["name"]: c for c in json.loads((out / "search" / "metrics.json").read_text())["configs"]}
    for name, score in last["scores"].items():
        value, baseline = (metrics[n]["set_level"]["swd"]["value"]["value"] for n in (name, f"off@{name}"))
        assert score == pytest.approx(value - baseline)
        assert metrics[name]["versus_matched_guidance"]["set_level_difference"]["swd"]["value"] == pytest.approx(
            value - baseline)  # fmt: skip
    confirm = _records(out / "confirm")
    assert {r["guidance"] for r in confirm if r["config"] in ("off", "tuned")} == {2.0}  # the model's own scale
    assert {r["prompt"] for r in confirm} == {"brick", "grass"}


def test_a_compensated_tune_samples_each_candidate_with_its_extra_guidance_taken_back(tmp_path, capsys) -> None:
    """``--compensate global``: every candidate of the search, the tuned setting and the preset of the
    confirmation sample each prompt at ``2 * scale - equivalent`` (the meter's reading of that prompt), and the search
    scores them against FreeU off with no matched baselines; the report says so; an unguided model is refused."""
    out = tmp_path / "tune"
    argv = ["tune", "--model", "demo-classes", "--prompt", "brick", "--prompt", "grass", "--steps", "2", "--seeds",
            "2", "--min-seeds", "1", "--budget", "8", "--confirm-seeds", "2", "--reference-count", "16",
            "--fid-features", "none", "--swd-patches", "8", "--swd-projections", "16", "--bootstrap", "50",
            "--set-bootstrap", "5", "--no-progress", "--compensate", "global", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "each candidate sampled with its extra guidance taken back (global)" in printed
    record = json.loads((out / "tune.json").read_text())
    assert record["fingerprint"]["compensate"] == "global" and not record["fingerprint"]["matched"]
    for folder, names in (("search", list(record["candidates"])), ("confirm", ["tuned", record["preset"]])):
        meter = json.loads((out / folder / "guidance.json").read_text())["configs"]
        records = _records(out / folder)
        assert not any(r["config"].startswith("off@") for r in records)  # compensated: no matched baselines
        seen = 0
        for r in records:
            if r["config"] == "off":
                assert r["guidance_schedule"] is None and r["guidance"] == 2.0
            elif r["config"] in names:
                equivalent = {
                    p: run["equivalent"]
                    for p, run in zip(meter[r["config"]]["prompts"], meter[r["config"]]["runs"], strict=True)
                }
                assert r["guidance_schedule"]["scale"] == [round(4.0 - equivalent[r["prompt"]], 4)]
                seen += 1
        assert seen >= 2 * len(names) if folder == "confirm" else seen >= 2
    metrics = {c["name"]: c for c in json.loads((out / "search" / "metrics.json").read_text())["configs"]}
    for name, score in record["rungs"][-1]["scores"].items():  # the candidate's own value: off is the comparison
        assert score == pytest.approx(metrics[name]["set_level"]["swd"]["value"]["value"])
    assert "- compensated (global): every candidate, the tuned setting and" in (out / "report.md").read_text()
    assert main(["tune", "--model", "demo", "--compensate", "low", "--out", str(tmp_path / "x")]) == 2
    assert "--compensate low: it takes back guidance that the meter measures" in capsys.readouterr().err


# --- tune calls freeu eval's Python API ----------------------------------------------------------------------------


def test_a_tune_calls_eval_directly_no_command_line_no_metrics_file_read_and_finds_the_same(
    tuned, tiny_demo, tmp_path, monkeypatch, capsys
) -> None:
    """Inside the process a tune builds no eval command line, parses none, writes no configs file to pass its
    candidates, redirects no output and reads no metrics.json or records.jsonl back: with all of that made to fail,
    it tunes and ends with the result of the tune that ran through the command line."""
    import argparse
    import contextlib
    import io

    from freeu.apps.evaluate import cli as eval_cli
    from freeu.apps.tune import cli as tune_cli

    def forbidden(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"freeu tune used {what}")

        return fail

    for name in ("build_parser", "add_arguments", "request_from_args", "run", "main"):
        monkeypatch.setattr(eval_cli, name, forbidden(f"freeu eval's {name}"))
    monkeypatch.setattr(contextlib, "redirect_stdout", forbidden("a redirected stdout"))
    parsed: list[str] = []
    parse_args = argparse.ArgumentParser.parse_args

    def parse_once(self, *args, **kwargs):
        parsed.append(self.prog)
        if len(parsed) > 1:
            raise AssertionError(f"freeu tune parsed a second command line ({self.prog})")
        return parse_args(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_once)
    real_open = io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if Path(str(file)).name in ("metrics.json", "records.jsonl") and "r" in mode and "+" not in mode:
            raise AssertionError(f"freeu tune read {file} back")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr("builtins.open", guarded_open)
    out = tmp_path / "run"
    assert tune_cli.main(["--model", str(tiny_demo), *FAST, *SEARCH, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    monkeypatch.undo()
    assert parsed == ["freeu tune"]
    assert not list(out.rglob("configs-*.json"))  # the candidates travel as values, not through a file
    reference = json.loads((tuned[0] / "tune.json").read_text())
    again = json.loads((out / "tune.json").read_text())
    assert again["winner"] == reference["winner"] and again["candidates"] == reference["candidates"]
    for a, b in zip(reference["rungs"], again["rungs"], strict=True):
        assert b["scores"] == pytest.approx(a["scores"], rel=1e-9)
    assert tomllib.loads((out / "preset.toml").read_text())["tune"]["confirmation"] == tomllib.loads(
        (tuned[0] / "preset.toml").read_text())["tune"]["confirmation"]  # fmt: skip
    assert (out / "confirm" / "metrics.json").is_file() and "wrote" in printed
    # each evaluation's equivalent freeu eval command is in the log, and reruns as that command line
    log = (out / "log.txt").read_text()
    assert log.count("# freeu eval ") == len(again["rungs"]) + 1 and "--config 'tuned:b1=" in log


def test_a_candidate_is_the_configuration_its_spec_gave_so_earlier_tune_folders_resume(tiny_demo) -> None:
    """Earlier versions passed each candidate to eval as a spec in a JSON file; the configuration tune now builds
    directly is the same (same settings, same image keys), and the fingerprint in tune.json has the same keys and
    values as the one they wrote from the parsed arguments, so their folders resume."""
    from freeu.apps.evaluate.configs import expand_spec
    from freeu.apps.evaluate.generation import Unit, image_key
    from freeu.apps.tune import cli as tune_cli
    from freeu.apps.tune.runner import candidate_config

    for texts in [(), ("version=1,2", "convention=official,diffusers", "start=0:0.5", "stop=0.6:1")]:
        for i, settings in enumerate(draw_candidates(parse_space(texts), 40, seed=5)):
            name = f"c{i:02d}"
            spec = " ".join(f"{k}={v}" for k, v in settings.items())
            old, new = expand_spec(name, json.loads(json.dumps(spec)))[0], candidate_config(name, settings)
            assert new == old
            assert image_key({"m": 1}, new, Unit(0, 3), 2.0) == image_key({"m": 1}, old, Unit(0, 3), 2.0)
    argv = ["--model", str(tiny_demo), "--size", "32x16", "--eval-size", "24", "--guidance", "3", *FAST, *SEARCH]
    args = tune_cli.build_parser().parse_args(argv)
    keys = ("model", "steps", "negative_prompt", "guidance", "size", "dtype", "seeds", "first_seed", "budget", "eta",
            "min_seeds", "search_seed", "metric", "reference", "reference_count", "eval_size", "swd_levels",
            "swd_patches", "swd_projections")  # fmt: skip
    written = {k: getattr(args, k) for k in keys}
    written.update(space="S", prompts=["a"], format=1, matched=True, guidance_units=args.guidance_units)
    settings = tune_cli.settings_from_args(args)
    assert settings.fingerprint("S", ["a"], True) == json.loads(json.dumps(written))
