"""The applications on Stable Cascade's prior (stage C, diffusers ``StableCascadePriorPipeline``, tiny, random
weights): ``freeu analyze`` end to end with b = 1 equal to the pipeline's own result, latents of
``ceil(size / 42.67)``, the stochastic Wuerstchen sampler seeded per sample, a classifier-free-guidance batch whose
conditional half comes first (guidance schedules and the meter read it so), the clean-sample prediction of its
cosine schedule, and the refusals of what the applications cannot run (the decoder, pictures from the prior)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import freeu
from freeu.apps.cli import main
from freeu.apps.guidance import guided_change, measure_guidance
from freeu.apps.runtime import ModelLoadError, PipelineModel, Request, Size, load_model, predicted_x0
from freeu.apps.schedule import GuidanceSchedule

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

#: 280 px: 280 / 42.67 = 6.56, so 7 x 7 latents, whose second level (3 x 3) the U-Net resizes back to 7 x 7
SIZE = Size(height=280, width=280)
FACTORS = ("--b1", "1.3", "--s1", "0.9", "--b2", "1.2", "--s2", "0.5")


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    import tiny_pipelines

    return tiny_pipelines.stable_cascade_prior_pipeline(tmp_path_factory.mktemp("cascade") / "prior")


@pytest.fixture(scope="module")
def prior(prior_folder) -> PipelineModel:
    model = load_model(str(prior_folder), device="cpu")
    assert isinstance(model, PipelineModel)
    return model


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Equal within ``tolerance`` of the larger one's scale (random weights give latents in the hundreds)."""
    return (a - b).abs().max().item() <= tolerance * max(a.abs().max().item(), b.abs().max().item())


