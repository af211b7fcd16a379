"""Test-only ComfyUI pack: zero conditioning of a given width (for SD, Hunyuan-DiT or Stable Cascade), so a workflow
needs no text encoder weights; and tiny random-weight Stable Cascade models built with ComfyUI's own classes (its
loader recognises Stable Cascade only at the published sizes, several GB)."""

from comfy_api.latest import IO, ComfyExtension

#: What each kind of model reads from a conditioning besides the cross-attention tokens (Hunyuan-DiT: its two text
#: encoders' tokens and masks; Stable Cascade: the pooled text embedding).
KINDS = ["sd", "hunyuan", "cascade"]


class ZeroConditioning(IO.ComfyNode):
    @classmethod
    def define_schema(cls) -> IO.Schema:
        return IO.Schema(
            node_id="FreeUTestZeroConditioning", category="conditioning",
            inputs=[IO.Int.Input("width", default=768, min=1, max=4096),
                    IO.Combo.Input("kind", options=KINDS, default="sd", optional=True)],
            outputs=[IO.Conditioning.Output()],
        )  # fmt: skip

    @classmethod
    def execute(cls, width: int, kind: str = "sd") -> IO.NodeOutput:
        import torch

        extra = {}
        if kind == "hunyuan":  # HunYuanDiT's defaults: 77 CLIP tokens of 1024, 256 mT5 tokens of 2048
            extra = {"attention_mask": torch.ones(1, 77), "conditioning_mt5xl": torch.zeros(1, 256, 2048),
                     "attention_mask_mt5xl": torch.ones(1, 256)}  # fmt: skip
        elif kind == "cascade":
            extra = {"pooled_output": torch.zeros(1, 1, width)}
        return IO.NodeOutput([[torch.zeros(1, 77, width), extra]])


class TinyStableCascade(IO.ComfyNode):
    """Stage C (16 latent channels, as ComfyUI's stage C latent has) or stage B with ComfyUI's own classes
    (``supported_models``, ``model_base``, ``ModelPatcher``): two or three levels 16 to 64 wide, a repeated level,
    random weights from a fixed seed, float32 on the CPU."""

    @classmethod
    def define_schema(cls) -> IO.Schema:
        return IO.Schema(
            node_id="FreeUTestTinyStableCascade", category="loaders",
            inputs=[IO.Combo.Input("stage", options=["c", "b"], default="c")], outputs=[IO.Model.Output()],
        )  # fmt: skip

    @classmethod
    def execute(cls, stage: str) -> IO.NodeOutput:
        import comfy.model_base
        import comfy.model_patcher
        import comfy.supported_models
        import torch

        if stage == "c":
            config = comfy.supported_models.Stable_Cascade_C(
                dict(
                    stable_cascade_stage="c",
                    c_in=16,
                    c_out=16,
                    c_r=8,
                    c_cond=16,
                    c_hidden=[16, 32],
                    nhead=[2, 2],
                    blocks=[[1, 1], [1, 1]],
                    block_repeat=[[1, 1], [2, 1]],
                    level_config=["CTA", "CTA"],
                    c_clip_text=12,
                    c_clip_text_pooled=12,
                    c_clip_img=768,
                    c_clip_seq=2,
                    t_conds=["sca", "crp"],
                    switch_level=[False],
                )
            )
            model_class = comfy.model_base.StableCascade_C
        else:
            config = comfy.supported_models.Stable_Cascade_B(
                dict(
                    stable_cascade_stage="b",
                    c_in=4,
                    c_out=4,
                    c_r=8,
                    patch_size=1,
                    c_cond=16,
                    c_hidden=[16, 32, 64],
                    nhead=[-1, 2, 2],
                    blocks=[[1, 1, 1], [1, 1, 1]],
                    block_repeat=[[1, 1, 1], [1, 2, 1]],
                    level_config=["CT", "CT", "CTA"],
                    c_clip=12,
                    c_clip_seq=2,
                    c_effnet=16,
                    t_conds=["sca"],
                )
            )
            model_class = comfy.model_base.StableCascade_B
        config.set_inference_dtype(torch.float32, None)
        cpu = torch.device("cpu")
        model = model_class(config, device=cpu)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.diffusion_model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        return IO.NodeOutput(comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu))


class TestPack(ComfyExtension):
    async def get_node_list(self) -> list[type[IO.ComfyNode]]:
        return [ZeroConditioning, TinyStableCascade]


async def comfy_entrypoint() -> TestPack:
    return TestPack()
