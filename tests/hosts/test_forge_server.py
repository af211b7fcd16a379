"""The Forge extension in the real Forge, the way its users run it: Forge's web UI and API on 127.0.0.1 (CPU) load the
extension from the test's data folder, over a random-weight SD 1.5 checkpoint the test writes with Forge's own
classes, and every check goes through ``/sdapi/v1/txt2img`` (3 Euler steps). Forge's built-in FreeU runs beside it
as the reference. About two and a half minutes on 2 cores, marked slow."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from forge_host import EXTENSION, subprocess_env
from host_python import python_without_freeu

import freeu

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
OURS = "FreeU (freeu)"
BUILTIN = "FreeU Integrated (SD 1.x, SD 2.x, SDXL)"
#: the built-in's settings (version 2, stages by width, no window): b1, b2, s1, s2, start step, end step
BUILTIN_ARGS = [True, 1.3, 1.4, 0.9, 0.2, 0.0, 1.0]
#: the same FreeU in the extension's arguments by position: enabled, preset, b1, b2, s1, s2, version, convention,
#: threshold, start, end, ramp
SAME = [True, "custom", 1.3, 1.4, 0.9, 0.2, "2", "official", 1, 0.0, 1.0, 0.0]
#: other settings, by name: every control away from its default (version 1, decoder levels, a ramped window)
OTHER = {"enabled": True, "preset": "custom", "b1": 1.2, "b2": 1.3, "s1": 0.8, "s2": 0.5, "version": "1",
         "convention": "diffusers", "threshold": 2, "start": 0.2, "end": 0.9, "ramp": 0.1,
         "stages": "3:b=1.2,s=0.8; 1:high=1.1,cutoff=0.2"}  # fmt: skip
FLAGS = ["--skip-prepare-environment", "--skip-install", "--skip-python-version-check", "--skip-torch-cuda-test",
         "--skip-version-check", "--always-cpu", "--api", "--server-name", "127.0.0.1",
         "--no-download-sd-model"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Forge:
    """A running Forge's API."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def txt2img(self, size: int, scripts: dict | None = None) -> tuple[np.ndarray, str]:
        """One image of the test prompt and its infotext."""
        body = dict(prompt="a red fox in snow", seed=7, steps=3, width=size, height=size, sampler_name="Euler",
                    cfg_scale=5.0, alwayson_scripts=scripts or {})  # fmt: skip
        return self._generate(body)

    def paste(self, infotext: str) -> tuple[np.ndarray, str]:
        """What the infotext alone gives: the API reads it as the UI's paste button does, script settings included.
        (``styles`` is set because Forge's reader fails on that field's parameterised type otherwise.)"""
        return self._generate({"infotext": infotext, "styles": []})

    def _generate(self, body: dict) -> tuple[np.ndarray, str]:
        request = urllib.request.Request(self.url + "/sdapi/v1/txt2img", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"txt2img answered {error.code}: {error.read()[:2000]!r}") from None
        from PIL import Image

        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))
        return image, json.loads(answer["info"])["infotexts"][0]


def ours(*args) -> dict:
    return {OURS: {"args": list(args)}}


def freeu_entries(infotext: str) -> dict[str, str]:
    """The extension's infotext entries (``FreeU name: value``; the built-in writes ``freeu_name``)."""
    return dict(re.findall(r"FreeU (\w+): (\"[^\"]*\"|[^,]+)", infotext))


