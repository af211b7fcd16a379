"""One settings front door: the six entry points (``freeu.apply``, the command line, eval's configurations, the page,
the ComfyUI node, the Forge script) give the same ``FreeUConfig`` for the same settings, on a diffusers U-Net and on
an LDM U-Net (its settings dict in the hosts), and refuse the same bad settings naming the field in their own words.

The ComfyUI node and the Forge script are imported here with their hosts' modules stubbed (their settings logic needs
only ``freeu``); tests/hosts runs them in the real hosts.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from conftest import sd15_unet, sdxl_unet

import freeu
from freeu.apps.cli import build_parser
from freeu.apps.evaluate.configs import parse_config_arg, resolve_auto
from freeu.apps.options import freeu_settings, resolve_freeu
from freeu.apps.ui import Studio, preset_controls
from freeu.settings import detect_preset

ROOT = Path(__file__).resolve().parents[2]
LDM_CONFIG = {"model_channels": 32, "context_dim": 32, "num_res_blocks": [2, 2, 2, 2], "adm_in_channels": None,
              "use_linear_in_transformer": False}  # fmt: skip


# ---- the hosts' modules, stubbed -----------------------------------------------------------------------------------


class _Input:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _load(path: Path, name: str, stubs: dict[str, types.ModuleType], monkeypatch) -> types.ModuleType:
    for key, module in stubs.items():
        monkeypatch.setitem(sys.modules, key, module)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def comfy_node(monkeypatch, tmp_path_factory):
    kind = types.SimpleNamespace(Input=_Input, Output=_Input)
    io = types.SimpleNamespace(ComfyNode=object, Schema=lambda **k: k, NodeOutput=lambda *a: a, Model=kind,
                               Combo=kind, Float=kind, Int=kind, String=kind)  # fmt: skip
    folders: dict[str, Any] = {}
    models = str(tmp_path_factory.mktemp("models"))
    folder_paths = _module("folder_paths", folder_names_and_paths=folders, models_dir=models,
                           get_folder_paths=lambda name: list(folders[name][0]),
                           get_filename_list=lambda name: [])  # fmt: skip
    stubs = {"comfy_api": _module("comfy_api"), "comfy_api.latest": _module("comfy_api.latest", IO=io,
             ComfyExtension=object), "folder_paths": folder_paths}  # fmt: skip
    return _load(ROOT / "integrations/comfyui/__init__.py", "freeu_comfy_pack", stubs, monkeypatch)


@pytest.fixture
def forge_script(monkeypatch, tmp_path_factory):
    stubs = {
        "gradio": _module("gradio"),
        "modules": _module("modules"),
        "modules.scripts": _module("modules.scripts", Script=object, AlwaysVisible=object()),
        "modules.ui_components": _module("modules.ui_components", InputAccordion=object),
        "modules.paths_internal": _module("modules.paths_internal", models_path=str(tmp_path_factory.mktemp("m"))),
    }
    return _load(ROOT / "integrations/forge/scripts/freeu_forge.py", "freeu_forge_script", stubs, monkeypatch)


class ComfyModel:
    """What the node reads of a ComfyUI MODEL: the LDM settings, the noise schedule, clone and patch registration."""

    def __init__(self, unet_config: dict[str, Any]) -> None:
        diffusion = type("UNetModel", (), {})()
        self.model = types.SimpleNamespace(diffusion_model=diffusion,
                                           model_config=types.SimpleNamespace(unet_config=unet_config))  # fmt: skip
        self.model_options: dict[str, Any] = {}
        self.patches: list[Any] = []

    def get_model_object(self, name: str) -> Any:
        return types.SimpleNamespace(percent_to_sigma=lambda p: 14.6 * (1 - p))

    def clone(self) -> ComfyModel:
        return ComfyModel(self.model.model_config.unet_config)

    def set_model_output_block_patch(self, patch: Any) -> None:
        self.patches.append(patch)


# ---- the settings, in each caller's vocabulary ---------------------------------------------------------------------


def _cases(tmp_path: Path) -> dict[str, dict[str, Any]]:
    file = tmp_path / "tuned.toml"
    file.write_text('name = "tuned"\n[freeu]\nb1 = 1.2\nb2 = 1.3\ns1 = 0.9\ns2 = 0.6\nstart = 0.1\n')
    return {
        "name": dict(preset="sd21", window=dict(stop=0.8)),
        "auto": dict(preset="auto", window=dict(start=0.2)),
        "file": dict(preset=str(file), window={}),
        "custom": dict(preset=None, factors=dict(b1=1.1, b2=1.2, s1=0.8, s2=0.7), version=1,
                       window=dict(start=0.1, stop=0.9), stages="3:b=1.05,s=0.95; 1:high=1.1"),
    }  # fmt: skip


def via_apply(unet, case):
    factors, stages = case.get("factors", {}), case.get("stages")
    with freeu.apply(unet, preset=case["preset"], version=case.get("version"), stages=stages, **factors,
                     **case["window"]) as handle:  # fmt: skip
        return handle.config


def via_cli(unet, case):
    argv = ["generate", "--model", "x", "--prompt", "p"]
    if case["preset"] is not None:
        argv += ["--preset", case["preset"]]
    for key, value in {**case.get("factors", {}), **case["window"]}.items():
        argv += [f"--{key}", str(value)]
    if case.get("version"):
        argv += ["--version", str(case["version"])]
    if case.get("stages"):
        for part in case["stages"].split(";"):
            argv += ["--stage", part.strip()]
    args = build_parser().parse_args(argv)
    return resolve_freeu(types.SimpleNamespace(unet=unet), freeu_settings(args)).config


def via_eval(unet, case):
    parts = [case["preset"]] if case["preset"] is not None else []
    parts += [f"{k}={v}" for k, v in {**case.get("factors", {}), **case["window"]}.items()]
    if case.get("version"):
        parts.append(f"version={case['version']}")
    for part in (case.get("stages") or "").split(";"):
        if part.strip():
            stage, _, fields = part.strip().partition(":")
            parts.append(f"stage{stage}={fields}")
    (config,) = parse_config_arg("x:" + " ".join(parts))
    return resolve_auto(config, detect_preset(unet)[0]).freeu


def via_page(unet, case):
    values: dict[str, Any] = {}
    if case["preset"] is not None:
        name = detect_preset(unet)[0] if case["preset"] == "auto" else case["preset"]
        values = preset_controls(name)  # what choosing the preset puts into the page's controls
    values.update(case.get("factors", {}), **case["window"])
    if case.get("version"):
        values["version"] = str(case["version"])
    if case.get("stages"):
        values["stages"] = case["stages"]
    return Studio.config(**values)


def via_comfyui(node_module, unet_config, case):
    """The node's ``execute``; a preset file goes into the node's preset folder, as a ComfyUI user puts it there."""
    preset = case["preset"]
    file = ""
    if preset is not None and preset.endswith(".toml"):
        file = _into_folder(node_module.folder_paths.get_folder_paths("freeu_presets")[0], preset)
    window = case["window"]
    inputs = dict(preset="custom" if preset is None or file else preset, b1=1.3, b2=1.4, s1=0.9, s2=0.2,
                  version=str(case.get("version", 2)), convention="official", threshold=1,
                  start_percent=window.get("start", 0.0), end_percent=window.get("stop", 1.0), ramp=0.0,
                  stages=case.get("stages") or "", preset_file=file)  # fmt: skip
    inputs.update(case.get("factors", {}))
    (clone,) = node_module.FreeUNode.execute(ComfyModel(unet_config), **inputs)
    return clone.patches[-1].freeu_config


def _into_folder(folder: str, file: str) -> str:
    """Copy a preset file into a host's preset folder, as its user puts it there; its name in that folder."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return shutil.copy(file, Path(folder) / "front-door.toml").name


