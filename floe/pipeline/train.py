"""The training loop shared by warm-up and sparse fine-tuning.

AdamW with linear warm-up/decay, gradient accumulation, bf16 autocast on CUDA, seeded
data order, a JSONL progress log in the run folder, checkpoints and resume after a kill.
``accelerate`` does device placement, mixed precision and DDP, so the same code runs
unchanged under ``accelerate launch`` on several GPUs (or CPU processes).
"""
from __future__ import annotations

import io
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from typing_extensions import NotRequired

from floe.models.head import token_losses
from floe.pipeline.data import collate
from floe.store.artifacts import TrainSummary
from floe.store.config import option
from floe.store.runs import (
    CorruptRunError,
    Run,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    read_json,
)

__all__ = ["CHECKPOINT", "Resumed", "TrainConfig", "epoch_loader", "load_checkpoint", "save_checkpoint",
           "total_steps", "train", "validation_loss"]

CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    """Optimisation settings (defaults: the paper's Table 6, sized for a laptop)."""

    lr: float = option(2e-4, "peak learning rate of AdamW")
    epochs: int = option(1, "passes over the training sample")
    batch_size: int = option(8, "sequences per optimizer micro-batch (per process)")
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step")
    warmup_ratio: float = option(0.03, "share of steps with a linear learning-rate warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_steps: int = option(0, "stop after this many optimizer steps (0: run all epochs)")
    checkpoint_every: int = option(50, "save a resumable checkpoint every N steps (0: only at the end)")
    seed: int = option(42, "seed of data order, dropout and adapter initialisation")

    def __post_init__(self):
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("lr must be > 0; batch_size, grad_accum and epochs must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps < 0 or self.checkpoint_every < 0 or self.weight_decay < 0:
            raise ValueError("max_steps and checkpoint_every must be >= 0 (0: no limit, only at the "
                             f"end) and weight_decay >= 0, got {self.max_steps}, "
                             f"{self.checkpoint_every} and {self.weight_decay}")
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")


def total_steps(n_rows: int, config: TrainConfig, world_size: int = 1) -> int:
    per_epoch = math.ceil(math.ceil(n_rows / (config.batch_size * world_size)) / config.grad_accum)
    steps = per_epoch * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model, optimizer, scheduler, step: int,
                    losses: list[float] | None = None) -> None:
    """Trainable tensors and RNG states (safetensors) + optimizer/scheduler state in files
    named by step, then the marker step.json naming them (with the losses so far, so a
    resumed run reports every step), then the previous step's files are removed. A kill at
    any point leaves the marker naming one complete checkpoint."""
    files = {"trainable": f"trainable-{step}.safetensors", "optimizer": f"optimizer-{step}.pt",
             "rng": f"rng-{step}.safetensors"}
    atomic_save_tensors(folder / files["trainable"], _trainable(model))
    state = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, state)
    atomic_write_bytes(folder / files["optimizer"], state.getvalue())
    atomic_save_tensors(folder / files["rng"], _rng_states())
    atomic_write_json(folder / "step.json", {"step": step, "losses": list(losses or []), "files": files})
    for old in folder.iterdir():
        if old.name != "step.json" and old.name not in files.values():
            old.unlink(missing_ok=True)