def differs(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def server(forge, tmp_path_factory):
    forge_dir, python = forge
    data = tmp_path_factory.mktemp("forge-data")
    scratch = data / "hf-home"
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    done = subprocess.run(
        [str(python), str(HERE / "forge_write_sd15.py"), str(forge_dir), str(checkpoints / "sd15_random.safetensors")],
        capture_output=True, text=True, timeout=600, env=subprocess_env(scratch),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (data / "extensions").mkdir()
    (data / "extensions" / "freeu").symlink_to(EXTENSION, target_is_directory=True)
    with running_forge(forge_dir, python, data, scratch, FLAGS) as (api, log_path, titles):
        assert OURS.lower() in titles and BUILTIN.lower() in titles, sorted(titles)
        yield api, log_path


@contextlib.contextmanager
def running_forge(forge_dir: Path, python: Path, data: Path, scratch: Path, flags: list[str], env: dict | None = None):
    """Forge serving its API on 127.0.0.1 from ``data`` (``--data-dir``), run by ``python``: ``(api, log, script
    titles)`` once it answers; stopped on exit."""
    port = _free_port()
    log_path = data / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(python), str(HERE / "forge_launch.py"), str(forge_dir), *flags, "--port", str(port),
             "--data-dir", str(data)],
            stdout=log, stderr=subprocess.STDOUT, env={**subprocess_env(scratch), **(env or {})},
            start_new_session=True,
        )  # fmt: skip
    try:
        api = Forge(port)
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                titles = {script["name"] for script in api.get("/sdapi/v1/script-info")}
                break
            except OSError:
                assert time.monotonic() < deadline, "Forge did not answer in 300 s: " + log_path.read_text()[-3000:]
                time.sleep(1)
        yield api, log_path, titles
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def measured(server, tmp_path_factory) -> dict:
    """Every request once, in this order (the server keeps its state between them, as it does for users)."""
    api, _ = server
    run = {}
    run["off"] = api.txt2img(128)
    run["builtin"] = api.txt2img(128, {BUILTIN: {"args": BUILTIN_ARGS}})
    run["same"] = api.txt2img(128, ours(*SAME))
    run["identity"] = api.txt2img(128, ours(True, "custom", 1.0, 1.0, 1.0, 1.0, "2", "official", 1, 0.0, 1.0, 0.0))
    run["other"] = api.txt2img(128, ours(OTHER))
    run["pasted"] = api.paste(run["other"][1])
    with ThreadPoolExecutor(2) as pool:  # two users at once; Forge may queue them, each keeps its settings
        same = pool.submit(api.txt2img, 128, ours({"enabled": True, "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}))
        other = pool.submit(api.txt2img, 128, ours(*OTHER.values()))
        run["same_concurrent"], run["other_concurrent"] = same.result(), other.result()
    run["off_again"] = api.txt2img(128)
    run["builtin_64"] = api.txt2img(64, {BUILTIN: {"args": [True, 1.5, 1.6, 0.9, 0.2, 0.0, 1.0]}})
    run["auto_64"] = api.txt2img(64, ours({"enabled": True}))
    run["refused_factor"] = api.txt2img(64, ours({"enabled": True, "b1": -1.0}))
    run["refused_name"] = api.txt2img(64, ours({"enabled": True, "b9": 1.0}))
    # OTHER's settings from a preset file, as freeu tune writes one; the stage text still from the script's box
    api, log_path = server
    folder = log_path.parent / "models" / "freeu_presets"  # models/freeu_presets of the server's --data-dir
    folder.mkdir(parents=True, exist_ok=True)
    preset = folder / "other.toml"
    preset.write_text('name = "other"\n[freeu]\nb1 = 1.2\nb2 = 1.3\ns1 = 0.8\ns2 = 0.5\nversion = 1\n'
                      'convention = "diffusers"\nthreshold = 2\nstart = 0.2\nstop = 0.9\nramp = 0.1\n')  # fmt: skip
    run["preset_file"] = api.txt2img(128, ours({"enabled": True, "preset": "other.toml", "stages": OTHER["stages"]}))
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.toml"
    outside.write_text(preset.read_text())
    run["preset_outside"] = api.txt2img(64, ours({"enabled": True, "preset": str(outside)}))
    return run


def test_with_the_builtins_factors_the_extension_equals_the_builtin_within_one_level(measured) -> None:
    (off, _), (builtin, _), (same, _) = measured["off"], measured["builtin"], measured["same"]
    assert differs(same, builtin) <= 1
    assert differs(same, off) > 20  # FreeU changes the image: the agreement is not two copies of "off"


def test_identity_factors_and_off_after_freeu_requests_equal_off_exactly(measured) -> None:
    off = measured["off"][0]
    assert np.array_equal(measured["identity"][0], off)
    assert np.array_equal(measured["off_again"][0], off)
    assert not freeu_entries(measured["off"][1]) and not freeu_entries(measured["off_again"][1])


def test_at_64_px_the_extension_is_finite_and_not_black_where_the_builtin_is_black(measured) -> None:
    builtin, (auto, infotext) = measured["builtin_64"][0], measured["auto_64"]
    assert builtin.max() == 0  # the built-in's version-2 map divides 0 by 0 at the 1x1 deepest feature
    assert auto.std() > 10 and auto.max() > 100
    # auto found SD 1.5 from the U-Net's layout: the built-in's factors above are that preset's
    entries = freeu_entries(infotext)
    assert (entries["preset"], entries["b1"], entries["b2"], entries["s1"], entries["s2"]) == (
        "auto", "1.5", "1.6", "0.9", "0.2"
    )  # fmt: skip


def test_the_infotext_holds_every_setting_and_pasting_it_reproduces_the_image(measured) -> None:
    (other, infotext), (pasted, pasted_infotext) = measured["other"], measured["pasted"]
    assert freeu_entries(infotext) == {
        "preset": "custom", "b1": "1.2", "b2": "1.3", "s1": "0.8", "s2": "0.5", "version": "1",
        "convention": "diffusers", "threshold": "2", "start": "0.2", "end": "0.9", "ramp": "0.1",
        "stages": '"3:b=1.2,s=0.8; 1:high=1.1,cutoff=0.2"',
    }  # fmt: skip
    assert np.array_equal(pasted, other)
    assert pasted_infotext == infotext
    # FreeU ran (at the steps inside its window) and with these settings, not the others
    assert differs(other, measured["off"][0]) > 5 and differs(other, measured["same"][0]) > 5


def test_requests_sent_together_each_get_their_own_settings(measured) -> None:
    # by name (factors without a preset mean custom) and by position: the same images as alone
    assert np.array_equal(measured["same_concurrent"][0], measured["same"][0])
    assert np.array_equal(measured["other_concurrent"][0], measured["other"][0])
    assert freeu_entries(measured["same_concurrent"][1]) == freeu_entries(measured["same"][1])
    assert freeu_entries(measured["other_concurrent"][1]) == freeu_entries(measured["other"][1])


def test_a_refused_setting_is_written_into_the_infotext_not_ignored(measured) -> None:
    for name, message in [("refused_factor", "b1 must be"), ("refused_name", "unknown argument(s) ['b9']")]:
        infotext = measured[name][1]
        error = freeu_entries(infotext).get("error", "")
        assert message in error and error.strip('"').startswith(OURS), infotext
        assert "FreeU b1:" not in infotext  # nothing claims FreeU ran


def test_a_preset_file_gives_the_settings_it_holds(measured) -> None:
    image, infotext = measured["preset_file"]
    assert np.array_equal(image, measured["other"][0])  # the same settings as OTHER, from the file
    entries = freeu_entries(infotext)
    assert entries["preset"].strip('"') == "other.toml" and entries["threshold"] == "2"


def test_a_request_cannot_make_the_script_open_a_file_outside_its_preset_folder(measured) -> None:
    infotext = measured["preset_outside"][1]
    error = freeu_entries(infotext).get("error", "")
    assert "is not a name inside" in error and "freeu_presets" in error, infotext
    assert "FreeU b1:" not in infotext  # nothing claims FreeU ran


def test_installed_from_url_as_forge_does(forge, server, tmp_path) -> None:
    """The extension as ``make forge-extension`` writes it (its own repository), ``git clone``d into ``extensions/``
    as "Install from URL" does, into a Forge whose Python has no freeu: Forge's extension installers run its
    ``install.py``, which installs freeu from a folder of built wheels (the only index), and the extension then
    changes the image."""
    pytest.importorskip("build")
    forge_dir, forge_python = forge
    root = EXTENSION.parents[1]
    wheels, exported, data = tmp_path / "wheels", tmp_path / "exported", tmp_path / "data"
    for argv in ([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels), str(root)],
                 [sys.executable, str(root / "tools" / "export_hosts.py"), "forge", str(exported)]):  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    (data / "extensions").mkdir(parents=True)
    done = subprocess.run(["git", "clone", "--quiet", str(exported / "freeu"), str(data / "extensions" / "freeu")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    _, server_log = server
    (checkpoints / "sd15_random.safetensors").symlink_to(server_log.parent / "models" / "Stable-diffusion" /
                                                         "sd15_random.safetensors")  # fmt: skip
    python = python_without_freeu(forge_python, tmp_path / "python")
    assert subprocess.run([str(python), "-c", "import freeu"], capture_output=True).returncode == 1
    flags = [f for f in FLAGS if f != "--skip-install"]  # Forge's pip helper does nothing under --skip-install
    env = {"FREEU_RUN_EXTENSION_INSTALLERS": "1", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    with running_forge(forge_dir, python, data, tmp_path / "hf-home", flags, env) as (api, log_path, titles):
        assert OURS.lower() in titles, sorted(titles)
        off = api.txt2img(64)
        on = api.txt2img(64, ours({"enabled": True, "preset": "sd15"}))
    log = log_path.read_text()
    assert f"Installing freeu {freeu.__version__} for the FreeU (freeu) extension" in log, log[-3000:]
    version = subprocess.run([str(python), "-c", "import freeu; print(freeu.__version__)"], capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
    assert version == freeu.__version__ and "made for freeu" not in log
    assert differs(on[0], off[0]) > 0 and "FreeU b1: 1.5" in on[1]
