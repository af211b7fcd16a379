"""freeu ui: every control at the Python level (Studio, no Gradio), the page's refusals, and the page itself end to
end in headless Chromium (skipped, with the reason, when Chromium, playwright or Gradio is missing)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from freeu.apps.imaging import read_settings
from freeu.apps.runtime import Model, load_model
from freeu.apps.ui import Cancelled, Studio, parse_values, register

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")
# Gradio 6.31's queue calls pandas 3 options that pandas deprecates: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

STEPS = 5
PAGE_STEPS = 25  # the page runs the demo as shipped (a 25-step DDIM run takes about a second here)
BASE = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2, version=2, convention="official", start=0.0, stop=1.0)
CHROMIUM = os.environ.get("FREEU_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "ui.png"


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def demo_model() -> Model:
    return load_model("demo", device="cpu")


@pytest.fixture
def studio(demo_model, tmp_path) -> Studio:
    return Studio(demo_model, tmp_path)


@pytest.fixture(scope="module")
def class_model() -> Model:
    return load_model("demo-classes", device="cpu")


def test_each_control_changes_the_freeu_image_and_never_the_cached_baseline(studio) -> None:
    sampling = studio.sampling(None, 3, STEPS, None)
    first = studio.generate(sampling, studio.config(**BASE))
    assert studio.baseline_renders == 1 and not first.baseline_cached
    assert np.abs(pixels(first.freeu) - pixels(first.baseline)).max() > 8  # FreeU does something at all
    changes = {
        "b1": 1.1, "b2": 1.0, "s1": 0.4, "s2": 1.0, "version": "1", "convention": "diffusers", "start": 0.5,
        "stop": 0.5,
    }  # fmt: skip
    for name, value in changes.items():
        result = studio.generate(sampling, studio.config(**{**BASE, name: value}))
        assert result.baseline_cached, name
        assert studio.baseline_renders == 1, name
        assert np.array_equal(pixels(result.baseline), pixels(first.baseline)), name
        assert result.baseline_path == first.baseline_path, name
        change = np.abs(pixels(result.freeu) - pixels(first.freeu)).max()
        assert change > 0, f"{name}={value!r} did not change the FreeU image"
        assert read_settings(result.freeu_path)["freeu"][name] == (1 if name == "version" else value)
    # back to the first setting: the same FreeU image again (nothing left installed by the runs in between)
    again = studio.generate(sampling, studio.config(**BASE))
    assert np.array_equal(pixels(again.freeu), pixels(first.freeu))


def test_baseline_is_rendered_again_only_when_its_own_settings_change(studio) -> None:
    config = studio.config(**BASE)
    first = studio.generate(studio.sampling(None, 0, STEPS, None), config)
    other_seed = studio.generate(studio.sampling(None, 1, STEPS, None), config)
    assert studio.baseline_renders == 2 and not other_seed.baseline_cached
    assert np.abs(pixels(other_seed.baseline) - pixels(first.baseline)).max() > 8
    more_steps = studio.generate(studio.sampling(None, 1, STEPS + 1, None), config)
    assert studio.baseline_renders == 3 and not more_steps.baseline_cached
    # the demo model takes no prompt and no guidance: they do not count
    same = studio.generate(studio.sampling("a cat", 1, STEPS + 1, 3.0), config.replace(b1=1.2))
    assert studio.baseline_renders == 3 and same.baseline_cached


def test_downloads_are_model_size_pngs_that_carry_their_settings(studio) -> None:
    result = studio.generate(studio.sampling(None, 7, STEPS, None), studio.config(**{**BASE, "b1": 1.3}))
    on, off = read_settings(result.freeu_path), read_settings(result.baseline_path)
    assert on["role"] == "freeu" and off["role"] == "baseline" and off["freeu"] is None
    assert on["seed"] == off["seed"] == 7 and on["steps"] == STEPS and on["model"] == "demo"
    assert on["freeu"] == {**BASE, "b1": 1.3, "threshold": 1, "ramp": 0.0}
    from PIL import Image

    with Image.open(result.freeu_path) as img:
        assert img.size == (32, 32)
        assert np.array_equal(pixels(img), pixels(result.freeu))


def test_grid_cells_equal_single_renders_and_the_png_names_the_axes(studio) -> None:
    sampling = studio.sampling(None, 2, STEPS, None)
    config = studio.config(**BASE)
    picture, path, cells = studio.grid(sampling, config, ("b1", [1.0, 1.4]), ("s2", [1.0, 0.3, 0.0]))
    assert len(cells) == 2 and all(len(row) == 3 for row in cells)
    for r, b1 in enumerate([1.0, 1.4]):
        for c, s2 in enumerate([1.0, 0.3, 0.0]):
            single = studio.generate(sampling, config.replace(b1=b1, s2=s2)).freeu
            assert np.abs(pixels(cells[r][c]) - pixels(single)).max() <= 1, (b1, s2)  # batch vs one: rounding only
    assert np.abs(pixels(cells[0][0]) - pixels(cells[1][2])).max() > 8
    settings = read_settings(path)
    assert settings["grid"] == {"rows": {"b1": [1.0, 1.4]}, "cols": {"s2": [1.0, 0.3, 0.0]}}
    assert settings["freeu"]["s1"] == 0.9 and picture.width > 3 * 128


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(b1=-0.5), "b1"),
        (dict(s2=float("nan")), "s2"),
        (dict(start=0.7, stop=0.3), "start must be < stop"),
        (dict(version="3"), "version"),
        (dict(convention="comfy"), "convention"),
    ],
)
def test_bad_freeu_values_are_refused_naming_the_parameter(change, message) -> None:
    with pytest.raises(ValueError, match=message):
        Studio.config(**{**BASE, **change})


def test_bad_sampling_and_grid_values_are_refused(studio) -> None:
    for args, message in [((None, 1.5, 4, None), "seed"), ((None, 0, 0, None), "steps"), ((None, -1, 4, None), "seed")]:
        with pytest.raises(ValueError, match=message):
            studio.sampling(*args)
    sampling, config = studio.sampling(None, 0, 2, None), studio.config(**BASE)
    with pytest.raises(ValueError, match="different factors"):
        studio.grid(sampling, config, ("b1", [1.0]), ("b1", [1.2]))
    with pytest.raises(ValueError, match="at most 64 cells"):
        studio.grid(sampling, config, ("b1", [1.0] * 9), ("s1", [1.0] * 8))
    with pytest.raises(ValueError, match=r"rows \(b1\) must be a number, a list"):
        parse_values("rows (b1)", "1.0, big")
    assert parse_values("x", "1, 1.2 1.4") == [1.0, 1.2, 1.4]
    assert studio.baseline_renders == 0


def test_progress_counts_the_steps_and_stop_cancels_at_the_next_one(studio) -> None:
    sampling, config = studio.sampling(None, 0, STEPS, None), studio.config(**BASE)
    seen: list[tuple[tuple[int, int], str]] = []
    studio.generate(sampling, config, lambda value, desc: seen.append((value, desc)))
    assert seen == [((i, STEPS), "FreeU off") for i in range(STEPS)] + [((i, STEPS), "FreeU on") for i in range(STEPS)]

    calls: list[int] = []

    def stop_after_two(value, desc) -> None:
        calls.append(value[0])
        if len(calls) == 2:
            studio.cancel()  # as the Stop button does, from another thread in the page

    with pytest.raises(Cancelled):
        studio.generate(studio.sampling(None, 0, STEPS, None), config.replace(b1=1.1), stop_after_two)
    assert calls == [0, 1]  # the baseline was cached; FreeU stopped at its third step
    # nothing stays installed or cancelled: the next run equals a fresh one
    after = studio.generate(sampling, config)
    fresh = Studio(studio.model, studio.out_dir / "fresh").generate(sampling, config)
    assert np.array_equal(pixels(after.freeu), pixels(fresh.freeu))


def test_parser_binds_to_loopback_by_default() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ui"])
    assert (args.command, args.host, args.model, args.port) == ("ui", "127.0.0.1", "demo-classes", None)
    args = parser.parse_args(["ui", "--model", "some/folder", "--port", "8000", "--host", "0.0.0.0"])
    assert (args.model, args.port, args.host) == ("some/folder", 8000, "0.0.0.0")


def test_a_class_conditional_model_takes_its_classes_and_caches_per_class(class_model, tmp_path) -> None:
    studio = Studio(class_model, tmp_path)
    config = studio.config(**BASE)
    first = studio.generate(studio.sampling("grass", 0, STEPS, 2.0), config)
    again = studio.generate(studio.sampling("grass", 0, STEPS, 2.0), config.replace(b1=1.0))
    assert again.baseline_cached and np.array_equal(pixels(again.baseline), pixels(first.baseline))
    other = studio.generate(studio.sampling("brick", 0, STEPS, 2.0), config)
    assert not other.baseline_cached and np.abs(pixels(other.baseline) - pixels(first.baseline)).max() > 0
    from freeu.apps.runtime import Request

    expected = class_model.sample([0], Request(steps=STEPS, prompt="brick", guidance=2.0))[0]
    assert np.array_equal(pixels(other.baseline), pixels(expected))
    settings = read_settings(other.freeu_path)
    assert (settings["prompt"], settings["guidance"], settings["model"]) == ("brick", 2.0, "demo-classes")
    with pytest.raises(ValueError, match=r"class must be one of \['astronaut', 'brick'.*got 'a cat'"):
        studio.sampling("a cat", 0, STEPS, 2.0)


def test_a_text_to_image_pipeline_takes_a_prompt_and_caches_per_prompt(tmp_path) -> None:
    pytest.importorskip("transformers")
    import tiny_pipelines

    model = load_model(str(tiny_pipelines.sd_pipeline(tmp_path / "sd")), device="cpu")
    studio = Studio(model, tmp_path / "out")
    assert model.takes_prompt and model.guided and (model.size.width, model.size.height) == (32, 32)
    config = studio.config(**BASE)
    first = studio.generate(studio.sampling("a red fox", 0, 2, 7.5), config)
    moved = studio.generate(studio.sampling("a red fox", 0, 2, 7.5), config.replace(b1=1.0, s1=1.0))
    assert moved.baseline_cached and np.array_equal(pixels(moved.baseline), pixels(first.baseline))
    assert np.abs(pixels(moved.freeu) - pixels(first.freeu)).max() > 0
    for prompt, guidance in (("a blue cat", 7.5), ("a blue cat", 2.0)):
        result = studio.generate(studio.sampling(prompt, 0, 2, guidance), config)
        assert not result.baseline_cached
    assert studio.baseline_renders == 3
    assert read_settings(result.freeu_path)["prompt"] == "a blue cat"


# ----------------------------------------------------------------------------------------------------- browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(class_model, tmp_path_factory):
    """The page of the default model (the class-conditional demo model) on a free loopback port, served from a
    background thread, closed afterwards."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio", reason="the page needs Gradio: pip install 'freeu[ui]'")
    from freeu.apps.ui import build_app, launch

    studio = Studio(class_model, tmp_path_factory.mktemp("ui"))
    app = build_app(studio, steps=PAGE_STEPS)
    port = _free_port()
    launch(app, port=port, block=False, allowed=[studio.out_dir])
    try:
        yield f"http://127.0.0.1:{port}", studio
    finally:
        app.close()


