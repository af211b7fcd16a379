"""Train the demo U-Net on CPU: deterministic, resumable, early-stopped on a weight-free sample-quality metric.

``python tools/train_demo.py --out runs/demo`` trains :data:`freeu.apps.demo_model.UNET_CONFIG` with the DDPM noise
schedule (epsilon prediction, MSE) on patches from :class:`freeu.apps.demo_data.PatchSampler`, with AdamW, a linear
learning-rate warm-up and EMA weights (bf16 autocast on CPU by default; weights and optimiser stay float32).
Everything random is drawn from generators seeded by ``(seed, step)``, so a run is a pure function of its config,
and running it again with the same ``--out`` resumes from ``checkpoint.pt`` (model, optimiser, EMA, step, RNG
states, early-stopping state, log accumulators) to exactly the parameters an uninterrupted run would have.
Checkpoints are written atomically (temporary file, then rename) every ``checkpoint_every`` steps, after each
evaluation, and on SIGINT/SIGTERM (after finishing the current step).

Every ``eval_every`` steps the EMA model samples a fixed set of seeds with DDIM and is scored against patches of
the held-out images by the multi-scale sliced Wasserstein distance (:func:`freeu.apps.measures.swd_laplacian`,
mean over levels; lower is better); the radial power spectrum distance is logged next to it. The best EMA weights
are kept in ``best.pt``. Training stops after ``patience`` evaluations without a relative improvement of
``min_improvement``, at ``max_steps``, or after ``max_hours`` of training time; it then exports the best EMA
weights (float16 safetensors and a ``config.json``) to ``export_dir``.

Files in ``--out``: ``checkpoint.pt``, ``best.pt``, ``train_config.json``, ``train_log.jsonl`` (mean loss every
``log_every`` steps), ``eval_log.jsonl``, ``samples/step_XXXXXXX.png`` (sample grid per evaluation).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import pickle
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..demo_data import HELD_OUT_IMAGES, TRAIN_IMAGES, PatchSampler, mix_seed
from ..demo_model import SCHEDULER_CONFIG, UNET_CONFIG, WEIGHTS_DIR, build_scheduler, build_unet, check_freeu_stages
from ..measures import rapsd_distance, swd_laplacian
from ..runtime import Request, UNetModel, to_unit_range

__all__ = ["TrainConfig", "evaluate", "export_weights", "main", "save_grid", "train"]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
_PRECISIONS = ("fp32", "bf16")

#: Config fields that change the training trajectory or the meaning of the eval metric: a resume must match them.
_FIXED_ON_RESUME = (
    "seed",
    "batch_size",
    "lr",
    "warmup_steps",
    "weight_decay",
    "adam_betas",
    "grad_clip",
    "ema_decay",
    "precision",
    "unet",
    "eval_samples",
    "eval_sampler_steps",
    "eval_reference",
    "classes",
    "label_dropout",
    "eval_guidance",
)

# Independent random streams per step (see demo_data.mix_seed).
_STREAM_NOISE = 1
_STREAM_REFERENCE = 2
_STREAM_FLOOR = 3
#: The evaluation metric's stream (public: ``tools/demo_card.py`` recomputes a run's evaluation with it).
STREAM_METRIC = 4


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults: the shipped demo model, sized for 2 CPU cores in ~1.5 h."""

    out: str
    seed: int = 0
    batch_size: int = 32
    max_steps: int = 10_000
    max_hours: float | None = None
    lr: float = 2e-4
    warmup_steps: int = 500
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: Precision = "bf16"
    log_every: int = 50
    checkpoint_every: int = 100
    eval_every: int = 500
    patience: int = 6
    min_improvement: float = 0.01
    eval_samples: int = 128
    eval_sampler_steps: int = 25
    eval_reference: int = 512
    threads: int = 2
    unet: dict[str, Any] = dataclasses.field(default_factory=lambda: copy.deepcopy(UNET_CONFIG))
    export_dir: str | None = str(WEIGHTS_DIR)
    progress: bool = True
    #: Class-conditional: the class of a patch is the picture it was cropped from (one of TRAIN_IMAGES); with
    #: probability ``label_dropout`` the label is the null class instead, so one network learns both the conditional
    #: and the unconditional prediction (classifier-free guidance, Ho & Salimans 2022). The evaluation samples the
    #: classes in turn at guidance ``eval_guidance``.
    classes: bool = False
    label_dropout: float = 0.1
    eval_guidance: float = 2.0

    def __post_init__(self) -> None:
        if self.classes and "num_class_embeds" not in self.unet:
            self.unet = {**self.unet, "num_class_embeds": len(TRAIN_IMAGES) + 1}  # the last one: no class

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what is allowed."""
        positive = (
            "batch_size",
            "max_steps",
            "log_every",
            "checkpoint_every",
            "eval_every",
            "patience",
            "eval_samples",
            "eval_sampler_steps",
            "eval_reference",
            "threads",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("weight_decay", "min_improvement"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value < 1):
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if not (0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if self.max_hours is not None and not (math.isfinite(self.max_hours) and self.max_hours > 0):
            raise ValueError(f"max_hours must be None or a finite number > 0, got {self.max_hours!r}")
        if not (0 <= self.label_dropout < 1):
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout!r}")
        if not (math.isfinite(self.eval_guidance) and self.eval_guidance >= 0):
            raise ValueError(f"eval_guidance must be a finite number >= 0, got {self.eval_guidance!r}")
        if self.classes and self.unet.get("num_class_embeds") != len(TRAIN_IMAGES) + 1:
            raise ValueError(
                f"a class-conditional run needs unet num_class_embeds = {len(TRAIN_IMAGES) + 1} (the "
                f"{len(TRAIN_IMAGES)} pictures and no class), got {self.unet.get('num_class_embeds')}"
            )
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {list(_PRECISIONS)}, got {self.precision!r}")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data


# ----------------------------------------------------------------------------------------------- small utilities


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over ``path`` (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _save_torch(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _load_torch(path: Path) -> Any:
    """A checkpoint this script wrote, loaded with ``weights_only=True``: tensors and plain Python values only, so a
    forged file cannot run code; ``ValueError`` naming the file when it holds anything else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} is not a checkpoint this script wrote: it holds more than tensors and plain values, and "
            f"loading it could run code, so it was refused ({first})"
        ) from None


