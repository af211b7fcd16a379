"""Test-only ComfyUI pack: zero conditioning of a given width, so a workflow needs no text encoder weights."""

from comfy_api.latest import IO, ComfyExtension


class ZeroConditioning(IO.ComfyNode):
    @classmethod
    def define_schema(cls) -> IO.Schema:
        return IO.Schema(
            node_id="FreeUTestZeroConditioning", category="conditioning",
            inputs=[IO.Int.Input("width", default=768, min=1, max=4096)], outputs=[IO.Conditioning.Output()],
        )  # fmt: skip

    @classmethod
    def execute(cls, width: int) -> IO.NodeOutput:
        import torch

        return IO.NodeOutput([[torch.zeros(1, 77, width), {}]])


class TestPack(ComfyExtension):
    async def get_node_list(self) -> list[type[IO.ComfyNode]]:
        return [ZeroConditioning]


async def comfy_entrypoint() -> TestPack:
    return TestPack()