@pytest.fixture
def page(server):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FREEU_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install playwright")
    url, _ = server
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True, viewport={"width": 1400, "height": 1000})
        outside: list[str] = []

        def loopback_only(route) -> None:  # the page must work with no network: refuse and record the rest
            if route.request.url.startswith(url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", loopback_only)
        page.set_default_timeout(30_000)
        yield page, outside
        browser.close()


def _set_slider(page, name: str, value: float) -> None:
    box = page.locator(f"#{name} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def test_page_in_chromium_moves_a_slider_generates_and_downloads_a_png_with_settings(server, page, tmp_path) -> None:
    url, studio = server
    page, outside = page
    page.goto(url)
    page.wait_for_selector("#generate")
    _set_slider(page, "b1", 1.23)
    page.locator("#seed input").fill("1")
    page.locator("#generate").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#baseline img, #freeu img').length == 2", timeout=30_000
    )  # fmt: skip
    page.wait_for_selector("#download-freeu:not([disabled])")
    with page.expect_download() as download:
        page.locator("#download-freeu").click()
    saved = tmp_path / "freeu.png"
    download.value.save_as(saved)
    settings = read_settings(saved)
    assert settings["freeu"]["b1"] == 1.23 and settings["seed"] == 1 and settings["role"] == "freeu"
    assert settings["steps"] == PAGE_STEPS and settings["freeu"]["b2"] == 1.6
    # the default model's class and guidance: the class box starts at its default class, the slider at its scale
    assert settings["prompt"] == "brick" and settings["guidance"] == 2.0 and settings["model"] == "demo-classes"

    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    from PIL import Image

    with Image.open(shot) as img:
        assert img.width >= 1000 and np.asarray(img.convert("L")).std() > 10
    if os.environ.get("FREEU_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # another class from the class box: FreeU off and on rendered for it
    box = page.locator("#prompt input")
    box.click()
    box.fill("grass")
    page.get_by_role("option", name="grass").click()
    before = set(studio.out_dir.glob("*.png"))
    page.locator("#generate").click()
    prompts: list[str] = []
    for _ in range(300):  # another class: FreeU off is rendered again, then FreeU on
        written = sorted(set(studio.out_dir.glob("*.png")) - before)
        try:
            prompts = [read_settings(p)["prompt"] for p in written]
        except (OSError, ValueError, KeyError):  # a PNG still being written
            prompts = []
        if len(prompts) == 2:
            break
        threading.Event().wait(0.1)
    assert prompts == ["grass", "grass"]

    # the grid tab: rows b1 x columns s1 (the defaults, 3 x 3) in one batch, downloadable with its axes
    page.get_by_role("tab", name="Grid").click()
    page.locator("#generate-grid").click()
    page.wait_for_selector("#grid-image img")
    page.wait_for_selector("#download-grid:not([disabled])")
    with page.expect_download() as download:
        page.locator("#download-grid").click()
    download.value.save_as(tmp_path / "grid.png")
    grid_settings = read_settings(tmp_path / "grid.png")
    assert grid_settings["grid"] == {"rows": {"b1": [1.0, 1.2, 1.4]}, "cols": {"s1": [1.0, 0.6, 0.2]}}
    assert grid_settings["seed"] == 1 and grid_settings["freeu"]["s2"] == 0.2

    # a bad value is refused in the page, with the parameter named, and nothing is rendered
    renders = studio.baseline_renders
    _set_slider(page, "start", 0.8)
    _set_slider(page, "stop", 0.2)
    page.locator("#generate").click()
    page.get_by_text("start must be < stop").first.wait_for()
    assert studio.baseline_renders == renders
    assert outside == []


def test_stop_button_cancels_a_running_generation(server, page) -> None:
    url, studio = server
    page, _ = page
    started = threading.Event()
    model = studio.model
    original = model.sample

    def slow(*args, **kwargs):  # hold the run until the test has pressed Stop
        started.set()
        for _ in range(200):
            if studio._cancel.is_set():
                break
            threading.Event().wait(0.05)
        return original(*args, **kwargs)

    model.sample = slow
    renders = studio.baseline_renders
    try:
        page.goto(url)
        page.wait_for_selector("#generate")
        page.locator("#seed input").fill("11")
        page.locator("#generate").click()
        assert started.wait(20)
        page.locator("#stop-button").click()
        threading.Event().wait(2.0)
        assert studio._cancel.is_set()  # the run stopped at its first step: nothing rendered, nothing shown
        assert studio.baseline_renders == renders
        assert page.locator("#baseline img").count() == 0
    finally:
        del model.sample


def test_the_pages_stage_settings_use_the_one_grammar_and_are_refused_naming_the_part() -> None:
    pytest.importorskip("gradio")
    import freeu
    from freeu.apps.ui import Studio

    config = Studio.config(b1=1.5, b2=1.6, s1=0.9, s2=0.2, version="2", convention="official", start=0.0,
                           stop=1.0, stages="3:b=1.2,s=0.5; 1:cutoff=0.3")  # fmt: skip
    assert config.stage(3) == freeu.Stage(1.2, 0.5) and config.stage(1).cutoff == 0.3
    assert Studio.config(b1=1.5, b2=1.6, s1=0.9, s2=0.2, stages="") == freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2)
    with pytest.raises(ValueError, match="stage 2: window must be OFFSET/WIDTH"):
        Studio.config(b1=1.5, b2=1.6, s1=0.9, s2=0.2, stages="2:window=0.3")