def _write_json(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop log records after ``last_step``: they were written after the checkpoint being resumed and will be redone."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= last_step]
    if len(kept) != len(lines):
        logger.info("%s: dropping %d records after step %d", path.name, len(lines) - len(kept), last_step)
        _atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update ``step`` (0-based): linear warm-up over ``warmup_steps``, then constant."""
    if cfg.warmup_steps == 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay after update ``step``: ``min(ema_decay, (1 + step) / (10 + step))``, so early weights fade fast."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM (main thread only), so the loop can finish its step and checkpoint."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():  # second signal: give up at once
            raise KeyboardInterrupt
        logger.warning("signal %d: finishing the current step, checkpointing and stopping", signum)
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------------- sampling and eval


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2, scale: int = 2) -> None:
    """Write ``images`` (``(N, 3, H, W)`` in ``[0, 1]``) as a PNG grid, ``nrow`` per row, upscaled ``scale`` times."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, padding + rows * (h + padding), padding + nrow * (w + padding))
    for i, image in enumerate(images):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = image.clamp(0, 1)
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    path = Path(path)
    _atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def evaluation_reference(cfg: TrainConfig) -> torch.Tensor:
    """The fixed held-out patches that samples are scored against (``eval_reference`` of them, in ``[0, 1]``)."""
    sampler = PatchSampler(HELD_OUT_IMAGES, seed=mix_seed(cfg.seed, _STREAM_REFERENCE), allow_held_out=True)
    return sampler.sample(0, cfg.eval_reference)[0]


def score(images: torch.Tensor, reference: torch.Tensor, seed: int) -> dict[str, Any]:
    """The eval metrics of ``images`` against ``reference``: SWD per Laplacian level and mean, and RAPSD distance."""
    swd = swd_laplacian(images, reference, seed=seed)
    return {
        "swd": [round(float(v), 6) for v in swd],
        "swd_mean": float(swd.mean()),
        "rapsd": float(rapsd_distance(images, reference)),
    }


def evaluate(unet: torch.nn.Module, cfg: TrainConfig, reference: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """Sample ``eval_samples`` fixed seeds (0, 1, ...) with DDIM and score them; returns (metrics, samples).
    Class-conditional: seed ``i`` samples class ``i mod classes`` at guidance ``eval_guidance``."""
    classes = TRAIN_IMAGES if cfg.classes else None
    model = UNetModel(unet, build_scheduler("ddim"), "the EMA model", classes=classes)
    seeds = list(range(cfg.eval_samples))
    if classes is None:
        final = model.sample(seeds, Request(steps=cfg.eval_sampler_steps), output="tensor", batch_size=64)
    else:
        final = torch.empty(len(seeds), 3, model.size.height, model.size.width)
        for k, name in enumerate(classes):
            mine = seeds[k :: len(classes)]
            if mine:
                request = Request(steps=cfg.eval_sampler_steps, prompt=name, guidance=cfg.eval_guidance)
                final[k :: len(classes)] = model.sample(mine, request, output="tensor", batch_size=64).float().cpu()
    samples = to_unit_range(final)
    return score(samples, reference, mix_seed(cfg.seed, STREAM_METRIC)), samples


def reference_floor(cfg: TrainConfig, reference: torch.Tensor) -> dict[str, Any]:
    """The metrics of real *training* patches against the held-out reference: what a perfect model would score."""
    real = PatchSampler(TRAIN_IMAGES, seed=mix_seed(cfg.seed, _STREAM_FLOOR)).sample(0, cfg.eval_samples)[0]
    return score(real, reference, mix_seed(cfg.seed, STREAM_METRIC))


# ------------------------------------------------------------------------------------------------ the training


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def _check_resume(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    current = cfg.to_json()
    for key in _FIXED_ON_RESUME:
        if saved.get(key) != current[key]:
            raise ValueError(
                f"{key}={current[key]!r} differs from {saved.get(key)!r} in the checkpoint {path}: resuming must keep "
                f"{list(_FIXED_ON_RESUME)}; use another --out to start a new run"
            )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in ``cfg.out`` until early stop, ``max_steps`` or ``max_hours``; returns a summary.

    Uses ``cfg.threads`` torch threads while it runs (the previous count is restored afterwards).
    """
    cfg.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    train_log, eval_log = out / "train_log.jsonl", out / "eval_log.jsonl"

    unet = build_unet(cfg.unet, seed=cfg.seed)
    check_freeu_stages(unet)
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=lr_at(cfg, 0), betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
    )
    noise_scheduler = build_scheduler("ddpm")
    alphas = noise_scheduler.alphas_cumprod
    num_timesteps = noise_scheduler.config.num_train_timesteps
    state: dict[str, Any] = {
        "step": 0,
        "best_metric": math.inf,
        "best_step": None,
        "bad_evals": 0,
        "stopped": None,
        "loss_sum": 0.0,
        "loss_count": 0,
        "elapsed_s": 0.0,
        "floor": None,
    }

    if ckpt_path.exists():
        ckpt = _load_torch(ckpt_path)
        _check_resume(ckpt["config"], cfg, ckpt_path)
        unet.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        state.update(ckpt["state"])
        logger.info("resumed %s at step %d", ckpt_path, state["step"])
    _truncate_jsonl(train_log, state["step"])
    _truncate_jsonl(eval_log, state["step"])
    _write_json(cfg.to_json(), out / "train_config.json")

    if state["stopped"] == "early_stop":
        logger.info("run in %s already early-stopped at step %d (best step %s)", out, state["step"], state["best_step"])
    else:
        state["stopped"] = None
        _train_loop(_Run(cfg, unet, ema, optimizer, alphas, num_timesteps, state, out))

    summary = {
        "step": state["step"],
        "stopped": state["stopped"],
        "best_step": state["best_step"],
        "best_metric": state["best_metric"] if math.isfinite(state["best_metric"]) else None,
        "floor": state["floor"],
        "elapsed_s": state["elapsed_s"],
    }
    if cfg.export_dir is not None and state["stopped"] in ("early_stop", "max_steps", "time_limit"):
        export_weights(out, cfg.export_dir)
    return summary


@dataclasses.dataclass(frozen=True)
class _Run:
    """A training run as its loop works on it: the config, the U-Net and its EMA copy, the optimiser, the DDPM noise
    schedule (``alphas``: its cumulative products) and the run's folder; ``state`` is its progress (step, early
    stopping, log accumulators, training time), changed in place and checkpointed with the rest."""

    cfg: TrainConfig
    unet: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    alphas: torch.Tensor
    num_timesteps: int
    state: dict[str, Any]
    out: Path

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt``: everything a resume needs to go on exactly as an uninterrupted run would."""
        payload = {
            "config": self.cfg.to_json(),
            "model": self.unet.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(),
            "state": dict(self.state),
        }
        _save_torch(payload, self.out / "checkpoint.pt")


def _train_loop(run: _Run) -> None:
    """Train from ``run.state["step"]`` until a stop: log, evaluate and checkpoint on the config's schedule."""
    from tqdm.auto import tqdm

    cfg, state = run.cfg, run.state
    sampler = PatchSampler(TRAIN_IMAGES, seed=cfg.seed)
    reference: torch.Tensor | None = None
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=cfg.max_steps,
        initial=min(state["step"], cfg.max_steps),
        desc="demo training",
        disable=not cfg.progress,
        mininterval=1.0 if interactive else 30.0,
        dynamic_ncols=True,
    )
    run.unet.train()
    mark = (time.perf_counter(), state["step"])  # the time and step of the last loss record
    session_start = time.perf_counter() - state["elapsed_s"]
    try:
        with _stop_on_signals() as stop_requested:
            while state["step"] < cfg.max_steps:
                loss, grad_norm = _train_step(run, sampler)
                state["step"] = step = state["step"] + 1
                state["loss_sum"] += loss.item()
                state["loss_count"] += 1
                state["elapsed_s"] = time.perf_counter() - session_start
                bar.update(1)
                if step % cfg.log_every == 0:
                    mark = _log_loss(run, grad_norm, mark, bar)
                evaluated = step % cfg.eval_every == 0
                if evaluated:
                    reference = _evaluate_at(run, reference)
                _set_stop(run, stop_requested.is_set())
                if evaluated or state["stopped"] is not None or step % cfg.checkpoint_every == 0:
                    state["elapsed_s"] = time.perf_counter() - session_start
                    run.checkpoint()
                if state["stopped"] is not None:
                    break
            else:
                state["stopped"] = "max_steps"
    finally:
        bar.close()
    logger.info(
        "stopped at step %d: %s; best step %s, metric %.5f",
        *[state[k] for k in ("step", "stopped")],
        state["best_step"],
        state["best_metric"],
    )


def _train_step(run: _Run, sampler: PatchSampler) -> tuple[torch.Tensor, torch.Tensor]:
    """Update ``run.state["step"]`` (0-based; the caller counts it): a batch, its noise, timesteps and (class-
    conditional) labels from the step's own generator, the loss, the clipped gradient step and the EMA update.
    Returns the loss and the gradient norm before clipping."""
    cfg, unet, step = run.cfg, run.unet, run.state["step"]
    params = list(unet.parameters())
    clean, sources = sampler.sample(step, cfg.batch_size)
    clean = clean * 2 - 1
    gen = torch.Generator().manual_seed(mix_seed(cfg.seed, step, _STREAM_NOISE))
    noise = torch.randn(clean.shape, generator=gen)
    t = torch.randint(0, run.num_timesteps, (cfg.batch_size,), generator=gen)
    labels = None
    if cfg.classes:  # the source picture, or (label dropout) the null class
        labels = torch.tensor([TRAIN_IMAGES.index(name) for name in sources])
        dropped = torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout
        labels = torch.where(dropped, len(TRAIN_IMAGES), labels)
    a = run.alphas[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(cfg, step)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        pred = unet(noisy, t, class_labels=labels).sample
    loss = F.mse_loss(pred.float(), noise)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower lr (now {cfg.lr})")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    run.optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(run.ema.parameters()), params, 1.0 - ema_decay_at(cfg, step))
    return loss, grad_norm


def _log_loss(run: _Run, grad_norm: torch.Tensor, mark: tuple[float, int], bar: Any) -> tuple[float, int]:
    """Append the mean loss since the last record (at ``mark``: time, step) to ``train_log.jsonl``, show it on the
    bar and reset the accumulators; returns the new mark."""
    state, step = run.state, run.state["step"]
    now = time.perf_counter()
    record = {
        "step": step,
        "loss": state["loss_sum"] / state["loss_count"],
        "lr": lr_at(run.cfg, step - 1),
        "grad_norm": float(grad_norm),
        "steps_per_s": (step - mark[1]) / max(now - mark[0], 1e-9),
        "elapsed_s": round(state["elapsed_s"], 1),
    }
    _append_jsonl(run.out / "train_log.jsonl", record)
    bar.set_postfix(loss=f"{record['loss']:.4f}", best=f"{state['best_metric']:.4f}")
    state["loss_sum"], state["loss_count"] = 0.0, 0
    return now, step


def _evaluate_at(run: _Run, reference: torch.Tensor | None) -> torch.Tensor:
    """Evaluate the EMA model now (the held-out reference and the real-patch floor made on first use) and put the
    U-Net back in training mode; returns the reference for the next evaluation."""
    if reference is None:
        reference = evaluation_reference(run.cfg)
    if run.state["floor"] is None:
        run.state["floor"] = reference_floor(run.cfg, reference)
        logger.info("real training patches vs held-out (floor): %s", run.state["floor"])
    _evaluate_step(run, reference)
    run.unet.train()
    return reference


def _set_stop(run: _Run, signalled: bool) -> None:
    """Name why the run stops after this step, if it does and no reason is set yet: ``max_steps``, ``time_limit``
    (``max_hours`` of training time), or ``interrupted`` (a signal)."""
    cfg, state = run.cfg, run.state
    if state["stopped"] is None and state["step"] >= cfg.max_steps:
        state["stopped"] = "max_steps"
    if state["stopped"] is None and cfg.max_hours is not None and state["elapsed_s"] >= cfg.max_hours * 3600:
        state["stopped"] = "time_limit"
    if signalled and state["stopped"] is None:
        state["stopped"] = "interrupted"


def _evaluate_step(run: _Run, reference: torch.Tensor) -> None:
    """Score the EMA model, keep it in ``best.pt`` if it improved, update the early-stopping state, log a grid."""
    cfg, ema, state, out = run.cfg, run.ema, run.state, run.out
    step = state["step"]
    start = time.perf_counter()
    metrics, samples = evaluate(ema, cfg, reference)
    metric = metrics["swd_mean"]
    improved = metric < state["best_metric"] * (1 - cfg.min_improvement)
    if improved:
        state["best_metric"], state["best_step"], state["bad_evals"] = metric, step, 0
        _save_torch({"step": step, "ema": ema.state_dict(), "metrics": metrics, "unet": cfg.unet}, out / "best.pt")
    else:
        state["bad_evals"] += 1
        if state["bad_evals"] >= cfg.patience:
            state["stopped"] = "early_stop"
    save_grid(samples[:64], out / "samples" / f"step_{step:07d}.png")
    record = {
        "step": step,
        **metrics,
        "improved": improved,
        "best_step": state["best_step"],
        "best_metric": state["best_metric"],
        "bad_evals": state["bad_evals"],
        "eval_s": round(time.perf_counter() - start, 1),
    }
    _append_jsonl(out / "eval_log.jsonl", record)
    logger.info(
        "eval step %d: swd %.5f %s rapsd %.4f%s",
        step,
        metric,
        metrics["swd"],
        metrics["rapsd"],
        " (best)" if improved else f" (no improvement {state['bad_evals']}/{cfg.patience})",
    )


# ------------------------------------------------------------------------------------------------------ export


def export_weights(run_dir: str | Path, export_dir: str | Path = WEIGHTS_DIR) -> Path:
    """Write the run's best EMA weights as float16 ``unet.safetensors`` plus ``config.json`` into ``export_dir``.

    ``config.json`` holds the U-Net config, the scheduler config and the training facts (steps, seed, data,
    held-out images, metrics). Falls back to the latest EMA weights (with a warning) if no evaluation ran yet.
    """
    from safetensors.torch import save_file

    run_dir, export_dir = Path(run_dir), Path(export_dir)
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    if not ckpt_path.exists():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} has no checkpoint.pt: nothing to export")
    ckpt = _load_torch(ckpt_path)
    if best_path.exists():
        best = _load_torch(best_path)
        weights, step, metrics = best["ema"], best["step"], best["metrics"]
    else:
        logger.warning("%s has no best.pt (no evaluation yet): exporting the latest EMA weights", run_dir)
        weights, step, metrics = ckpt["ema"], ckpt["state"]["step"], None
    overflow = [k for k, v in weights.items() if v.is_floating_point() and v.abs().max() > 65504]
    if overflow:
        raise ValueError(f"weights {overflow} exceed the float16 range; export them in float32 instead")
    half = {k: v.detach().to(torch.float16).contiguous() for k, v in weights.items()}
    cfg = ckpt["config"]
    unet_config = cfg["unet"]
    import diffusers

    config: dict[str, Any] = {
        "unet": unet_config,
        "scheduler": SCHEDULER_CONFIG,
        "training": {
            "ema_step": step,
            "steps_trained": ckpt["state"]["step"],
            "stopped": ckpt["state"]["stopped"],
            "seed": cfg["seed"],
            "batch_size": cfg["batch_size"],
            "lr": cfg["lr"],
            "warmup_steps": cfg["warmup_steps"],
            "ema_decay": cfg["ema_decay"],
            "precision": cfg["precision"],
            "parameters": sum(v.numel() for v in weights.values()),
            "train_images": list(TRAIN_IMAGES),
            "held_out_images": list(HELD_OUT_IMAGES),
            "data": "random 32x32 crops of skimage.data pictures, scale 1-4x log-uniform, h/v flips, [-1, 1]",
            "metric": "swd_mean: multi-scale sliced Wasserstein on Laplacian patches vs held-out patches (lower "
            "is better); rapsd: RMS log10 radial power spectrum distance",
            "eval": {
                "samples": cfg["eval_samples"],
                "sampler": f"DDIM {cfg['eval_sampler_steps']} steps, eta 0",
                "seeds": f"0..{cfg['eval_samples'] - 1}",
                "reference_patches": cfg["eval_reference"],
            },
            "metrics": metrics,
            "floor_real_train_patches": ckpt["state"]["floor"],
            "train_seconds": round(ckpt["state"]["elapsed_s"], 1),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
    }
    if cfg.get("classes"):
        config["classes"] = list(TRAIN_IMAGES)
        config["guidance"] = cfg["eval_guidance"]
        config["training"]["label_dropout"] = cfg["label_dropout"]
        config["training"]["eval"]["classes"] = "seed i samples class i mod 15"
        config["training"]["eval"]["guidance"] = cfg["eval_guidance"]
    export_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(export_dir / "unet.safetensors", lambda tmp: save_file(half, str(tmp), metadata={"format": "pt"}))
    _write_json(config, export_dir / "config.json")
    logger.info("exported EMA weights of step %d (%d tensors) to %s", step, len(half), export_dir)
    return export_dir


# --------------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    defaults = TrainConfig(out="")
    p = argparse.ArgumentParser(
        prog="train_demo", description="Train (or resume) the offline FreeU demo U-Net on scikit-image patches."
    )
    p.add_argument("--out", required=True, help="run directory; an existing run there is resumed")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-steps", type=int, default=defaults.max_steps, help="upper bound; early stop usually ends")
    p.add_argument("--max-hours", type=float, default=None, help="stop (and export) after this much training time")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--patience", type=int, default=defaults.patience, help="evaluations without improvement")
    p.add_argument("--min-improvement", type=float, default=defaults.min_improvement, help="relative, e.g. 0.01")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    p.add_argument("--precision", choices=_PRECISIONS, default=defaults.precision, help="bf16: CPU autocast")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--eval-samples", type=int, default=defaults.eval_samples)
    p.add_argument("--eval-sampler-steps", type=int, default=defaults.eval_sampler_steps)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--classes", action="store_true", help="class-conditional: the class is the source picture")
    p.add_argument("--label-dropout", type=float, default=defaults.label_dropout, help="null-class share (0.1)")
    p.add_argument("--eval-guidance", type=float, default=defaults.eval_guidance, help="guidance of the evaluation")
    p.add_argument("--export-dir", default=defaults.export_dir, help="where the best EMA weights go at the end")
    p.add_argument("--no-export", action="store_true", help="do not export at the end")
    p.add_argument("--export-only", action="store_true", help="export the best weights of --out and exit")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``tools/train_demo.py``)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.export_only:
        export_weights(args.out, args.export_dir)
        return 0
    cfg = TrainConfig(
        out=args.out,
        seed=args.seed,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        max_hours=args.max_hours,
        eval_every=args.eval_every,
        patience=args.patience,
        min_improvement=args.min_improvement,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        precision=args.precision,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        eval_samples=args.eval_samples,
        eval_sampler_steps=args.eval_sampler_steps,
        threads=args.threads,
        classes=args.classes,
        label_dropout=args.label_dropout,
        eval_guidance=args.eval_guidance,
        export_dir=None if args.no_export else args.export_dir,
        progress=not args.no_progress,
    )
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        summary = train(cfg)
    print(json.dumps(summary, indent=2))
    return 130 if summary["stopped"] == "interrupted" else 0