def via_forge(script, unet_config, case):
    window = case["window"]
    preset = case["preset"]
    if preset is not None and preset.endswith(".toml"):
        preset = _into_folder(script.preset_folders()[0], preset)
    named = dict(enabled=True, preset="custom" if preset is None else preset,
                 version=str(case.get("version", 2)), start=window.get("start", 0.0), end=window.get("stop", 1.0),
                 stages=case.get("stages") or "", **case.get("factors", {}))  # fmt: skip
    return script.resolve_settings(script.read_args([named]), unet_config)[1]


def _ldm_unet():
    openaimodel = pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")  # after the diffusers half ran
    return openaimodel.UNetModel(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
        attention_resolutions=[4, 2], channel_mult=(1, 2, 4, 4), num_head_channels=8,
        use_spatial_transformer=True, context_dim=32, legacy=False,
    )  # fmt: skip


@pytest.mark.parametrize("case", ["name", "auto", "file", "custom"])
def test_the_six_entry_points_give_the_same_config(case, tmp_path, comfy_node, forge_script) -> None:
    settings = _cases(tmp_path)[case]
    for make in (sd15_unet, _ldm_unet):
        unet = make()
        configs = {
            "apply": via_apply(unet, settings),
            "command line": via_cli(unet, settings),
            "eval": via_eval(unet, settings),
            "page": via_page(unet, settings),
            "ComfyUI": via_comfyui(comfy_node, LDM_CONFIG, settings),
            "Forge": via_forge(forge_script, LDM_CONFIG, settings),
        }
        expected = configs["apply"]
        assert {k: c for k, c in configs.items() if c != expected} == {}, f"{case} on {type(unet).__name__}"
    if case == "auto":
        assert expected == freeu.PRESETS["sd15"].config.replace(start=0.2)
    if case == "file":
        assert (expected.b1, expected.s2, expected.start) == (1.2, 0.6, 0.1)  # the file's window stands
    if case == "custom":
        assert expected.num_stages == 3 and expected.stage(1).high == 1.1 and expected.version == 1


