"""The node pack in a running ComfyUI, the way users run it: the HTTP server on 127.0.0.1 loads the pack from
custom_nodes/, a workflow over a random-weight SD 1.5 diffusion model (written by the test) is queued through the
API, and the latents ComfyUI saves are compared (float32 on the CPU; a few minutes on 2 cores, marked slow)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from comfy_host import PACK, subprocess_env
from host_python import python_without_freeu

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
FREEU = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}  # FreeU_V2's defaults
OURS = dict(preset="custom", **FREEU, version="2", convention="official", threshold=1, start_percent=0.0,
            end_percent=1.0, ramp=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def model_file(comfyui, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "sd15_random.safetensors"
    done = subprocess.run([sys.executable, str(HERE / "write_sd15.py"), str(comfyui), str(path)],
                          capture_output=True, text=True, timeout=600, env=subprocess_env())  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def _post(port: int, prompt: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/prompt", data=json.dumps({"prompt": prompt}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def run_workflow(
    comfyui: Path, base: Path, model: Path, prompt: dict | list[dict] | None, with_pack: bool,
    refused: dict[str, dict] | None = None, seen: dict | None = None, python: str | Path = sys.executable,
    copy_pack: bool = True,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Start ComfyUI on 127.0.0.1 with ``base`` as its folder (run by ``python``), queue ``prompt``, return the saved
    latents by name. Each of ``refused`` is queued first and must be refused; ``seen`` gets their answers, the node
    list and the server's log. ``copy_pack=False``: the pack is already in ``base/custom_nodes`` (or must not load);
    ``prompt=None``: only start, list the nodes and stop; a list of prompts: queued one after the other, each once
    the one before has finished (ComfyUI keeps the loaded model between them)."""
    from safetensors.torch import load_file

    for sub in ("custom_nodes", "models/diffusion_models", "models/freeu_presets", "frontend", "output"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    tuned = "name = 'tuned'\n[freeu]\n" + "".join(f"{k} = {v}\n" for k, v in FREEU.items())
    (base / "models" / "freeu_presets" / "tuned.toml").write_text(tuned)
    shutil.copytree(HERE / "comfy_test_pack", base / "custom_nodes" / "freeu_test_pack", dirs_exist_ok=True)
    if with_pack and copy_pack:
        shutil.copytree(PACK, base / "custom_nodes" / "freeu", dirs_exist_ok=True)
    link = base / "models" / "diffusion_models" / model.name
    if not link.exists():
        link.symlink_to(model)
    port = _free_port()
    log = (base / "server.log").open("w")
    server = subprocess.Popen(
        [str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
         str(base), "--front-end-root", str(base / "frontend"), "--disable-auto-launch", "--database-url",
         "sqlite:///:memory:"],
        cwd=comfyui, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (base / "server.log").read_text()[-3000:]
            try:
                nodes = _get(port, "/object_info")
                break
            except OSError:
                assert time.monotonic() < deadline, "ComfyUI did not answer in 180 s"
                time.sleep(1)
        assert ("FreeU_freeu" in nodes) == with_pack and "FreeU_V2" in nodes
        if seen is not None:
            seen["nodes"] = nodes
            seen["refused"] = {name: _post(port, other) for name, other in (refused or {}).items()}
        for one in [] if prompt is None else prompt if isinstance(prompt, list) else [prompt]:
            status_code, answer = _post(port, one)
            assert status_code == 200, answer[-3000:]
            prompt_id = json.loads(answer)["prompt_id"]
            deadline = time.monotonic() + 900
            while prompt_id not in (history := _get(port, f"/history/{prompt_id}")):
                assert server.poll() is None and time.monotonic() < deadline, (base / "server.log").read_text()[-3000:]
                time.sleep(1)
            status = history[prompt_id]["status"]
            assert status["status_str"] == "success", json.dumps(status)[-3000:]
        if prompt is None:
            return {}
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
        if seen is not None:
            seen["log"] = (base / "server.log").read_text()
    return {p.name.split("_0")[0]: load_file(p)["latent_tensor"] for p in (base / "output" / "latents").glob("*")}


def workflow(model_name: str, branches: dict[str, tuple[str, dict] | None], small: set[str] = frozenset()) -> dict:
    """Every branch samples the same seed (4 Euler steps, 128 px; ``small`` ones 64 px) from the one loaded model,
    through its own model node (``None``: the model as loaded), and saves its latent as ``latents/NAME``."""
    prompt: dict = {
        "model": {"class_type": "UNETLoader", "inputs": {"unet_name": model_name, "weight_dtype": "default"}},
        "cond": {"class_type": "FreeUTestZeroConditioning", "inputs": {"width": 768}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "latent64": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    for name, patch in branches.items():
        source = ["model", 0]
        if patch is not None:
            kind, inputs = patch
            prompt[f"{name}-model"] = {"class_type": kind, "inputs": {"model": ["model", 0], **inputs}}
            source = [f"{name}-model", 0]
        prompt[f"{name}-sample"] = {"class_type": "KSampler", "inputs": {
            "model": source, "seed": 1, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent64" if name in small else
            "latent", 0], "denoise": 1.0}}  # fmt: skip
        prompt[f"{name}-save"] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [f"{name}-sample", 0], "filename_prefix": f"latents/{name}"},
        }
    return prompt


def test_the_node_in_a_running_comfyui(comfyui, model_file, tmp_path) -> None:
    branches = {
        "off": None,
        "builtinv2": ("FreeU_V2", FREEU),
        "oursv2": ("FreeU_freeu", OURS),
        "builtinv1": ("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),
        "oursv1": ("FreeU_freeu", {**OURS, "b1": 1.1, "b2": 1.2, "version": "1"}),
        "identity": ("FreeU_freeu", {**OURS, "b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0}),
        "firsthalf": ("FreeU_freeu", {**OURS, "start_percent": 0.0, "end_percent": 0.5}),
        "nostep": ("FreeU_freeu", {**OURS, "start_percent": 0.8, "end_percent": 0.9}),  # between sampled sigmas
        "builtinv2small": ("FreeU_V2", FREEU),
        "oursv2small": ("FreeU_freeu", OURS),
        "fromfile": ("FreeU_freeu", {**OURS, "b1": 1.0, "b2": 1.0, "preset_file": "tuned.toml"}),
    }
    # a workflow sent to a shared server cannot make the node open a path outside models/freeu_presets
    secret = tmp_path / "secret.toml"
    secret.write_text("hidden_key = 'hidden value'\n")
    refused = {path: workflow(model_file.name, {"x": ("FreeU_freeu", {**OURS, "preset_file": path})})
               for path in (str(secret), f"../../../{secret}", "~/secret.toml")}  # fmt: skip
    seen: dict = {}
    latents = run_workflow(comfyui, tmp_path / "with", model_file, workflow(model_file.name, branches,
                           {"builtinv2small", "oursv2small"}), with_pack=True, refused=refused, seen=seen)  # fmt: skip
    listed = json.dumps(seen["nodes"]["FreeU_freeu"]["input"]["optional"]["preset_file"])
    assert '"none"' in listed and '"tuned.toml"' in listed, listed
    for path, (code, answer) in seen["refused"].items():
        assert code == 400 and "Value not in list" in answer and "hidden" not in answer, (path, answer)
    assert torch.equal(latents["fromfile"], latents["oursv2"])  # the file's factors replace the node's
    scale = latents["off"].abs().max().item()
    assert (latents["oursv2"] - latents["builtinv2"]).abs().max().item() <= 1e-5 * scale
    assert (latents["oursv1"] - latents["builtinv1"]).abs().max().item() <= 1e-5 * scale
    effect = 1e-4 * scale  # ten times the tolerance above: random weights give large latents and small changes
    assert (latents["oursv2"] - latents["off"]).abs().max().item() > effect  # FreeU does something here
    assert torch.equal(latents["identity"], latents["off"])
    assert torch.equal(latents["nostep"], latents["off"])  # no sampled step inside the window: nothing changes
    first_half = (latents["firsthalf"] - latents["off"]).abs().max().item()
    assert first_half > effect and not torch.equal(latents["firsthalf"], latents["oursv2"])
    assert torch.isnan(latents["builtinv2small"]).any() and torch.isfinite(latents["oursv2small"]).all()
    without = run_workflow(comfyui, tmp_path / "without", model_file, workflow(model_file.name, {"off": None}),
                           with_pack=False)  # fmt: skip
    assert torch.equal(without["off"], latents["off"])  # a branch without the node = a workflow without the pack


# -- Stable Cascade and Hunyuan-DiT -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hydit_file(comfyui, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "hydit_random.safetensors"
    done = subprocess.run([sys.executable, str(HERE / "write_hydit.py"), str(comfyui), str(path)],
                          capture_output=True, text=True, timeout=600, env=subprocess_env())  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return path


#: Each family's model and conditioning nodes: Hunyuan-DiT from a file through ComfyUI's UNETLoader, Stable Cascade's
#: stages built by the test pack (ComfyUI's loader takes them only at their published sizes).
_TINY = "FreeUTestTinyStableCascade"
FAMILIES = {
    "hydit": ({"class_type": "UNETLoader", "inputs": {"unet_name": "hydit_random.safetensors",
                                                      "weight_dtype": "default"}}, {"width": 1024, "kind": "hunyuan"}),
    "stagec": ({"class_type": _TINY, "inputs": {"stage": "c"}}, {"width": 12, "kind": "cascade"}),
    "stageb": ({"class_type": _TINY, "inputs": {"stage": "b"}}, {"width": 12, "kind": "cascade"}),
}  # fmt: skip


def family_workflow(branches: dict[str, tuple[str, dict | None]]) -> dict:
    """``{name: (family, node inputs or None)}``: each branch samples its family's model (the same loader node in every
    prompt, so ComfyUI keeps the model it loaded) through the node or as it is, 3 Euler steps at 128 px, the latent
    saved as ``latents/NAME``."""
    prompt: dict = {"latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128,
                                                                            "batch_size": 1}}}  # fmt: skip
    for family, (loader, cond) in FAMILIES.items():
        prompt[f"{family}-model"] = loader
        prompt[f"{family}-cond"] = {"class_type": "FreeUTestZeroConditioning", "inputs": cond}
    for name, (family, inputs) in branches.items():
        source = [f"{family}-model", 0]
        if inputs is not None:
            prompt[f"{name}-node"] = {"class_type": "FreeU_freeu", "inputs": {"model": source, **OURS, **inputs}}
            source = [f"{name}-node", 0]
        prompt[f"{name}-sample"] = {"class_type": "KSampler", "inputs": {
            "model": source, "seed": 1, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": [f"{family}-cond", 0], "negative": [f"{family}-cond", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}}  # fmt: skip
        prompt[f"{name}-save"] = {
            "class_type": "SaveLatent",
            "inputs": {"samples": [f"{name}-sample", 0], "filename_prefix": f"latents/{name}"},
        }
    return prompt


def test_the_node_on_stable_cascade_and_hunyuan_dit_in_a_running_comfyui(comfyui, hydit_file, tmp_path) -> None:
    """Queued first: each family through the node (and at b = s = 1); then, in a second prompt on the same server
    (the same loaded models), each family without it; then a server without the pack. The models the node patched
    sample afterwards exactly as in a ComfyUI that never loaded the pack: nothing stayed on the shared model."""
    identity = {"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0}
    first = family_workflow({**{f"{f}-on": (f, {}) for f in FAMILIES}, **{f"{f}-one": (f, identity) for f in FAMILIES}})
    after = family_workflow({f"{f}-after": (f, None) for f in FAMILIES})
    latents = run_workflow(comfyui, tmp_path / "with", hydit_file, [first, after], with_pack=True)
    without = run_workflow(comfyui, tmp_path / "without", hydit_file, family_workflow(
        {f"{f}-off": (f, None) for f in FAMILIES}), with_pack=False)  # fmt: skip
    for family in FAMILIES:
        off = without[f"{family}-off"]
        scale = off.abs().max().item()
        assert torch.isfinite(latents[f"{family}-on"]).all()
        assert (latents[f"{family}-on"] - off).abs().max().item() > 1e-3 * scale, family  # the node acts
        assert torch.equal(latents[f"{family}-one"], off), family  # b = s = 1: as without the node
        assert torch.equal(latents[f"{family}-after"], off), family  # the shared model untouched after the run


# -- installed the way ComfyUI Manager installs it -------------------------------------------------------------------


def _ui_to_api(ui: dict, nodes: dict) -> dict:
    """A workflow in ComfyUI's UI format as the API format it queues: widget values by the names of the widget inputs
    (``control_after_generate`` is the frontend's own widget, not an input), links as ``[node, slot]``."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        info = nodes[node["type"]]["input"]
        spec = {**info.get("required", {}), **info.get("optional", {})}
        linked = {i["name"] for i in node["inputs"] if i.get("link") is not None}
        widgets = [name for name in spec if name not in linked and _is_widget(spec[name])]
        values = list(node["widgets_values"])
        inputs = {}
        for name in widgets:
            inputs[name] = values.pop(0)
            if isinstance(spec[name], list) and len(spec[name]) > 1 and spec[name][1].get("control_after_generate"):
                values.pop(0)
        assert values == [], (node["type"], values)
        for i in node["inputs"]:
            if i.get("link") is not None:
                link = links[i["link"]]
                assert link[3] == node["id"], link
                inputs[i["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def test_installed_as_comfyui_manager_does(comfyui, model_file, tmp_path) -> None:
    """The pack as tools/export_hosts.py writes it, in custom_nodes/; without the library ComfyUI starts without the
    node and its log says what to install; ``pip install -r requirements.txt`` with a folder of built wheels as the
    only index brings the library; then the node is listed with its inputs, the example workflow's settings run, and
    the example workflow (UI format) uses only nodes and widgets this ComfyUI has."""
    pytest.importorskip("build")
    base = tmp_path / "comfy"
    wheels = tmp_path / "wheels"
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels),
                           str(PACK.parents[1])], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, str(PACK.parents[1] / "tools" / "export_hosts.py"), "comfyui",
                           str(base / "custom_nodes")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    pack = base / "custom_nodes" / "freeu"
    python = python_without_freeu(sys.executable, tmp_path / "python")
    probe = subprocess.run([str(python), "-c", "import freeu"], capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'freeu'" in probe.stderr  # ComfyUI's Python, before the pack
    seen: dict = {}
    run_workflow(comfyui, base, model_file, None, with_pack=False, seen=seen, python=python, copy_pack=False)
    assert "FreeU (freeu) needs the freeu library in ComfyUI's Python" in seen["log"], seen["log"][-3000:]
    assert f"-m pip install -r {pack / 'requirements.txt'}" in seen["log"]
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "-r",
                           str(pack / "requirements.txt")], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ui = json.loads((pack / "example_workflows" / "freeu_sd15.json").read_text())
    example = next(n for n in ui["nodes"] if n["type"] == "FreeU_freeu")
    branches = {"off": None, "on": ("FreeU_freeu", {})}  # the inputs are filled in from the example below
    seen = {}
    run_workflow(comfyui, base, model_file, None, with_pack=True, seen=seen, python=python, copy_pack=False)
    nodes = seen["nodes"]
    listed = nodes["FreeU_freeu"]["input"]
    assert set(listed["required"]) >= {"model", "preset", "b1", "s2", "start_percent"}
    assert set(listed["optional"]) == {"stages", "preset_file"}
    inputs = {**listed["required"], **listed["optional"]}
    assert sorted(k for k, v in inputs.items() if len(v) > 1 and v[1].get("advanced")) == [
        "preset_file",
        "ramp",
        "stages",
        "threshold",
    ]  # folded away as ComfyUI folds its own rarely used inputs
    api = _ui_to_api(ui, nodes)  # every node type and widget of the example exists in this ComfyUI
    assert api[str(example["id"])]["inputs"]["preset"] == "sd15"
    settings = {k: v for k, v in api[str(example["id"])]["inputs"].items() if k != "model"}
    branches["on"] = ("FreeU_freeu", settings)
    latents = run_workflow(comfyui, base, model_file, workflow(model_file.name, branches), with_pack=True,
                           python=python, copy_pack=False)  # fmt: skip
    scale = latents["off"].abs().max().item()
    assert (latents["on"] - latents["off"]).abs().max().item() > 1e-4 * scale
