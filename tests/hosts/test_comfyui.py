"""The "FreeU (freeu)" ComfyUI node pack (integrations/comfyui) in the real ComfyUI: its UNetModel, ModelPatcher and
built-in FreeU / FreeU_V2 nodes, run in a fresh interpreter (tests/hosts/comfy_probe.py).

ComfyUI comes from tests/hosts/conftest.py (a checkout, or the snapshot beside the repository; skipped otherwise).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_host import PACK, subprocess_env


def _probe(comfyui, script: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(script)), str(comfyui), str(PACK)],
        capture_output=True, text=True, timeout=600, env=subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured(comfyui) -> dict:
    return _probe(comfyui, "comfy_probe.py")


@pytest.fixture(scope="module")
def families(comfyui) -> dict:
    """The node on ComfyUI's Stable Cascade (stages C and B) and Hunyuan-DiT classes (comfy_probe_families.py)."""
    return _probe(comfyui, "comfy_probe_families.py")


@pytest.mark.parametrize("family", ["hunyuan", "stage_c", "stage_b"])
def test_the_node_on_stable_cascade_and_hunyuan_dit_equals_the_reference(families, family) -> None:
    found = families[family]
    for version in (1, 2):
        assert found[f"v{version}_vs_reference"] <= 1e-5  # float64 reference at ComfyUI's own torch.cat
        assert found[f"v{version}_vs_off"] > 1e-3  # and it does something
        assert found[f"v{version}_reference_joins"] >= len(found["joins"])  # every join (a repeated level: more)
    assert found["identity_equals_off"] and found["branch_without_node_equals_off"]
    assert found["no_hook_left"] and found["no_hook_left_after_all"]  # the shared model carries nothing after a call
    assert found["second_node_replaces"]
    assert found["window_inside_equals_node"] and found["window_outside_equals_off"]
    assert found["window_changes_inside"] > 1e-3


def test_the_node_refuses_what_a_family_cannot_take_and_a_transformer_without_skip_joins(families) -> None:
    assert "long skips of a Hunyuan-DiT (HunYuanDiT) all run at one resolution" in families[
        "hunyuan_diffusers_convention"]  # fmt: skip
    # ComfyUI's own Flux, PixArt and SD3 (MMDiT) classes, tiny
    for name, kind in (("flux", "Flux"), ("pixart", "PixArtMS"), ("sd3", "OpenAISignatureMMDITWrapper")):
        error = families["transformers"][name]
        assert f"This model's diffusion model is {kind} (Base): {kind} is a diffusion transformer with no skip " \
               "joins" in error, error  # fmt: skip
        assert "Supported:" not in error


def test_the_node_equals_the_builtin_nodes(measured) -> None:
    assert measured["v2_vs_builtin"] <= 1e-5  # FreeU_V2, float32, relative to the output scale
    assert measured["v1_vs_builtin"] <= 1e-5  # FreeU
    assert measured["v2_vs_off"] > 1e-3  # and it does something


def test_identity_branches_and_chains_behave_as_comfyui_users_expect(measured) -> None:
    assert measured["identity_equals_off"]  # b = s = 1: bit for bit no node
    assert measured["branch_without_node_equals_off"]  # the input MODEL is untouched
    assert measured["second_node_replaces"]  # a second node replaces the first one's patch


def test_a_window_changes_the_result_only_inside_it(measured) -> None:
    assert measured["window_inside_equals_node"] and measured["window_outside_equals_off"]
    assert measured["window_changes_inside"] > 1e-3


def test_at_64_px_the_node_is_finite_where_freeu_v2_is_nan(measured) -> None:
    assert measured["builtin_v2_nan_at_64px"] and measured["node_finite_at_64px"]


def test_no_fft_and_no_complex_tensor_in_a_run_with_the_node(measured) -> None:
    assert measured["node_fft_calls"] == [] and measured["node_complex_tensors"] == 0
    assert measured["builtin_fft_calls"] > 0  # the spy sees FFTs where there are some


def test_an_unsupported_model_is_refused_naming_what_was_found(measured) -> None:
    assert "FreeU (freeu) acts at skip joins" in measured["unsupported"] and "Linear" in measured["unsupported"]


def test_stages_and_controls_in_the_node_equal_freeu_apply_on_comfyuis_unet(measured) -> None:
    assert measured["stages_vs_apply"] <= 1e-5  # a third stage and stage 1's controls, through the node's patch
    assert measured["stages_change"] > 1e-3  # and they change the result of the two-stage setting
    assert measured["stages_left_no_hook"]
    assert measured["bad_stages"] == "stages: stage 3: b must be a number, got 'x'"  # the node's input named


def test_a_preset_file_replaces_the_preset_in_the_node(measured) -> None:
    assert measured["preset_file_window"] == [0.25]  # the file's window, not the node's default
    assert measured["preset_file_vs_apply"] <= 1e-5 and measured["preset_file_change"] > 1e-3
    assert measured["listed_preset_files"] == ["tuned.toml"]  # ComfyUI's own list of models/freeu_presets


def test_the_node_opens_no_preset_file_outside_its_folder(measured) -> None:
    refused = measured["refused_preset_files"]
    assert refused["missing.toml"].startswith("preset_file: no preset file 'missing.toml' in ")
    for name, error in refused.items():
        assert error.startswith("preset_file"), (name, error)
        assert name == "missing.toml" or "is not a name inside" in error, (name, error)
