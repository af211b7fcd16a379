"""Install and remove FreeU on a U-Net: one forward pre-hook per skip join, all handles kept on the U-Net.

Each hook receives the ``cat([backbone, skip], dim=1)`` that the host's own forward built, and returns a new tensor
with the backbone half scaled and the skip filtered. No host ``forward`` is copied and no tensor the host holds is
written to. The handle of the active application lives on the U-Net (attribute ``_freeu_handle``), so
:func:`remove` works without it, and :func:`apply` on a patched U-Net replaces the settings instead of stacking.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import join as freeu_join
from .config import CONVENTIONS, Convention, Factor, FreeUConfig, Preset, Version
from .models import CustomUNet, SkipJoin, UNetLayout, UnsupportedModelError, describe, find_unet
from .models.stable_cascade import is_stable_cascade_unet
from .settings import Settings, resolve

__all__ = ["FreeUHandle", "JoinObservation", "JoinPlan", "active_config", "apply", "plan", "remove"]

logger = logging.getLogger(__name__)

_HANDLE_ATTR = "_freeu_handle"
#: Installing, replacing and removing handles happen under this lock, so ``apply``, ``remove`` and leaving a ``with``
#: block are atomic with respect to each other, from any thread (it is never held while a model runs).
_LIFECYCLE = threading.RLock()
_DIFFUSERS_FREEU_KEYS = ("s1", "s2", "b1", "b2")


@dataclasses.dataclass(frozen=True)
class JoinObservation:
    """What one skip join saw in one forward call, for ``apply(..., observer=fn)`` (the paper's Fig. 7).

    ``backbone``/``skip`` are the host's features going into the join, ``backbone_out``/``skip_out`` what FreeU
    made of them (the same tensors where the join is left alone). They are the live tensors: read, do not modify.
    """

    join: SkipJoin
    stage: int | None
    backbone: torch.Tensor
    skip: torch.Tensor
    backbone_out: torch.Tensor
    skip_out: torch.Tensor


class JoinPlan:
    """A skip join and the FreeU stage it gets under a convention (``None``: left alone)."""

    __slots__ = ("join", "stage")

    def __init__(self, join: SkipJoin, stage: int | None) -> None:
        self.join = join
        self.stage = stage

    def __repr__(self) -> str:
        j = self.join
        return f"JoinPlan({j.name}: backbone {j.backbone_channels}, skip {j.skip_channels}, stage {self.stage})"


def _stage(join: SkipJoin, layout: UNetLayout, convention: Convention, num_stages: int = 2) -> int | None:
    if convention == "diffusers":
        # the decoder level: up block k - 1 is stage k (diffusers' enable_freeu: the first two)
        return join.block + 1 if 0 <= join.block < num_stages else None
    # The authors' code picks the stage by the backbone width at the join: 1280 and 640 in SD, i.e. four and two
    # times the base width (ComfyUI's generalisation); further stages halve the width again.
    return freeu_join.stage_widths(layout.base_channels, num_stages).get(join.backbone_channels)


def _layout(model: object, layout: CustomUNet | None) -> tuple[nn.Module, UNetLayout]:
    if layout is None:
        unet = find_unet(model)
        return unet, describe(unet)
    if not isinstance(layout, CustomUNet):
        raise TypeError(f"layout must be a freeu.CustomUNet, got {type(layout).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"with layout=..., model must be the U-Net module itself, got {type(model).__name__}")
    return model, layout.resolve(model)


def _plans(layout: UNetLayout, convention: Convention, num_stages: int = 2) -> list[JoinPlan]:
    if convention == "diffusers" and any(j.block < 0 for j in layout.joins):
        if any(j.patch is not None for j in layout.joins):
            raise ValueError(f"convention='diffusers' picks stages by decoder level, and the long skips of a "
                             f"{layout.family} all run at one resolution, with no levels; use "
                             "convention='official'")  # fmt: skip
        raise ValueError("convention='diffusers' picks stages by decoder level: give CustomUNet(levels=...)")
    return [JoinPlan(join, _stage(join, layout, convention, num_stages)) for join in layout.joins]


def plan(
    model: object, convention: Convention = "official", *, layout: CustomUNet | None = None, stages: int = 2
) -> list[JoinPlan]:
    """Every skip join of ``model``'s U-Net in decoder order, with the stage ``convention`` gives it.

    Args:
        model: a U-Net of a supported family or what holds one, as for :func:`apply`.
        convention: ``"official"`` (stage by backbone width) or ``"diffusers"`` (stage by up-block index).
        layout: a :class:`CustomUNet` describing a U-Net this library does not know.
        stages: how many stages (2: the paper's). Official: stage ``k`` takes the joins whose backbone is
            ``4 * base / 2 ** (k - 1)`` wide; diffusers: the joins of up block ``k - 1``.

    Returns:
        One :class:`JoinPlan` per skip join: the join (names, widths, level) and its stage (1 to ``stages`` or
        ``None``).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages must be an int >= 1, got {stages!r}")
    return _plans(_layout(model, layout)[1], convention, stages)


def _parameter_names(module: nn.Module) -> list[str]:
    return list(inspect.signature(module.forward).parameters)


def _input_name(module: nn.Module) -> str:
    """Name of the forward's first parameter, for hosts that pass the concatenated tensor by keyword."""
    names = _parameter_names(module)
    return names[0] if names else "input"


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _window_timestep_error(t: torch.Tensor, num_train_timesteps: int) -> str:
    return (
        f"FreeU: a step window reads the trajectory position as 1 - timestep / num_train_timesteps "
        f"({num_train_timesteps}), but this U-Net received the timestep {float(t.min()):g}, outside [0, "
        f"{num_train_timesteps}]. EDM-style schedulers (EDMEulerScheduler, EDMDPMSolverMultistepScheduler, e.g. "
        "Playground v2.5) pass log(sigma) / 4 instead of a DDPM timestep, on which a window would silently mean "
        "nothing: leave start, stop and ramp out (or set num_train_timesteps if your schedule counts otherwise)"
    )


class _CallState:
    """What the U-Net's own forward received, for the join hooks of the current call."""

    batch: int | None = None
    timesteps: Any = None
    #: the input's spatial size ``(H, W)`` (a transformer's token joins lay their tokens on its patch grid)
    size: tuple[Any, Any] | None = None
    #: factors given with the call (:meth:`FreeUHandle.factors_given`): ``{stage: (b, s)}``, tensors of one value
    #: or one per sample
    factors: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    #: version 2's structure feature of the join about to run, where a join's block normalises its backbone first
    #: (:attr:`SkipJoin.structure`): the block's input, read by a pre-hook on the block
    structure: torch.Tensor | None = None


class _ThreadCallState(_CallState, threading.local):
    """One per thread: two threads running the same patched U-Net each see their own call."""


#: Why a U-Net with FreeU on does not pickle, and what to do instead.
PICKLE_REFUSAL = (
    "a U-Net with FreeU applied cannot be pickled (torch.save(unet), pickle, multiprocessing): FreeU's hooks hold the "
    "live settings of this process. Call freeu.remove(unet) first (or save unet.state_dict()), and apply FreeU again "
    "after loading; copy.deepcopy(unet) keeps FreeU on the copy"
)


class _Hook:
    """One of FreeU's hooks as the module holds it: calls the hook, and refuses pickling with :data:`PICKLE_REFUSAL`
    (a bare closure fails with "Can't pickle local object", which says nothing of what to do). A deep copy of a
    U-Net keeps the same object, as it keeps functions; :meth:`FreeUHandle.__deepcopy__` rebinds it."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> Any:
        raise TypeError(PICKLE_REFUSAL)

    def __deepcopy__(self, memo: dict[int, Any]) -> _Hook:
        return self


class FreeUHandle:
    """FreeU applied to one U-Net. ``remove()`` undoes it; as a context manager, leaving restores what was before.

    Lifecycle: applying to a patched U-Net replaces the installed handle (its hooks come off) and remembers it as
    this handle's *previous*. Leaving a ``with`` block takes this handle's settings off and installs the nearest
    previous handle that has not been removed or left itself, the same handle object, so its ``remove()`` keeps
    working. ``remove()`` takes the settings off if they are installed and marks the handle as released either way:
    no later block restores a released handle. So once every block has been left and every handle removed, in any
    order, the U-Net is exactly as it was never patched.

    A ``copy.deepcopy`` of a patched U-Net is patched with the same settings, independently: its own handle and its
    own hooks (the stack of settings to restore is not copied).
    """

    def __init__(
        self,
        unet: nn.Module,
        config: FreeUConfig,
        plans: list[JoinPlan],
        previous: FreeUHandle | None,
        layout: CustomUNet | None = None,
        observer: Callable[[JoinObservation], None] | None = None,
        factor_inputs: bool = False,
    ):
        self.unet = unet
        self._observer = observer
        self._layout = layout
        self.config = config
        self.plans = plans
        self._previous = previous
        self._released = False
        self._hooks: list[tuple[RemovableHandle, tuple[str, int | None, int | None]]] = []
        self._thread_call = _ThreadCallState()
        self._traced_call = _CallState()  # under torch.compile, which does not trace thread-local state
        #: the factors come with each call (:meth:`factors_given`), as an exported graph's inputs do
        self.factor_inputs = factor_inputs
        self._needs_call_state = config.windowed or config.batch_size is not None or factor_inputs
        # token joins read the input's size in the same hook; they need nothing else of the call state
        self._token_joins = any(p.join.patch is not None for p in self.plans)
        self._needs_call_hook = self._needs_call_state or self._token_joins
        self._tensors: dict[tuple[str, torch.device], torch.Tensor] = {}

    @property
    def active(self) -> bool:
        """Whether these settings are the ones installed on the U-Net now."""
        return getattr(self.unet, _HANDLE_ATTR, None) is self

    # -- installation ---------------------------------------------------------------------------------------------

    def _hook_specs(self) -> list[tuple[str, int | None, int | None]]:
        """What to install: ``("call", None, None)`` and ``("end", None, None)`` on the U-Net where a window or
        per-sample factors need its inputs, ``("join", plan index, stage or None)`` per skip join that acts or is
        observed, and ``("structure", plan index, stage)`` before each acting version-2 join whose map comes from
        its block's input."""
        specs: list[tuple[str, int | None, int | None]] = []
        if self._needs_call_hook:
            specs += [("call", None, None), ("end", None, None)]
        for i, p in enumerate(self.plans):
            untouched = p.stage is None or (self.config.is_identity(p.stage) and not self.factor_inputs)
            if not (untouched and self._observer is None):
                specs.append(("join", i, None if untouched else p.stage))
            if not untouched and p.join.structure is not None and self.config.version == 2:
                specs.append(("structure", i, p.stage))
        return specs

    def _hook(self, spec: tuple[str, int | None, int | None]) -> _Hook:
        return _Hook(self._hook_function(spec))

    def _hook_function(self, spec: tuple[str, int | None, int | None]) -> Callable[..., Any]:
        kind, index, stage = spec
        if kind == "call":
            names = _parameter_names(self.unet)  # (sample, timestep, ...) in diffusers, (x, timesteps, ...) in LDM
            return self._call_hook(names[0] if names else "sample", names[1] if len(names) > 1 else "timestep")
        if kind == "end":
            return self._end_call_hook
        assert index is not None
        if kind == "structure":
            return self._structure_hook
        return self._join_hook(self.plans[index].join, stage)

    def _install(self) -> None:
        for spec in self._hook_specs():
            kind, index, _ = spec
            if kind == "call":
                handle = self.unet.register_forward_pre_hook(self._hook(spec), with_kwargs=True)
            elif kind == "end":
                handle = self.unet.register_forward_hook(self._hook(spec), always_call=True)
            else:
                assert index is not None
                join = self.plans[index].join
                module = join.structure if kind == "structure" else join.module
                assert module is not None
                handle = module.register_forward_pre_hook(self._hook(spec), with_kwargs=True)
            self._hooks.append((handle, spec))
        setattr(self.unet, _HANDLE_ATTR, self)
        self._guard_hooks_in_compiled_graphs()

    def _uninstall(self) -> None:
        for h, _ in self._hooks:
            h.remove()
        self._hooks.clear()
        if self.active:
            delattr(self.unet, _HANDLE_ATTR)

    def __reduce__(self) -> Any:
        raise TypeError(PICKLE_REFUSAL)

    def __deepcopy__(self, memo: dict[int, Any]) -> FreeUHandle:
        """The handle of a deep-copied U-Net: the copy's hooks are rebound to a new handle on the copy."""
        new = object.__new__(FreeUHandle)  # not copy.copy: __reduce__ refuses (pickling)
        new.__dict__.update(self.__dict__)
        memo[id(self)] = new
        new.unet = copy.deepcopy(self.unet, memo)  # through a U-Net's deepcopy: the copy already in the memo
        new.plans = copy.deepcopy(self.plans, memo)
        new._previous, new._released = None, self._released
        new._thread_call, new._traced_call, new._tensors = _ThreadCallState(), _CallState(), {}
        new._hooks = []
        for handle, spec in self._hooks:
            # the copies of the hook dicts (made now if the U-Net's deepcopy has not reached them yet): the same
            # keys, with this handle's closures rebound to the new handle
            hooks = copy.deepcopy(handle.hooks_dict_ref(), memo)
            extras = [copy.deepcopy(ref(), memo) for ref in handle.extra_dict_ref]
            hooks[handle.id] = new._hook(spec)
            copied = RemovableHandle(hooks, extra_dict=extras)
            copied.id = handle.id
            new._hooks.append((copied, spec))
        return new

    @staticmethod
    def _guard_hooks_in_compiled_graphs() -> None:
        """Make torch.compile check module hooks before it reuses a graph, once per process.

        By default dynamo does not guard on hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a U-Net
        compiled after an unpatched one of the same class reuses the unpatched graph, and hooks added to a module
        after it was compiled are never seen: FreeU would be silently dropped. With the guards on, every change of
        FreeU's hooks (new settings are new hook objects) makes dynamo recompile the graphs that contain them, and
        only those; a graph whose hooks come back is reused from its cache. Graphs compiled before the switch have no
        such guards: where any exist they are dropped, once (they recompile at their next call).
        """
        try:
            import torch._dynamo.config as dynamo_config
            from torch._dynamo.utils import counters
        except ImportError:  # pragma: no cover - a torch build without dynamo compiles nothing
            return
        if getattr(dynamo_config, "skip_nnmodule_hook_guards", False):
            dynamo_config.skip_nnmodule_hook_guards = False
            if counters["stats"]["unique_graphs"] > 0:
                torch.compiler.reset()
                logger.info("FreeU: torch.compile now guards on module hooks; graphs compiled before were dropped")
            else:
                logger.info("FreeU: torch.compile now guards on module hooks (skip_nnmodule_hook_guards=False)")

    # -- hooks ----------------------------------------------------------------------------------------------------

    def _call_hook(self, sample_name: str, timestep_name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            sample = args[0] if args else kwargs.get(sample_name)
            timesteps = args[1] if len(args) > 1 else kwargs.get(timestep_name)
            if not isinstance(sample, torch.Tensor):
                raise RuntimeError(f"FreeU: could not read the U-Net's input {sample_name!r} from its forward call")
            if timesteps is None and self.config.windowed:
                raise RuntimeError(
                    f"FreeU: a step window needs the timestep, but the U-Net's forward got no {timestep_name!r}"
                )
            if self.config.windowed and not _compiling():  # once per call, not per join
                t = torch.as_tensor(timesteps)
                steps = self.config.num_train_timesteps
                if t.device.type != "meta" and bool(((t < 0) | (t > steps)).any()):
                    raise RuntimeError(_window_timestep_error(t, steps))
            self._call.batch = sample.shape[0]
            self._call.timesteps = timesteps
            if self._token_joins:  # as they are (no int(): an exporter would fix a symbolic size to its example)
                self._call.size = (sample.shape[-2], sample.shape[-1])

        return hook

    @property
    def _call(self) -> _CallState:
        return self._traced_call if _compiling() else self._thread_call

    def factors_given(self, factors: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> _FactorsGiven:
        """For a handle made with factor inputs (:func:`apply_with_factor_inputs`): while open, the U-Net's calls
        (in this thread) take stage ``k``'s ``b`` and ``s`` from ``factors[k]``, tensors of one value or one per
        sample of the U-Net's batch, instead of the settings' numbers; the window, the version, the convention and
        the threshold stay the settings'. An exporter that traces a call inside it makes the factors graph inputs."""
        if not self.factor_inputs:
            raise ValueError("factors_given needs a handle made by apply_with_factor_inputs")
        missing = [k for k in sorted({p.stage for p in self.plans} - {None}) if k not in factors]
        if missing:
            raise ValueError(f"factors_given: no factors for stage(s) {missing} of this U-Net")
        return _FactorsGiven(self, factors)

    def _end_call_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._call.batch = None
        self._call.timesteps = None
        self._call.size = None
        self._call.structure = None

    def _structure_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Before a block that normalises its backbone and then joins the skip: keep its input for version 2's
        map (the join runs next, inside this block's forward)."""
        x = args[0] if args else kwargs.get(_input_name(module))
        self._call.structure = x if isinstance(x, torch.Tensor) else None

    def _per_sample_tensor(self, name: str, values: tuple[float, ...], device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._tensors:
            self._tensors[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return self._tensors[key]

    def _row_factors(self, stage: int, rows: int, device: torch.device, where: str) -> tuple[Any, Any, Any] | None:
        """``(b, s, high)`` for this call: python floats, or float32 tensors with one value per row; ``None`` to
        skip."""
        settings = self.config.stage(stage)
        b, s, high = settings.b, settings.s, settings.high
        if not self._needs_call_state:
            return b, s, high
        if self.factor_inputs:
            given = self._call.factors
            if given is None or stage not in given:
                raise RuntimeError(
                    f"FreeU hook on {where}: these hooks take stage {stage}'s factors with each call (an exported "
                    "U-Net's inputs); call the U-Net inside FreeUHandle.factors_given({stage: (b, s), ...})"
                )
            b, s = given[stage]
        batch = self._call.batch
        if batch is None:
            raise RuntimeError(
                f"FreeU hook on {where}: a step window and per-sample factors read the U-Net's own inputs (timestep, "
                "batch) in a forward pre-hook on the U-Net, and it did not run for this call. Either a block was "
                "called outside the U-Net's forward (call the U-Net), or FreeU was applied while the U-Net's forward "
                "was already running, e.g. from a wrapper inside it such as a ComfyUI DIFFUSION_MODEL wrapper: apply "
                "FreeU before the U-Net is called, or, in ComfyUI or Forge, install freeu.output_block_patch "
                "through the host's own per-model patch instead"
            )
        if rows % batch:
            raise RuntimeError(f"FreeU hook on {where}: {rows} rows is not a multiple of the U-Net batch {batch}")
        frames = rows // batch
        weight: torch.Tensor | float = 1.0
        if self.config.windowed:
            t = torch.as_tensor(self._call.timesteps, device=device).to(torch.float32).reshape(-1)
            if t.numel() not in (1, batch):
                raise RuntimeError(f"FreeU: {t.numel()} timesteps for a U-Net batch of {batch}")
            progress = 1.0 - t.expand(batch) / self.config.num_train_timesteps
            weight = freeu_join.window_strength(
                freeu_join.window_weight(progress, self.config.start, self.config.stop, self.config.ramp)
            )
            if isinstance(weight, float) and weight == 0.0:
                return None  # outside the window: the join is left exactly as the host built it
            if isinstance(weight, torch.Tensor):
                weight = weight.repeat_interleave(frames)

        def expand(name: str, value: Any) -> Any:
            if isinstance(value, torch.Tensor):  # given with the call: one value, or one per sample of the batch
                value = torch.broadcast_to(value.to(device=device, dtype=torch.float32).reshape(-1), (batch,))
                value = value.repeat_interleave(frames) if frames != 1 else value
            elif isinstance(value, tuple):
                n = len(value)
                if batch % n:
                    raise ValueError(
                        f"per-sample {name} has {n} values, but the U-Net batch is {batch}: it must be a multiple "
                        f"of {n} (classifier-free guidance doubles the pipeline's batch)"
                    )
                value = self._per_sample_tensor(name, value, device).repeat(batch // n).repeat_interleave(frames)
            return freeu_join.blend(value, weight)

        return expand(f"b{stage}", b), expand(f"s{stage}", s), expand(f"high{stage}", high)

    def _join_hook(self, join: SkipJoin, stage: int | None) -> Callable[..., Any]:
        backbone_channels = join.backbone_channels
        in_channels = join.in_channels if join.skip_channels > 0 else None
        keyword = _input_name(join.module)
        version, threshold = self.config.version, self.config.threshold
        settings = self.config.stage(stage) if stage is not None else None
        observer = self._observer
        blocks = getattr(self.unet, "up_blocks", None)
        up_block = blocks[join.block] if isinstance(blocks, nn.ModuleList) and 0 <= join.block < len(blocks) else None

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
            if up_block is not None and _diffusers_freeu_on(up_block) and stage is not None:
                raise RuntimeError(
                    f"FreeU: diffusers' own FreeU was enabled on up_blocks.{join.block} after freeu.apply; FreeU "
                    "would be applied twice. Call unet.disable_freeu() (or freeu.remove(unet) to use diffusers' one)"
                )
            from_args = bool(args)
            x = args[0] if from_args else kwargs.get(keyword)
            if not isinstance(x, torch.Tensor):
                raise RuntimeError(f"FreeU hook on {join.name}: expected the concatenated features as first input")
            if join.patch is not None:  # (B, N, C) patch tokens: FreeU acts on their grid, (B, C, H / p, W / p)
                x = _token_grid(x, join, self._call.size)
            elif join.channels_last:  # (B, H, W, C): the same numbers seen channels first, no copy
                if x.dim() != 4:
                    raise RuntimeError(f"FreeU hook on {join.name}: expected (B, H, W, C), got {tuple(x.shape)}")
                x = x.permute(0, 3, 1, 2)
            width_ok = x.shape[1] == in_channels if in_channels is not None else x.shape[1] > backbone_channels
            if x.dim() != 4 or not width_ok:
                expected = in_channels if in_channels is not None else f"more than {backbone_channels}"
                raise RuntimeError(
                    f"FreeU hook on {join.name}: expected (B, {expected}, H, W) = backbone {backbone_channels} + "
                    f"skip channels, got shape {tuple(x.shape)}"
                )
            factors = None if stage is None else self._row_factors(stage, x.shape[0], x.device, join.name)
            if factors is None:
                if observer is not None:
                    backbone, skip = x[:, :backbone_channels], x[:, backbone_channels:]
                    observer(JoinObservation(join, stage, backbone, skip, backbone, skip))
                return None
            assert settings is not None
            backbone, skip_in = x[:, :backbone_channels], x[:, backbone_channels:]
            op = dict(version=version, threshold=threshold, factors=factors, structure=self._structure(join))
            if not _compiling() and not (torch.is_grad_enabled() and x.requires_grad):
                # eager inference: every part written once into the one new tensor, no concatenation pass; it keeps
                # the host's layout (contiguous, or channels-last in a U-Net moved to torch.channels_last)
                out = torch.empty_like(x)
                _, skip = freeu_join.apply_join(backbone, skip_in, settings, out=out, **op)
            else:
                # differentiable, and what inductor fuses into one kernel anyway
                first, skip = freeu_join.apply_join(backbone, skip_in, settings, **op)
                out = torch.cat([first, skip], dim=1)
            if observer is not None:
                observer(JoinObservation(join, stage, backbone, skip_in, out[:, :backbone_channels], skip))
            if join.patch is not None:  # back to the tokens' layout
                out = out.flatten(2).transpose(1, 2).contiguous()
            elif join.channels_last:  # back to (B, H, W, C); empty_like kept the input's layout, so no copy
                out = out.permute(0, 2, 3, 1)
            if from_args:
                return (out, *args[1:]), kwargs
            return args, {**kwargs, keyword: out}

        return hook

    def _structure(self, join: SkipJoin) -> torch.Tensor | None:
        """Version 2's structure feature for ``join``: ``None`` where the backbone at the join gives it; else the
        block input its structure hook kept (taken, so that it is used once)."""
        if join.structure is None or self.config.version != 2:
            return None
        kept, self._call.structure = self._call.structure, None
        if kept is None:
            raise RuntimeError(
                f"FreeU hook on {join.name}: version 2 reads its map from the input of the block around this join "
                f"({type(join.structure).__name__}), and the block did not run: call the block or the U-Net, not "
                "the join's layer alone"
            )
        return kept

    # -- user API -------------------------------------------------------------------------------------------------

    def remove(self) -> bool:
        """Take these settings off the U-Net: ``True`` if they were installed (FreeU is off now), ``False`` if they
        were already replaced or removed. Either way the handle is released: no block restores it later."""
        _refuse_inside_forward(self.unet, "freeu.remove")
        with _LIFECYCLE:
            self._released = True
            if not self.active:
                return False
            self._uninstall()
            return True

    def __enter__(self) -> FreeUHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leave the block: take these settings off and, if they were installed, put back the nearest previous
        handle that is not released (none: FreeU is off)."""
        with _LIFECYCLE:
            if not self.remove():
                return
            previous = self._previous
            while previous is not None and previous._released:
                previous = previous._previous
            if previous is not None:
                previous._install()

    def __repr__(self) -> str:
        stages = [p.stage for p in self.plans]
        counts = ", ".join(f"{stages.count(k)} at stage {k}" for k in range(1, self.config.num_stages + 1))
        return f"FreeUHandle({self.config}, joins: {counts}, {stages.count(None)} untouched, active={self.active})"


def _token_grid(x: torch.Tensor, join: SkipJoin, size: tuple[Any, Any] | None) -> torch.Tensor:
    """A token join's input ``(B, N, C)`` as the grid ``(B, C, H / patch, W / patch)`` of the model's input (a
    copy: channels first, as FreeU's maps are)."""
    if size is None:
        raise RuntimeError(
            f"FreeU hook on {join.name}: a transformer's long skip needs the input's size, read by a forward pre-hook "
            "on the model, and it did not run for this call: call the model itself, after freeu.apply"
        )
    assert join.patch is not None
    rows, cols = size[0] // join.patch, size[1] // join.patch
    if x.dim() == 3 and x.shape[1] != rows * cols:  # a host that pads the input to whole patches (ComfyUI)
        rows, cols = -(-size[0] // join.patch), -(-size[1] // join.patch)
    if x.dim() != 3 or x.shape[1] != rows * cols:
        raise RuntimeError(
            f"FreeU hook on {join.name}: expected (B, {rows} x {cols} patch tokens, C) for an input of {size[0]} x "
            f"{size[1]} in patches of {join.patch}, got shape {tuple(x.shape)}"
        )
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], rows, cols).contiguous()


def _resolve_config(
    model: object, config: FreeUConfig | None, preset: object, overrides: dict[str, Any], stages: Any = None
) -> FreeUConfig:
    """``apply``'s arguments through the one settings front door (:func:`freeu.settings.resolve`)."""
    if config is not None and preset is not None:
        raise TypeError("give either config or preset, not both")
    if config is not None and not isinstance(config, FreeUConfig):
        raise TypeError(f"config must be a FreeUConfig, got {type(config).__name__}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if config is None and preset is None:
        missing = [k for k in ("b1", "b2", "s1", "s2") if k not in given]
        if missing:
            raise TypeError(
                f"apply needs b1, b2, s1 and s2 (missing: {', '.join(missing)}), or preset=..., or config=..."
            )
    return resolve(Settings(preset=config if config is not None else preset, **given, stages=stages), model).config


def _diffusers_freeu_on(block: nn.Module) -> bool:
    """Whether diffusers' ``enable_freeu`` has set its factors on this up block (``disable_freeu`` sets None)."""
    return any(getattr(block, key, None) is not None for key in _DIFFUSERS_FREEU_KEYS)


#: U-Net classes trained with EDM's preconditioning: whatever drives them passes ``log(sigma) / 4`` as the timestep.
_EDM_UNETS = ("UNetSpatioTemporalConditionModel",)


def _edm_timesteps(model: object, unet: nn.Module) -> str | None:
    """What makes the U-Net receive EDM's ``log(sigma) / 4`` instead of a DDPM timestep, or ``None``: an EDM
    scheduler (``EDM...``, or one with ``sigma_data``), a scheduler set to continuous timesteps
    (``timestep_type="continuous"``, as Stable Video Diffusion's Euler scheduler), or a U-Net class trained that way
    (Stable Video Diffusion's), which tells even without the pipeline."""
    if type(unet).__name__ in _EDM_UNETS:
        return f"{type(unet).__name__} (Stable Video Diffusion's U-Net, trained with EDM's preconditioning)"
    scheduler = getattr(model, "scheduler", None)
    if scheduler is None:
        return None
    name = type(scheduler).__name__
    settings = getattr(scheduler, "config", None)
    settings = settings if isinstance(settings, Mapping) else {}
    if name.startswith("EDM") or settings.get("sigma_data") is not None:
        return name
    if settings.get("timestep_type") == "continuous":
        return f"{name} with timestep_type='continuous'"
    return None


def _check_window_schedule(model: object, unet: nn.Module, config: FreeUConfig) -> None:
    """A step window where the U-Net receives EDM's ``log(sigma) / 4`` instead of a DDPM timestep would mean
    nothing: refuse it before anything is installed (a U-Net given alone whose class does not tell refuses the first
    timestep outside ``[0, num_train_timesteps]``)."""
    if not config.windowed:
        return
    if is_stable_cascade_unet(unet) and config.num_train_timesteps != 1:
        raise ValueError(
            f"start/stop/ramp: {type(unet).__name__} (Stable Cascade) receives the timestep as a ratio in [0, 1] "
            f"(1: pure noise), not a step of {config.num_train_timesteps}: give num_train_timesteps=1 so that the "
            "window reads the position 1 - ratio"
        )
    edm = _edm_timesteps(model, unet)
    if edm is not None:
        raise ValueError(
            f"start/stop/ramp: a step window reads the trajectory position from the DDPM timestep the U-Net "
            f"receives, but with {edm} it receives EDM's log(sigma) / 4: the window would mean nothing. "
            "Leave start, stop and ramp out for this model"
        )


def _refuse_inside_forward(unet: nn.Module, what: str) -> None:
    """``RuntimeError`` when this thread is inside the ``forward`` of ``unet`` or of one of its modules (a hook of a
    block, or a wrapper, calling ``what``): the joins already passed would have run with the old settings and the
    rest with the new ones. The U-Net's own forward hooks run after its forward returned, so they may change
    settings (the guidance meter reruns the U-Net from one). Other threads' forwards are their own."""
    frame = sys._getframe(1)
    running = []
    while frame is not None:
        if frame.f_code.co_name == "forward" and "self" in frame.f_code.co_varnames:
            running.append(id(frame.f_locals.get("self")))
        frame = frame.f_back
    if running and not {id(m) for m in unet.modules()}.isdisjoint(running):
        raise RuntimeError(
            f"{what} was called while this U-Net's forward is running (from a hook or a wrapper inside it): the "
            "skip joins already passed would keep the old settings and the rest take the new ones. Call it between "
            "forward passes (e.g. in a diffusers callback_on_step_end), or, in ComfyUI or Forge, install "
            "freeu.output_block_patch through the host's own per-model patch"
        )


def _check_no_diffusers_freeu(unet: nn.Module) -> None:
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        if _diffusers_freeu_on(block):
            raise ValueError(
                f"diffusers' own FreeU is enabled on this U-Net (up_blocks.{i} has b1/b2/s1/s2 set); FreeU would be "
                "applied twice. Call unet.disable_freeu() first."
            )


def apply(
    model: object,
    config: FreeUConfig | None = None,
    *,
    preset: str | os.PathLike[str] | Preset | None = None,
    b1: Factor | None = None,
    b2: Factor | None = None,
    s1: Factor | None = None,
    s2: Factor | None = None,
    version: Version | None = None,
    convention: Convention | None = None,
    threshold: int | None = None,
    start: float | None = None,
    stop: float | None = None,
    ramp: float | None = None,
    num_train_timesteps: int | None = None,
    stages: str | Mapping[int, Mapping[str, Any]] | None = None,
    layout: CustomUNet | None = None,
    observer: Callable[[JoinObservation], None] | None = None,
) -> FreeUHandle:
    """Apply FreeU to a U-Net, or to the U-Net a pipeline or wrapper holds; returns a handle (also a context manager).

    Args:
        model: a U-Net of a supported family, or what holds one (a diffusers pipeline, an LDM wrapper, a
            ``torch.compile`` wrapper); any other U-Net with ``layout``.
        config: the settings as a :class:`FreeUConfig`.
        preset: a name from ``freeu.PRESETS`` (or a :class:`freeu.Preset`), ``"auto"`` (the preset of the layout,
            :func:`freeu.settings.detect_preset`), or a preset file (``.toml``, :func:`freeu.config.load_preset_file`),
            instead of ``config``.
        b1, b2, s1, s2, version, convention, threshold, start, stop, ramp, num_train_timesteps: the fields of
            :class:`FreeUConfig` (see it for each); next to ``config`` or ``preset`` they override its fields, alone
            all four factors are needed.
        stages: stage settings beyond ``b1..s2``, as text (``"3:b=1.1,s=0.9; 1:high=1.1"``,
            :func:`freeu.config.parse_stage_settings`) or ``{stage: {field: value}}``, applied on top of the rest.
        layout: a :class:`CustomUNet` describing a U-Net this library does not know.
        observer: called at every skip join of every forward with a :class:`JoinObservation` (joins FreeU leaves
            alone included), for analyses.

    Returns:
        A :class:`FreeUHandle`: ``remove()`` it, or use it as a context manager (the previous settings come back on
        exit). Applying to a patched U-Net replaces the settings; it never stacks.

    Raises:
        ValueError, TypeError: a setting out of range, an unknown preset or convention, a U-Net no stage matches;
            :class:`UnsupportedModelError` for a model of no known family. Everything is validated before the model
            is touched: on any error the model is left as it was.
    """
    # size: the public API takes each FreeUConfig field as a keyword (``freeu.apply(unet, b1=1.3, s1=0.9, ...)``);
    # the signature and the docstring are most of it: the body only gathers the fields and checks them, then installs
    overrides = dict(
        b1=b1, b2=b2, s1=s1, s2=s2, version=version, convention=convention, threshold=threshold,
        start=start, stop=stop, ramp=ramp, num_train_timesteps=num_train_timesteps,
    )  # fmt: skip
    resolved = _resolve_config(model, config, preset, overrides, stages)
    unet, unet_layout = _layout(model, layout)
    _check_no_diffusers_freeu(unet)
    _check_window_schedule(model, unet, resolved)
    _refuse_inside_forward(unet, "freeu.apply")
    plans = _plans(unet_layout, resolved.convention, resolved.num_stages)
    found = {p.stage for p in plans}
    if found == {None}:
        raise ValueError(
            f"convention={resolved.convention!r} assigns no skip join of this U-Net to a FreeU stage: backbone widths "
            f"{sorted({j.backbone_channels for j in unet_layout.joins})}, base width {unet_layout.base_channels} (the "
            "official convention wants 4x and 2x the base width). Try convention='diffusers'."
        )
    for stage in range(1, resolved.num_stages + 1):
        if stage not in found and not resolved.is_identity(stage):
            warnings.warn(
                f"FreeU stage {stage} matches no skip join of this U-Net under convention={resolved.convention!r}; "
                f"its settings have no effect",
                stacklevel=2,
            )

    return _install(unet, resolved, plans, layout, observer)


def _install(
    unet: nn.Module, config: FreeUConfig, plans: list[JoinPlan], layout: CustomUNet | None,
    observer: Callable[[JoinObservation], None] | None, factor_inputs: bool = False,
) -> FreeUHandle:  # fmt: skip
    with _LIFECYCLE:  # another thread's apply or remove sees the U-Net before or after this one, never between
        old: FreeUHandle | None = getattr(unet, _HANDLE_ATTR, None)
        if old is not None:
            old._uninstall()  # replaced, not released: leaving this handle's block brings it back
        handle = FreeUHandle(unet, config, plans, old, layout, observer, factor_inputs)
        handle._install()
    logger.debug("FreeU applied: %r", handle)
    return handle


def apply_with_factor_inputs(model: object, config: FreeUConfig, *, layout: CustomUNet | None = None) -> FreeUHandle:
    """FreeU with the factors given at each call rather than fixed: what ``freeu export``'s "inputs" mode traces.

    ``config`` sets everything but the factors (version, convention, threshold, stages beyond the factors, the
    window); every join of a stage is hooked, and each call must run inside :meth:`FreeUHandle.factors_given`. With
    the factors at 1 a call computes the plain U-Net's output. Validated as :func:`apply`; a handle like its."""
    if not isinstance(config, FreeUConfig):
        raise TypeError(f"config must be a FreeUConfig, got {type(config).__name__}")
    unet, unet_layout = _layout(model, layout)
    _check_no_diffusers_freeu(unet)
    _refuse_inside_forward(unet, "freeu.apply")
    plans = _plans(unet_layout, config.convention, config.num_stages)
    if {p.stage for p in plans} == {None}:
        raise ValueError(f"convention={config.convention!r} assigns no skip join of this U-Net to a FreeU stage")
    return _install(unet, config, plans, layout, None, factor_inputs=True)


class _FactorsGiven:
    """The context of :meth:`FreeUHandle.factors_given` (a plain class: exporters trace through it)."""

    def __init__(self, handle: FreeUHandle, factors: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.handle, self.factors = handle, factors

    def __enter__(self) -> None:
        self.handle._call.factors = self.factors

    def __exit__(self, *exc: object) -> None:
        self.handle._call.factors = None


def _installed(model: object) -> FreeUHandle | None:
    """The active handle on ``model`` (a U-Net described with CustomUNet, say) or on the U-Net it holds."""
    if isinstance(model, nn.Module):
        handle = getattr(model, _HANDLE_ATTR, None)
        if handle is not None:
            return handle
        try:
            return getattr(find_unet(model), _HANDLE_ATTR, None)
        except UnsupportedModelError:
            return None  # a module of no known family: nothing can be installed on it without a layout
    return getattr(find_unet(model), _HANDLE_ATTR, None)


def remove(model: object) -> bool:
    """Take FreeU off ``model``'s U-Net (or what holds it), whoever applied it; ``False`` if it was not applied.

    Afterwards the U-Net is bit-identical to one never patched: every hook is gone.
    """
    with _LIFECYCLE:  # the handle found is the one removed, whatever other threads apply meanwhile
        handle = _installed(model)
        return handle.remove() if handle is not None else False


def active_config(model: object) -> FreeUConfig | None:
    """The FreeU settings installed on ``model``'s U-Net (or what holds it), or ``None`` when FreeU is off."""
    handle = _installed(model)
    return handle.config if handle is not None else None
