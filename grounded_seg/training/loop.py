"""One training loop for every trainer: resumable batches, one optimiser step, logging with an
ETA, evaluation hooks and atomic checkpoints.

A trainer is a recipe around :func:`run_training`: it builds its model and optimiser, says how
batch ``i`` is made (``batches``) and what its loss is (``step_loss``), and optionally how to
evaluate, and the loop does the rest the same way for all of them:

- **batches** ``batches(step)`` for 0-based ``step``: either a pure function of ``step`` (then
  ``workers`` > 0 may build them in worker processes), or a draw from a ``numpy`` ``rng`` whose
  state the checkpoint carries, so a resumed run draws what the straight run would have;
- **one step**: the learning rate (``learning_rate(step)``, set on every group, or a torch
  ``scheduler`` stepped after the optimiser), the loss (which must be finite), ``zero_grad``,
  ``backward``, gradient clipping to ``grad_clip`` (L2 norm), ``optimizer.step()``, then
  ``after_step`` (e.g. clamping CLIP's ``logit_scale``);
- **the curve**: every ``log_every`` steps (and at the last) a row ``{"step", "seconds", ...}``
  with the mean of each of ``step_loss``'s parts since the previous row, logged with an ETA
  through the recipe's own ``logger``; ``evaluate(step)`` (model in eval mode) adds its metrics
  to the row every ``evaluate_every`` steps;
- **checkpoints** every ``checkpoint_every`` steps, at ``stop_at`` and at the last step, written
  atomically (:func:`grounded_seg.checkpoints.save_checkpoint`): model, optimiser, scheduler,
  the numpy and torch RNG states (and CUDA's, for a model on CUDA), the curve, the running
  window, the elapsed time and the recipe's ``settings``. With ``resume``, a run continues from
  the checkpoint it finds, bit for bit as if it had never stopped; a checkpoint made with other
  ``settings`` or by other code is refused with a message that says how to start over.

>>> result = run_training(model, loss_of, optimizer, batches=batch_of, steps=100,
...                       checkpoint=out / "checkpoint.pt", logger=logger)   # doctest: +SKIP
>>> result.curve[-1]                                                     # doctest: +SKIP
{'step': 100, 'seconds': 12.3, 'loss': 0.42}
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import load_checkpoint, save_checkpoint
from ..progress import eta

__all__ = ["CHECKPOINT_FORMAT", "LoopResult", "run_training"]

CHECKPOINT_FORMAT = "grounded_seg.training/1"
"""Written into every checkpoint; a checkpoint without it came from other code and is refused."""

_logger = logging.getLogger(__name__)


@dataclass
class LoopResult:
    """What :func:`run_training` did: ``curve`` (every logged row, earlier runs of a resumed
    schedule included), ``seconds`` (training time of all those runs, evaluations included),
    ``resumed_at`` (the steps at which earlier runs were resumed), ``step`` (steps done) of
    ``steps``."""

    curve: list[dict[str, Any]]
    seconds: float
    step: int
    steps: int
    resumed_at: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether all ``steps`` are done (``False`` after ``stop_at``)."""
        return self.step >= self.steps


class _StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is the batch of step ``first + i`` (for a DataLoader with ``batch_size=None``)."""

    def __init__(self, make_batch: Callable[[int], Any], first: int, stop: int) -> None:
        self.make_batch, self.first, self.stop = make_batch, first, stop

    def __len__(self) -> int:
        return self.stop - self.first

    def __getitem__(self, index: int) -> Any:
        return self.make_batch(self.first + index)


def _as_is(batch: Any) -> Any:
    return batch


def _batch_stream(
    batches: Callable[[int], Any], start: int, stop: int, workers: int
) -> Iterator[Any]:
    """The batches of steps ``start`` to ``stop - 1``, in order; built ahead in ``workers``
    processes when asked (the batches must then be a pure function of the step)."""
    if not workers:
        return (batches(step) for step in range(start, stop))
    loader = torch.utils.data.DataLoader(
        _StepBatches(batches, start, stop),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        prefetch_factor=4,
        persistent_workers=False,
        generator=torch.Generator(),  # its seed draw must not consume the global RNG (dropout)
    )
    return iter(loader)


def _changed(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    keys = list(dict.fromkeys([*now, *saved]))
    return {k: (saved.get(k), now.get(k)) for k in keys if saved.get(k) != now.get(k)}


def _device_of(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@dataclass
class _Progress:
    """The loop's resumable bookkeeping."""

    step: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    window: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0
    resumed_at: list[int] = field(default_factory=list)


def _restore_rng(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Put ``rng`` where the interrupted run's generator was: the next batch is the one it
    would have drawn."""
    rng.bit_generator.state = state


@dataclass
class _Trainee:
    """What a checkpoint saves and restores besides the loop's own bookkeeping."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    rng: np.random.Generator | None
    device: torch.device

    def state(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "numpy_rng": self.rng.bit_generator.state if self.rng is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.rng is not None:
            _restore_rng(self.rng, state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])  # dropout draws continue where they stopped
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


def _restore(path: Path, trainee: _Trainee, settings: dict[str, Any], start_over: str) -> _Progress:
    """Load a checkpoint into ``trainee``; its bookkeeping. Refuses one of other settings or
    written by other code before changing anything."""
    state = load_checkpoint(path, trainee.device, start_over=start_over)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} was not written by this version of grounded_seg's training loop; delete it "
            f"or {start_over} to start over"
        )
    if state["settings"] != settings:
        raise ValueError(
            f"the checkpoint {path} was made with other settings (checkpoint, now): "
            f"{_changed(state['settings'], settings)}; use the same ones, or {start_over}"
        )
    trainee.load(state)
    step = int(state["step"])
    return _Progress(
        step=step,
        curve=list(state["curve"]),
        window=list(state["window"]),
        elapsed=float(state["elapsed"]),
        resumed_at=[*state["resumed_at"], step],
    )