# each bad setting, and how each caller names the field
BAD = {
    "window": (dict(preset="sd15", window=dict(start=0.8, stop=0.2)), {
        "apply": "start must be < stop", "command line": "--start must be < --stop",
        "eval": "configuration 'x': start must be < stop", "page": "start must be < stop",
        "ComfyUI": "start_percent must be < end_percent", "Forge": r"FreeU \(freeu\): start must be < end"}),
    "preset": (dict(preset="sd16", window={}), {
        "apply": "preset must be one of", "command line": "--preset must be one of",
        "eval": "configuration 'x': preset must be one of", "page": "preset must be one of",
        "ComfyUI": "preset must be one of", "Forge": r"FreeU \(freeu\): preset must be one of"}),
    "stages": (dict(preset="sd15", window={}, stages="3:q=1"), {
        "apply": "stages: stage 3: 'q=1' is not KEY=VALUE", "command line": "argument --stage: stage 3: 'q=1'",
        "eval": "configuration 'x': stage 3: 'q=1' is not", "page": "stages: stage 3: 'q=1' is not",
        "ComfyUI": "stages: stage 3: 'q=1' is not", "Forge": r"FreeU \(freeu\): stages: stage 3: 'q=1' is not"}),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(BAD))
def test_the_six_entry_points_refuse_the_same_settings_in_their_own_words(bad, comfy_node, forge_script,
                                                                          capsys) -> None:  # fmt: skip
    settings, messages = BAD[bad]
    unet = sd15_unet()
    calls = {
        "apply": lambda: via_apply(unet, settings), "command line": lambda: via_cli(unet, settings),
        "eval": lambda: via_eval(unet, settings), "page": lambda: via_page(unet, settings),
        "ComfyUI": lambda: via_comfyui(comfy_node, LDM_CONFIG, settings),
        "Forge": lambda: via_forge(forge_script, LDM_CONFIG, settings),
    }  # fmt: skip
    for caller, call in calls.items():
        with pytest.raises((ValueError, SystemExit)) as raised:
            call()
        text = capsys.readouterr().err if raised.type is SystemExit else str(raised.value)
        assert raised.type is not SystemExit or raised.value.code == 2
        assert messages[caller] in text or __import__("re").search(messages[caller], text), (caller, text)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: sd15_unet(), "sd15"),
        (lambda: sd15_unet().__class__.from_config(sd15_unet().config, use_linear_projection=True), "sd21"),
        (lambda: sdxl_unet(), "sdxl"),
    ],
)
def test_apply_auto_picks_the_preset_of_the_layout(make, expected) -> None:
    unet = make()
    with freeu.apply(unet, preset="auto") as handle:
        assert handle.config == freeu.PRESETS[expected].config


