"""``freeu export``: the exported graphs in ONNX Runtime and OpenVINO against ``freeu.apply`` in PyTorch.

Every comparison is relative to the output's scale (``max |a - b| / max |b|``), float32. One export per model and
setting (they take 10-40 s each here), each run at two image sizes and two batch sizes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import rerandomise_zeros

import freeu
from freeu.apps.export import FACTOR_INPUTS, ExportedUNet, export_unet

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
openvino = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.slow

RUNTIMES = ("onnxruntime", "openvino")
TOLERANCE = 1e-4
FFT_OPS = {"DFT", "STFT"}


def _error(out: np.ndarray, ref: torch.Tensor) -> float:
    ref = ref.detach().numpy()
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _ops(folder, name: str = "unet.onnx") -> set[str]:
    graph = onnx.load(str(folder / name))
    return {node.op_type for node in graph.graph.node} | {
        node.op_type for f in graph.functions for node in f.node
    }  # fmt: skip


def _complex_free(folder, name: str = "unet.onnx") -> None:
    ops = _ops(folder, name)
    assert not ops & FFT_OPS, ops
    graph = onnx.load(str(folder / name))
    complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    assert all(t.data_type not in complex_types for t in graph.graph.initializer)


class _Case:
    """A U-Net, how to call it in PyTorch, and example conditioning of a batch."""

    def __init__(self, unet, call, conditioning, channels, sizes) -> None:
        self.unet, self.call, self.conditioning, self.channels, self.sizes = unet, call, conditioning, channels, sizes

    def inputs(self, batch: int, size: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, self.channels, *size, generator=gen)
        t = torch.linspace(900, 100, batch)
        return {"sample": x, "timestep": t, **self.conditioning(batch, gen)}

    def torch_output(self, inputs, config=None) -> torch.Tensor:
        with torch.no_grad():
            if config is None:
                return self.call(self.unet, inputs)
            with freeu.apply(self.unet, config):
                return self.call(self.unet, inputs)


def _demo_case(classes: bool) -> _Case:
    from freeu.apps.demo_model import CLASSES_WEIGHTS_DIR
    from freeu.apps.runtime import load_demo

    model = load_demo(CLASSES_WEIGHTS_DIR if classes else None)
    unet = model.unet.float().eval()
    if classes:
        return _Case(unet, lambda u, x: u(x["sample"], x["timestep"], class_labels=x["class_labels"]).sample,
                     lambda b, g: {"class_labels": torch.arange(b) % 15}, 3, [(32, 32), (24, 40)])  # fmt: skip
    return _Case(unet, lambda u, x: u(x["sample"], x["timestep"]).sample, lambda b, g: {}, 3, [(32, 32), (24, 40)])


def _sd15_case() -> _Case:
    """SD 1.5's layout (four levels, 1x 2x 4x 4x the base width, cross-attention in the first three) with one resnet
    per level: every kind of join, at a third of the export time of two."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = rerandomise_zeros(diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ))  # fmt: skip
    return _Case(unet, lambda u, x: u(x["sample"], x["timestep"], x["encoder_hidden_states"]).sample,
                 lambda b, g: {"encoder_hidden_states": torch.randn(b, 7, 32, generator=g)}, 4,
                 [(24, 24), (32, 40)])  # fmt: skip


def _ldm_case() -> _Case:
    openaimodel = pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")
    torch.manual_seed(0)
    unet = rerandomise_zeros(openaimodel.UNetModel(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
        attention_resolutions=[4, 2], channel_mult=(1, 2, 4, 4), num_head_channels=8,
        use_spatial_transformer=True, context_dim=32, legacy=False,
    ))  # fmt: skip
    return _Case(unet, lambda u, x: u(x["sample"], x["timestep"], context=x["encoder_hidden_states"]),
                 lambda b, g: {"encoder_hidden_states": torch.randn(b, 5, 32, generator=g)}, 4,
                 [(24, 24), (32, 40)])  # fmt: skip


CASES = {"demo": lambda: _demo_case(False), "demo-classes": lambda: _demo_case(True), "sd15": _sd15_case,
         "ldm": _ldm_case}  # fmt: skip
SD15 = freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2)


def _check_exported(case: _Case, folder, config, *, factors=None) -> None:
    """Both runtimes against PyTorch at two sizes and two batch sizes (``factors``: per-sample factor inputs)."""
    for runtime in RUNTIMES:
        exported = ExportedUNet(folder, runtime)
        for size in case.sizes:
            for batch in (1, 3):
                inputs = case.inputs(batch, size)
                feed = dict(inputs)
                if exported.takes_factors:
                    feed.update(exported.factors(config, 0.0, batch))
                ref = case.torch_output(inputs, config)
                assert _error(exported(**feed), ref) < TOLERANCE, (runtime, size, batch)