def _save(path: Path, progress: _Progress, trainee: _Trainee, settings: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "settings": settings, "step": progress.step}
    state.update(trainee.state())
    state.update(curve=progress.curve, window=progress.window, elapsed=progress.elapsed,
                 resumed_at=progress.resumed_at)  # fmt: skip
    save_checkpoint(state, path)


def _format_row(row: dict[str, Any]) -> str:
    return " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in row.items()
        if k not in ("step", "seconds")
    )


def run_training(
    model: torch.nn.Module,
    step_loss: Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]],
    optimizer: torch.optim.Optimizer,
    *,
    batches: Callable[[int], Any],
    steps: int,
    rng: np.random.Generator | None = None,
    workers: int = 0,
    scheduler: Any = None,
    learning_rate: Callable[[int], float] | None = None,
    grad_clip: float | None = None,
    after_step: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 50,
    digits: int = 4,
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    evaluate_every: int | None = None,
    evaluate_at_end: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    settings: dict[str, Any] | None = None,
    resume: bool = True,
    start_over: str = "pass resume=False (--restart)",
    stop_at: int | None = None,
    logger: logging.Logger | None = None,
) -> LoopResult:
    """Train ``model`` in place for ``steps`` optimiser steps (see the module doc).

    Args:
        model: trained in place; in train mode during the loop, eval mode after it.
        step_loss: ``step_loss(batch, step)`` -> the loss tensor and the floats to log (the
            loss's value is added as ``"loss"`` unless given).
        optimizer: any torch optimiser over ``model``'s parameters.
        batches: ``batches(step)`` -> the batch of 0-based ``step``.
        steps: the schedule's length (a resumed or ``stop_at`` run keeps the same ``steps``).
        rng: the generator ``batches`` draws from, when batches are not a pure function of the
            step; its state is checkpointed (then ``workers`` must be 0).
        workers: processes building batches ahead (a pure ``batches`` only).
        scheduler: a torch LR scheduler, stepped after each optimiser step and checkpointed.
        learning_rate: ``learning_rate(step)`` -> the rate of every parameter group for 0-based
            ``step`` (instead of a scheduler).
        grad_clip: clip the gradients' total L2 norm to this (``None`` or 0: no clipping).
        after_step: ``after_step(step, parts)``, after the optimiser step (``parts`` with
            ``"loss"``).
        log_every: a curve row every this many steps, and at the last step.
        digits: the curve's means are rounded to this many digits.
        evaluate: ``evaluate(done)`` -> metrics added to that step's row (model in eval mode).
        evaluate_every: call ``evaluate`` every this many steps (``None``: never); at the last
            step exactly when ``evaluate_at_end`` (``False``: the recipe measures its final model
            itself).
        checkpoint: the checkpoint file (``None``: none written, none resumed).
        checkpoint_every: save every this many steps (default ``log_every``); also at
            ``stop_at`` and at the last step.
        settings: what must not change between a checkpoint and a run resuming it (JSON-like).
        resume: continue from ``checkpoint`` when it exists.
        start_over: how the user starts afresh, for error messages.
        stop_at: end this run after that step (checkpoint written), to resume later.
        logger: the recipe's logger (progress, resumption).

    Raises:
        FloatingPointError: the loss is not finite.
        ValueError: an unreadable checkpoint, or one made with other ``settings`` or by other
            code.
    """
    log = logger or _logger
    if workers and rng is not None:
        raise ValueError("workers: batches drawn from a shared rng cannot be built in workers")
    settings = dict(settings or {})
    trainee = _Trainee(model, optimizer, scheduler, rng, _device_of(model))
    path = Path(checkpoint) if checkpoint is not None else None
    progress = _Progress()
    if path is not None and resume and path.is_file():
        progress = _restore(path, trainee, settings, start_over)
        log.info("resuming from %s at step %d of %d", path, progress.step, steps)
    stop = steps if stop_at is None else min(int(stop_at), steps)
    every = checkpoint_every or log_every
    started = time.perf_counter() - progress.elapsed
    model.train()
    stream = _batch_stream(batches, progress.step, stop, workers)
    for step, batch in enumerate(stream, start=progress.step):
        if learning_rate is not None:
            rate = learning_rate(step)
            for group in optimizer.param_groups:
                group["lr"] = rate
        loss, parts = step_loss(batch, step)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step}; lower the learning rate")
        parts = {"loss": value, **parts}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(step, parts)
        progress.window.append(parts)
        progress.step = done = step + 1
        last = done == steps
        due = evaluate is not None and bool(evaluate_every)
        due = due and (evaluate_at_end if last else done % evaluate_every == 0)  # type: ignore[operator]
        if done % log_every == 0 or last or due:
            means = {
                k: round(float(np.mean([w[k] for w in progress.window])), digits)
                for k in progress.window[0]
            }
            row = {"step": done, "seconds": round(time.perf_counter() - started, 1), **means}
            progress.window = []
            if due:
                model.eval()
                row.update(evaluate(done))  # type: ignore[misc]
                model.train()
            progress.curve.append(row)
            log.info("step %d/%d %s (%.0f s, %s)", done, steps, _format_row(row),
                     row["seconds"], eta(row["seconds"], done, steps))  # fmt: skip
        if path is not None and (done % every == 0 or last or done == stop):
            progress.elapsed = time.perf_counter() - started
            _save(path, progress, trainee, settings)
    model.eval()
    return LoopResult(
        curve=progress.curve,
        seconds=round(time.perf_counter() - started, 1),
        step=progress.step,
        steps=steps,
        resumed_at=progress.resumed_at,
    )