def test_auto_on_the_ldm_module_and_its_settings_dict_agree() -> None:
    unet = _ldm_unet()
    assert detect_preset(unet)[0] == detect_preset(LDM_CONFIG)[0] == "sd15"
    linear = pytest.importorskip("ldm.modules.diffusionmodules.openaimodel").UNetModel(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
        attention_resolutions=[2], channel_mult=(1, 2), num_head_channels=8, use_spatial_transformer=True,
        context_dim=32, legacy=False, use_linear_in_transformer=True,
    )  # fmt: skip
    assert detect_preset(linear)[0] == detect_preset({**LDM_CONFIG, "use_linear_in_transformer": True})[0] == "sd21"


def test_the_forge_script_accepts_a_preset_file(tmp_path, forge_script) -> None:
    file = _cases(tmp_path)["file"]["preset"]
    named = _into_folder(forge_script.preset_folders()[0], file)
    settings = forge_script.read_args([{"enabled": True, "preset": named, "ramp": 0.05}])
    name, config = forge_script.resolve_settings(settings, LDM_CONFIG)
    assert name == named and config == freeu.get_preset(file).config.replace(ramp=0.05)
    outside = forge_script.read_args([{"enabled": True, "preset": file}])  # an absolute path: not opened
    with pytest.raises(ValueError, match=r"FreeU \(freeu\): preset: .* is not a name inside .*freeu_presets"):
        forge_script.resolve_settings(outside, LDM_CONFIG)
    with pytest.raises(ValueError, match=r"preset must be one of .* or a preset file \(\.toml\), got 'x\.txt'"):
        forge_script.read_args([{"enabled": True, "preset": "x.txt"}])


def test_a_preset_file_is_read_once_from_the_flags_to_the_config(tmp_path, monkeypatch) -> None:
    reads = []
    load = freeu.config.load_preset_file
    monkeypatch.setattr(freeu.config, "load_preset_file", lambda path: reads.append(path) or load(path))
    config = via_cli(sd15_unet(), _cases(tmp_path)["file"])
    assert config.b1 == 1.2 and len(reads) == 1


def test_resolved_says_where_each_value_came_from(tmp_path) -> None:
    from freeu.settings import Settings, resolve

    resolved = resolve(Settings(preset="auto", stop=0.6, stages="3:b=1.1"), sd15_unet(), names={"preset": "--preset"})
    assert resolved.preset == "sd15" and resolved.config == freeu.PRESETS["sd15"].config.replace(stop=0.6).with_stages(
        {3: {"b": 1.1}}
    )
    assert resolved.sources["stop"] == "given" and resolved.sources["b1"] == "preset"
    assert resolved.sources["stages"] == "given"
    assert resolved.source.startswith("--preset auto chose 'sd15': convolutional attention projections")
    plain = resolve(Settings(b1=1.1, b2=1.2, s1=0.9, s2=0.8))
    assert plain.preset is None and plain.sources["b1"] == "given" and plain.sources["version"] == "default"
    with pytest.raises(ValueError, match="--preset auto needs a model"):
        resolve(Settings(preset="auto"), names={"preset": "--preset"})