def _rng_states() -> dict[str, torch.Tensor]:
    """The global generators dropout draws from: restoring them makes a resumed run draw
    the same masks as an uninterrupted one."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _restore_rng_states(states: dict[str, torch.Tensor]) -> None:
    if not states:  # checkpoints of earlier versions
        return
    states = dict(states)
    torch.set_rng_state(states.pop("cpu"))
    cuda = [states[f"cuda{i}"] for i in range(len(states))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class Resumed(TypedDict):
    """What ``load_checkpoint`` restored: the step, the losses up to it, and the RNG states
    (restored by the caller at the point where the uninterrupted run had them)."""

    step: int
    losses: list[float]
    rng: NotRequired[dict]       # popped once restored


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> Resumed:
    """Restore parameters and optimizer from a checkpoint written by ``save_checkpoint``
    (step 0 if none). A damaged checkpoint raises CorruptRunError: ``--force`` starts over."""
    if not (folder / "step.json").exists():
        return {"step": 0, "losses": [], "rng": {}}
    marker = read_json(folder / "step.json")
    # Checkpoints of 0.2.0 have fixed names (and were not atomic as a whole).
    files = marker.get("files") or {"trainable": "trainable.safetensors", "optimizer": "optimizer.pt",
                                    "rng": "rng.safetensors"}
    tensors = load_tensors(folder / files["trainable"])
    params = _trainable(model)
    if set(tensors) != set(params):
        raise ValueError(f"checkpoint in {folder} was written for other trainable parameters; "
                         "delete the run or use --force")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    # Our own file, and weights_only refuses anything but tensors and plain containers.
    try:
        state = torch.load(folder / files["optimizer"], weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError) as e:
        raise CorruptRunError(f"{folder / files['optimizer']} is damaged ({e}); recompute with --force") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = load_tensors(folder / files["rng"]) if (folder / files["rng"]).exists() else {}
    return {"step": int(marker["step"]), "losses": list(marker.get("losses", [])), "rng": rng}


def epoch_loader(rows: list[dict], config: TrainConfig, epoch: int, pad_id: int) -> DataLoader:
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(config.seed + epoch))
    # torch types the dataset as Dataset; a list is a map-style dataset at runtime
    return DataLoader([rows[i] for i in order.tolist()], batch_size=config.batch_size,  # type: ignore[arg-type]
                      shuffle=False, collate_fn=lambda b: collate(b, pad_id))


@dataclass
class _Loop:
    """One training loop's state: set up once, then advanced one optimizer step at a time."""

    accelerator: Any
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps: int                    # optimizer steps of the whole run
    resumed: Resumed
    ckpt: Path | None
    step: int = 0
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    t0: float = field(default_factory=time.time)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def _set_up(model, rows: list[dict], config: TrainConfig, run: Run | None) -> _Loop:
    """Accelerator, optimizer and schedule, restored from ``run``'s checkpoint when present."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    device = next(model.parameters()).device
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum,
                              mixed_precision="bf16" if device.type == "cuda" else "no",
                              cpu=device.type == "cpu")
    set_seed(config.seed)
    params = list(_trainable(model).values())
    if not params:
        raise ValueError("the model has no trainable parameters (attach adapters first)")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = total_steps(len(rows), config, accelerator.num_processes)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * steps), steps)
    ckpt = run.file(CHECKPOINT) if run is not None else None
    resumed: Resumed = (load_checkpoint(ckpt, model, optimizer, scheduler) if ckpt
                        else {"step": 0, "losses": [], "rng": {}})
    # The scheduler stays unprepared: accelerate would step a prepared one once per process,
    # decaying the learning rate num_processes times too fast under DDP.
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    start = resumed["step"]
    return _Loop(accelerator, model, optimizer, scheduler, steps, resumed, ckpt, step=start,
                 losses=list(resumed["losses"])[:start])


def _resumed_batches(batches, resumed: Resumed, fresh_epoch: bool):
    """An epoch's batches, with the RNG states restored where the uninterrupted run had them."""
    if fresh_epoch:  # the uninterrupted run draws this epoch's loader seed from these states
        _restore_rng_states(resumed.pop("rng", {}))
    batches_iter = iter(batches)
    first = next(batches_iter, None)  # the loader draws its seed from the global generator
    # Resumed mid-epoch, the uninterrupted run drew that seed before its checkpoint:
    # restoring after the draw gives every later dropout mask exactly as it was.
    _restore_rng_states(resumed.pop("rng", {}))
    yield from itertools.chain([first] if first is not None else [], batches_iter)


def _micro_step(loop: _Loop, batch: dict, config: TrainConfig) -> float:
    """Forward and backward of one micro-batch (the optimizer steps once per accumulation)."""
    with loop.accelerator.accumulate(loop.model):
        losses = token_losses(loop.model, batch)
        loss = losses.mean() if losses.numel() else losses.sum()  # a batch of no label: 0, no step's worth
        loop.accelerator.backward(loss)
        loop.optimizer.step()
        if loop.accelerator.sync_gradients:
            loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
    loop.tokens += int(batch["attention_mask"].sum()) * loop.accelerator.num_processes
    return loss.detach().float().item() / config.grad_accum