def _own_call(pipe, seed: int, guidance: float) -> torch.Tensor:
    """The pipeline called directly: seed's noise, then the scheduler's noise drawn on from the same generator."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, 8, 7, 7), generator=generator)
    return pipe(prompt=["a cat"], num_inference_steps=2, guidance_scale=guidance, height=280, width=280,
                latents=latents, generator=[generator]).image_embeddings  # fmt: skip


def test_analyze_runs_on_the_prior_and_b_at_one_is_the_pipelines_own_result(prior_folder, prior, tmp_path) -> None:
    out = tmp_path / "analysis"
    code = main(["analyze", "--model", str(prior_folder), "--prompt", "a cat", "--steps", "2", "--count", "1",
                 "--size", "280", "--b-values", "1,1.6", *FACTORS, "--out", str(out)])  # fmt: skip
    assert code == 0
    data = json.loads((out / "analysis.json").read_text())
    # one join (two levels), the full width: stage 1, on the 7 x 7 latent
    assert [(j["name"], j["stage"], j["size"]) for j in data["features"]["joins"]] == [
        ("up_blocks.1.0.channelwise", 1, [7, 7])
    ]
    assert data["trajectory"]["timesteps"] == [1, 0.5]  # the Wuerstchen scheduler's ratios
    assert data["guidance"]["scale"] == 4.0 and len(data["guidance"]["steps"]) == 2  # the pipeline's own default
    for name in ("trajectory-strip-latent.png", "b-sweep-latent.png", "features.png", "guidance.png"):
        assert (out / name).is_file(), name
    from freeu.apps.analyze import relative_log_amplitude

    expected = relative_log_amplitude(_own_call(prior.pipe, 0, 4.0).float())[1]
    got = torch.tensor(data["b"]["spaces"]["latent"]["curves"][0], dtype=torch.float64)
    assert (got - expected).abs().max().item() < 1e-4


def test_each_sample_depends_on_its_seed_alone_through_the_stochastic_sampler(prior) -> None:
    request = Request(steps=2, prompt="a cat", size=SIZE)
    both = prior.sample([3, 5], request, output="tensor")
    assert both.shape == (2, 8, 7, 7)
    assert _close(both[1:], prior.sample([5], request, output="tensor"))
    assert _close(both[:1], _own_call(prior.pipe, 3, 4.0))
    # without the per-sample generators the sampler's noise would come from torch's global generator
    torch.manual_seed(0)
    noise = torch.randn((1, 8, 7, 7), generator=torch.Generator().manual_seed(3))
    unseeded = prior.pipe(prompt=["a cat"], num_inference_steps=2, height=280, width=280, latents=noise)
    unseeded = unseeded.image_embeddings
    assert not _close(both[:1], unseeded, 1e-2)


def test_a_guidance_schedule_reads_the_conditional_half_first(prior, monkeypatch) -> None:
    """The prior's batch is ``[conditional, unconditional]``: its first half carries the prompt's embedding, and a
    constant schedule of 1.5 over a sampler run at 8 equals the sampler run at 1.5 (read the other way round, the
    halves are swapped and the result is another)."""
    captured = []
    handle = prior.unet.register_forward_pre_hook(lambda m, a, k: captured.append(k["clip_text_pooled"]),
                                                  with_kwargs=True)  # fmt: skip
    try:
        at_eight = prior.sample([0, 1], Request(steps=2, prompt="a cat", guidance=8.0, size=SIZE), output="tensor")
    finally:
        handle.remove()
    with torch.no_grad():
        pooled = prior.pipe.encode_prompt(device="cpu", batch_size=2, num_images_per_prompt=1,
                                          do_classifier_free_guidance=True, prompt=["a cat"] * 2)[1]  # fmt: skip
    first, second = captured[0].chunk(2)
    assert _close(first, pooled, 1e-6) and not _close(second, pooled, 1e-2)
    assert prior.unconditional_first is False
    scheduled = Request(steps=2, prompt="a cat", guidance=8.0, size=SIZE, schedule=GuidanceSchedule((1.5,)))
    plain = prior.sample([0, 1], Request(steps=2, prompt="a cat", guidance=1.5, size=SIZE), output="tensor")
    assert _close(prior.sample([0, 1], scheduled, output="tensor"), plain) and not _close(at_eight, plain, 1e-2)
    monkeypatch.setattr(prior, "unconditional_first", True)  # the usual order, wrong for this pipeline
    assert not _close(prior.sample([0, 1], scheduled, output="tensor"), plain, 1e-3)


def test_the_meter_on_the_prior_equals_the_step_recomputed_by_hand(prior) -> None:
    config = freeu.FreeUConfig(1.3, 1.2, 0.9, 0.5)
    captured = []

    def capture(module, args, kwargs):  # the pipeline's own calls, not the meter's with FreeU off
        if freeu.active_config(module) == config:
            captured.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    handle = prior.unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        trace = measure_guidance(prior, [0], Request(steps=2, prompt="a cat", size=SIZE), config)
    finally:
        handle.remove()
    assert trace.scale == 4.0 and [s.timestep for s in trace.steps] == [1, 0.5]
    kwargs = {**captured[1], "return_dict": False}
    with torch.no_grad():
        with freeu.apply(prior.unet, config):
            cond_on, uncond_on = prior.unet(**kwargs)[0].chunk(2)
        cond_off, uncond_off = prior.unet(**kwargs)[0].chunk(2)
    extra, share, _ = guided_change(uncond_off, cond_off, uncond_on, cond_on, 4.0)
    assert abs(extra.item()) > 1e-3
    assert trace.steps[1].extra == pytest.approx(extra.item(), rel=1e-5, abs=1e-6)
    assert trace.steps[1].orthogonal_share == pytest.approx(share.item(), rel=1e-5, abs=1e-6)


def test_the_clean_sample_follows_the_cosine_schedule_of_the_ratio(prior) -> None:
    """x0 = (x - sqrt(1 - a) eps) / sqrt(a), with Wuerstchen's a(t) = cos^2((t + s) / (1 + s) pi / 2) /
    cos^2(s / (1 + s) pi / 2), s = 0.008, written here from the schedule's definition."""
    torch.manual_seed(0)
    x, eps = torch.randn(2, 8, 7, 7), torch.randn(2, 8, 7, 7)
    ratios = torch.tensor([0.75, 0.25])
    s = 0.008
    a = torch.cos((ratios.double() + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    a = a.view(-1, 1, 1, 1)
    expected = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
    output = prior.scheduler.step(eps, ratios, x, generator=torch.Generator().manual_seed(0))
    got = predicted_x0(prior.scheduler, output, eps, ratios, x)
    assert (got.double() - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


def test_what_the_applications_cannot_run_on_stable_cascade_is_refused(prior, tmp_path) -> None:
    import tiny_pipelines

    decoder = tiny_pipelines.stable_cascade_decoder_pipeline(tmp_path / "tokenizer")
    with pytest.raises(ModelLoadError, match="needs image_embeddings in every call.*give the prior pipeline's folder"):
        PipelineModel(decoder, "decoder")
    with pytest.raises(ValueError, match="has no VAE; it makes latents .*image embeddings.*not pictures"):
        prior.sample([0], Request(steps=1, prompt="a cat", size=SIZE))
    assert prior.spaces == ("latent",) and prior.downsampling == 1