def test_a_stage_b_wins_over_b1_in_every_front_end_that_takes_both(comfy_node, forge_script) -> None:
    """Hosts always pass all four factors in custom: a stage text that sets stage 1's b takes its place, as
    FreeUConfig.with_stages always did (the command line alone refuses --b1 with --stage 1:b=..., its own rule)."""
    case = dict(preset=None, factors=dict(b1=1.1, b2=1.2, s1=0.8, s2=0.7), window={}, stages="1:b=1.3")
    unet = sd15_unet()
    for config in (via_apply(unet, case), via_eval(unet, case), via_page(unet, case),
                   via_comfyui(comfy_node, LDM_CONFIG, case), via_forge(forge_script, LDM_CONFIG, case)):  # fmt: skip
        assert (config.b1, config.b2, config.s1) == (1.3, 1.2, 0.8)


def test_from_an_image_a_stage_flag_replaces_the_carried_factor() -> None:
    args = build_parser().parse_args(["generate", "--model", "x", "--prompt", "p", "--stage", "1:b=1.3"])
    carried = {"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2, "version": 2}
    config = resolve_freeu(None, freeu_settings(args, carried=carried)).config
    assert (config.b1, config.b2, config.s2) == (1.3, 1.6, 0.2)


@pytest.mark.parametrize(
    "config, preset",
    [
        ({**LDM_CONFIG, "context_dim": 2048, "adm_in_channels": 2816, "use_linear_in_transformer": True}, "sdxl"),
        ({**LDM_CONFIG, "context_dim": 1024, "adm_in_channels": 1536, "use_linear_in_transformer": True}, "sd21"),
        ({**LDM_CONFIG, "context_dim": 1024, "adm_in_channels": 768, "use_linear_in_transformer": True}, "sd21"),
    ],
)
def test_added_conditioning_on_sd2s_text_encoder_is_not_sdxl(config, preset) -> None:
    """SD 2.1 unCLIP and video models built on SD 2.x add conditioning next to a 1024-wide context: SD 2.x's."""
    assert detect_preset(config)[0] == preset


def test_auto_errors_name_the_callers_preset_field() -> None:
    from freeu.settings import Settings, resolve

    with pytest.raises(ValueError, match=r"^--preset auto knows the Stable Diffusion .* no cross-attention"):
        resolve(Settings(preset="auto"), {"model_channels": 32}, names={"preset": "--preset"})


@pytest.mark.parametrize(
    "text, message",
    [
        ("3:b=1.1; 3:b=1.2", "stage 3 is given twice"),
        ("3:b=1.1,b=1.2", "stage 3: b is given twice"),
        ("\uff13:b=1.1", "plain ASCII"),  # a full-width 3
        ("3:b=\u0661.\u0665", "plain ASCII"),  # Arabic-Indic 1.5, which float() reads
    ],
)
def test_stage_text_refuses_repeats_and_other_scripts_digits(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        freeu.config.parse_stage_settings(text)
    args = ["generate", "--model", "x", "--prompt", "p", "--preset", "sd15", "--stage", "3:b=1.1", "--stage", "3:b=1.2"]
    with pytest.raises(ValueError, match="--stage 3: b given twice"):
        freeu_settings(build_parser().parse_args(args))


@pytest.mark.parametrize(
    "named, message",
    [
        ({"threshold": float("inf")}, "threshold must be a whole number >= 1, got inf"),
        ({"threshold": float("nan")}, "threshold must be a whole number >= 1, got nan"),
        ({"b1": 10**400}, "b1 must be a finite number, got an integer of 401 digits"),
        ({"b1": float("inf")}, "b1 must be a finite number, got inf"),
        ({"start": -float("inf")}, "start must be a finite number"),
    ],
)
def test_the_forge_reader_refuses_non_finite_numbers_as_its_own_error(named, message, forge_script) -> None:
    """What the API's JSON can carry (inf, nan, huge integers) is the script's ValueError, which it writes into the
    infotext, never an OverflowError that escapes it."""
    with pytest.raises(ValueError, match=rf"^FreeU \(freeu\): {message}"):
        forge_script.read_args([{"enabled": True, "preset": "custom", **named}])