# Each model baked and with factor inputs; between them the tiny SD U-Net has three of the four combinations of
# version and convention and the LDM U-Net the fourth (one export takes 30-90 s here, so not the whole product).
@pytest.mark.parametrize(
    ("name", "version", "convention"),
    [("demo", 2, "official"), ("demo-classes", 1, "diffusers"), ("sd15", 2, "diffusers"), ("ldm", 1, "official")],
)  # fmt: skip
def test_baked_freeu_in_onnx_runtime_and_openvino_equals_pytorch(name, version, convention, tmp_path) -> None:
    case = CASES[name]()
    config = SD15.replace(version=version, convention=convention)
    result = export_unet(case.unet, tmp_path / "baked", config, formats=("onnx", "openvino"), mode="baked")
    _complex_free(tmp_path / "baked")
    _check_exported(case, tmp_path / "baked", config)
    assert result.manifest["mode"] == "baked" and result.manifest["settings"] == config.to_dict()


@pytest.mark.parametrize(
    ("name", "version", "convention"),
    [("demo-classes", 1, "diffusers"), ("sd15", 1, "diffusers"), ("sd15", 2, "official"), ("ldm", 2, "official")],
)  # fmt: skip
def test_factor_inputs_equal_pytorch_at_any_setting_and_off_at_one(name, version, convention, tmp_path) -> None:
    case = CASES[name]()
    base = SD15.replace(version=version, convention=convention)
    export_unet(case.unet, tmp_path / "inputs", base, formats=("onnx", "openvino"), mode="inputs")
    _complex_free(tmp_path / "inputs")
    # the graph's settings at two other factor sets than the ones it was exported with
    for config in (base.replace(b1=1.1, b2=1.3, s1=0.7, s2=0.5), base):
        _check_exported(case, tmp_path / "inputs", config)
    # per-sample factors: one graph call, each sample its own setting
    per_sample = base.replace(b1=(1.0, 1.2, 1.5), b2=(1.0, 1.4, 1.6), s1=(1.0, 0.8, 0.9), s2=(1.0, 0.5, 0.2))
    inputs = case.inputs(3, case.sizes[0])
    ref = case.torch_output(inputs, per_sample)
    for runtime in RUNTIMES:
        exported = ExportedUNet(tmp_path / "inputs", runtime)
        assert _error(exported(**inputs, **exported.factors(per_sample, 0.0, 3)), ref) < TOLERANCE