def _record_step(loop: _Loop, running: float, epoch: int, stage: str, bar, run: Run | None,
                 config: TrainConfig) -> None:
    """Count one optimizer step: its loss over processes, the progress record, a checkpoint."""
    loop.step += 1
    loss = loop.accelerator.reduce(torch.tensor(running, device=loop.accelerator.device), "mean").item()
    loop.losses.append(loss)
    elapsed = time.time() - loop.t0
    rate = (loop.step - loop.resumed["step"]) / max(elapsed, 1e-9)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")
    if run is None or not loop.main:
        return
    run.log(event="step", stage=stage, step=loop.step, total_steps=loop.steps, epoch=epoch, loss=loss,
            lr=loop.scheduler.get_last_lr()[0], tokens_per_s=loop.tokens / max(elapsed, 1e-9),
            elapsed=elapsed, eta=(loop.steps - loop.step) / max(rate, 1e-9))
    assert loop.ckpt is not None, "a run has a checkpoint folder"
    if config.checkpoint_every and loop.step % config.checkpoint_every == 0 and loop.step < loop.steps:
        save_checkpoint(loop.ckpt, loop.accelerator.unwrap_model(loop.model), loop.optimizer, loop.scheduler,
                        loop.step, loop.losses)


def _wind_down(loop: _Loop, run: Run | None) -> TrainSummary:
    """Wait for every process, leave the model in eval mode, save the last checkpoint."""
    loop.accelerator.wait_for_everyone()
    model = loop.accelerator.unwrap_model(loop.model)
    model.eval()
    if run is not None and loop.main:
        assert loop.ckpt is not None, "a run has a checkpoint folder"
        save_checkpoint(loop.ckpt, model, loop.optimizer, loop.scheduler, loop.step, loop.losses)
    loop.accelerator.free_memory()
    return {"steps": loop.step, "total_steps": loop.steps, "losses": loop.losses,
            "resumed_from": loop.resumed["step"], "seconds": time.time() - loop.t0,
            "world_size": loop.accelerator.num_processes}


def train(model, rows: list[dict], config: TrainConfig, pad_id: int, run: Run | None = None,
          show_progress: bool = True, stage: str = "train") -> TrainSummary:
    """Fine-tune the trainable parameters of ``model`` on tokenised ``rows``.

    Resumes from ``run/checkpoint`` when present. Returns a summary (steps, losses, time).
    """
    loop = _set_up(model, rows, config, run)
    start = loop.step
    bar = tqdm(total=loop.steps, initial=start, desc=stage, disable=not (show_progress and loop.main),
               dynamic_ncols=True)
    if run is not None and loop.main:
        run.log(event="start", stage=stage, total_steps=loop.steps, resumed_from=start)
    micro_per_epoch = math.ceil(len(rows) / (config.batch_size * loop.accelerator.num_processes))
    done_micro = start * config.grad_accum
    first_epoch = done_micro // micro_per_epoch
    for epoch in range(first_epoch, config.epochs):
        # The order of an epoch depends only on (seed, epoch), so a resumed run sees the
        # same batches as an uninterrupted one once it skips what it has already seen.
        loader = loop.accelerator.prepare(epoch_loader(rows, config, epoch, pad_id))
        skip = done_micro - epoch * micro_per_epoch if epoch == first_epoch else 0
        batches = loop.accelerator.skip_first_batches(loader, skip) if skip > 0 else loader
        if loop.step >= loop.steps:  # killed after its last step: nothing left to train
            break
        running = 0.0
        for batch in _resumed_batches(batches, loop.resumed, fresh_epoch=skip == 0):
            running += _micro_step(loop, batch, config)
            if not loop.accelerator.sync_gradients:
                continue
            _record_step(loop, running, epoch, stage, bar, run, config)
            running = 0.0
            if loop.step >= loop.steps:
                break
        if loop.step >= loop.steps:
            break
    bar.close()
    return _wind_down(loop, run)


@torch.no_grad()
def validation_loss(model, rows: list[dict], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean LM loss over the response tokens of ``rows``."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size], pad_id).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses = token_losses(model, batch)
        total += losses.sum().item()
        count += losses.numel()
    return total / max(count, 1)