def test_diffusers_own_freeu_under_the_same_exporter(tmp_path) -> None:
    """What the same exporter makes of diffusers' FreeU (the comparison in docs/export.md): with the batch and image
    size dynamic it fails (the FFT's shift of a complex tensor by a size the graph computes cannot be written); at
    fixed sizes it writes a graph with a DFT operator, which ONNX Runtime 1.32 and OpenVINO 2026.4 run."""
    import onnxruntime

    case = _sd15_case()
    inputs = case.inputs(2, (24, 24))
    names = list(inputs)

    class Call(torch.nn.Module):
        def __init__(self, unet) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, *args):
            return case.call(self.unet, dict(zip(names, args, strict=True)))

    batch, height, width = (torch.export.Dim(n, min=2, max=64) for n in ("batch", "height", "width"))
    dynamic = {"args": ({0: batch, 2: 8 * height, 3: 8 * width}, {0: batch}, {0: batch})}
    path = tmp_path / "diffusers.onnx"
    case.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
    try:
        with torch.no_grad():
            ref = case.call(case.unet, inputs)
            with pytest.raises(Exception, match="roll"):
                torch.onnx.export(Call(case.unet), tuple(inputs.values()), str(path), dynamo=True, input_names=names,
                                  output_names=["out_sample"], opset_version=18, dynamic_shapes=dynamic)  # fmt: skip
            torch.onnx.export(Call(case.unet), tuple(inputs.values()), str(path), dynamo=True, input_names=names,
                              output_names=["out_sample"], opset_version=18)  # fmt: skip
    finally:
        case.unet.disable_freeu()
    graph = onnx.load(str(path))
    assert "DFT" in {n.op_type for n in graph.graph.node} | {n.op_type for f in graph.functions for n in f.node}
    feed = {k: v.numpy() for k, v in inputs.items()}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert _error(session.run(None, feed)[0], ref) < TOLERANCE
    compiled = openvino.Core().compile_model(openvino.convert_model(str(path)), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
    assert _error(compiled.create_infer_request().infer(feed)[compiled.output(0)], ref) < TOLERANCE


def test_the_command_line_writes_a_folder_whose_window_and_factors_at_one_are_exact(tmp_path, capsys) -> None:
    """``freeu export`` of the demo model in every format with factor inputs: a step window fed through
    ``ExportedUNet.denoise`` equals ``freeu.apply`` with the same window over a whole DDIM run in both runtimes; the
    factors at 1 equal the exported plain U-Net; the pt2 program equals PyTorch; an export replaces an earlier one."""
    from freeu.apps.cli import main
    from freeu.apps.runtime import Request, load_demo, seed_noise

    out, plain = tmp_path / "export", tmp_path / "plain"
    assert main(["export", "--model", "demo", "--format", "onnx,openvino,pt2", "--mode", "inputs", "--preset", "sd15",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert all(f"wrote {out / name}" in printed for name in ("unet.onnx", "unet.xml", "unet.pt2", "manifest.json"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["sample", "timestep", *FACTOR_INPUTS]
    assert manifest["sizes"] == {"multiple_of": 4, "at_least": 12}
    _complex_free(out)
    # a window over a whole DDIM run
    model = load_demo(None)
    model.unet.float()
    config = SD15.replace(start=0.3, stop=0.8, ramp=0.1)
    seeds, steps = [4, 5], 10
    expected = model.sample(seeds, Request(steps=steps), freeu=config, output="tensor")
    unwindowed = model.sample(seeds, Request(steps=steps), freeu=SD15, output="tensor")
    for runtime in RUNTIMES:
        exported = ExportedUNet(out, runtime)
        final = exported.denoise(model.scheduler, seed_noise(seeds, (3, 32, 32)), steps, config)
        assert _error(final.numpy(), expected) < TOLERANCE, runtime
    assert _error(unwindowed.numpy(), expected) > 0.01  # the window changes the result: the check can fail
    _check_exported(_demo_case(False), out, SD15)  # the demo's factor inputs at two sizes and batches 1 and 3
    assert all((v == 1).all() for v in exported.factors(config, 950.0, 2).values())  # before the window: off
    # factors at 1 against the exported plain U-Net
    assert main(["export", "--model", "demo", "--plain", "--out", str(plain)]) == 0
    case = _demo_case(False)
    for size in case.sizes:
        inputs = case.inputs(2, size, seed=3)
        with_factors, alone = ExportedUNet(out), ExportedUNet(plain)
        a, b = with_factors(**inputs, **with_factors.factors(None, 0.0, 2)), alone(**inputs)
        assert float(np.abs(a - b).max() / np.abs(b).max()) < 1e-6
    # the pt2 program
    program = torch.export.load(out / "unet.pt2")
    inputs = case.inputs(2, (32, 32))
    factors = {n: torch.full((2,), v) for n, v in zip(FACTOR_INPUTS, (1.5, 0.9, 1.6, 0.2), strict=True)}
    ref = case.torch_output(inputs, SD15)
    assert _error(program.module()(*inputs.values(), *factors.values()).detach().numpy(), ref) < TOLERANCE
    # an export into the folder of an earlier one replaces it (a small U-Net: this checks the folder, not the graph)
    diffusers = pytest.importorskip("diffusers")
    tiny = diffusers.UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)  # fmt: skip
    export_unet(tiny, out, None)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "unet.onnx"]


def test_an_onnx_pipeline_folder_samples_with_freeu_in_diffusers_onnx_pipeline(tmp_path, capsys) -> None:
    """``freeu export --format onnx-pipeline`` of a Stable Diffusion pipeline folder: diffusers'
    ``OnnxStableDiffusionPipeline`` loads the folder and its images equal the PyTorch pipeline's under
    ``freeu.apply`` (with guidance, two prompts, a size other than the export's); the VAE encoder gives the latent
    distribution's mean."""
    diffusers = pytest.importorskip("diffusers")
    onnxruntime = pytest.importorskip("onnxruntime")
    from tiny_pipelines import sd_pipeline

    from freeu.apps.cli import main
    from freeu.apps.export import PIPELINE_PARTS

    folder, out = sd_pipeline(tmp_path / "sd"), tmp_path / "onnx-sd"
    assert main(["export", "--model", str(folder), "--format", "onnx-pipeline", "--preset", "sd15",
                 "--out", str(out)]) == 0  # fmt: skip
    assert f"wrote {out / 'model_index.json'}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([*PIPELINE_PARTS, "manifest.json"])
    _complex_free(out, "unet/model.onnx")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    onnx_pipe = diffusers.OnnxStableDiffusionPipeline.from_pretrained(out)
    for p in (pipe, onnx_pipe):
        p.set_progress_bar_config(disable=True)
    noise = torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    # the ONNX pipeline takes the latent size as height / 8 (SD's VAE); this tiny VAE upsamples by 2
    call = dict(prompt=["a cat", "a dog"], guidance_scale=7.5, num_inference_steps=4, height=128, width=192,
                output_type="np")  # fmt: skip
    exported = onnx_pipe(latents=noise.numpy(), **call).images
    call.update(height=32, width=48)
    with freeu.apply(pipe.unet, preset="sd15"):
        expected = pipe(latents=noise.clone(), **call).images
    plain = pipe(latents=noise.clone(), **call).images
    assert exported.shape == expected.shape == (2, 32, 48, 3)
    assert np.abs(exported - expected).max() < 1e-4  # pixels in [0, 1]
    assert np.abs(plain - expected).max() > 0.01  # FreeU changes the images: the check can fail
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    session = onnxruntime.InferenceSession(str(out / "vae_encoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        mean = pipe.vae.encode(image).latent_dist.mode()
    assert _error(session.run(None, {"sample": image.numpy()})[0], mean) < TOLERANCE
    # the manifest points at the pipeline's U-Net graph: ExportedUNet runs it
    inputs = _sd15_case().inputs(2, (16, 24))
    inputs["encoder_hidden_states"] = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), freeu.apply(pipe.unet, preset="sd15"):
        ref = pipe.unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]).sample
    assert _error(ExportedUNet(out)(**inputs), ref) < TOLERANCE
