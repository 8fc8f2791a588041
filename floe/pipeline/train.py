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
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from floe.pipeline.data import collate
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

__all__ = ["CHECKPOINT", "Resumed", "TrainConfig", "TrainSummary", "epoch_loader", "load_checkpoint",
           "save_checkpoint", "total_steps", "train", "validation_loss"]

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
    rng: dict


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
    return DataLoader([rows[i] for i in order.tolist()], batch_size=config.batch_size,
                      shuffle=False, collate_fn=lambda b: collate(b, pad_id))


def train(model, rows: list[dict], config: TrainConfig, pad_id: int, run: Run | None = None,
          show_progress: bool = True, stage: str = "train") -> TrainSummary:
    """Fine-tune the trainable parameters of ``model`` on tokenised ``rows``.

    Resumes from ``run/checkpoint`` when present. Returns a summary (steps, losses, time).
    """
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
    resumed = load_checkpoint(ckpt, model, optimizer, scheduler) if ckpt else {"step": 0, "losses": [], "rng": {}}
    start = resumed["step"]
    # The scheduler stays unprepared: accelerate would step a prepared one once per process,
    # decaying the learning rate num_processes times too fast under DDP.
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    main = accelerator.is_main_process
    bar = tqdm(total=steps, initial=start, desc=stage, disable=not (show_progress and main),
               dynamic_ncols=True)
    if run is not None and main:
        run.log(event="start", stage=stage, total_steps=steps, resumed_from=start)
    step, losses, tokens, t0 = start, list(resumed["losses"])[:start], 0, time.time()
    micro_per_epoch = math.ceil(len(rows) / (config.batch_size * accelerator.num_processes))
    done_micro = start * config.grad_accum
    for epoch in range(done_micro // micro_per_epoch, config.epochs):
        # The order of an epoch depends only on (seed, epoch), so a resumed run sees the
        # same batches as an uninterrupted one once it skips what it has already seen.
        loader = accelerator.prepare(epoch_loader(rows, config, epoch, pad_id))
        skip = done_micro - epoch * micro_per_epoch if epoch == done_micro // micro_per_epoch else 0
        epoch_batches = accelerator.skip_first_batches(loader, skip) if skip > 0 else loader
        if step >= steps:  # killed after its last step: nothing left to train
            break
        if skip == 0:  # the uninterrupted run draws this epoch's loader seed from these states
            _restore_rng_states(resumed.pop("rng", {}))
        batches_iter = iter(epoch_batches)
        first = next(batches_iter, None)  # the loader draws its seed from the global generator
        # Resumed mid-epoch, the uninterrupted run drew that seed before its checkpoint:
        # restoring after the draw gives every later dropout mask exactly as it was.
        _restore_rng_states(resumed.pop("rng", {}))
        running = 0.0
        for batch in itertools.chain([first] if first is not None else [], batches_iter):
            with accelerator.accumulate(model):
                out = model(**batch)
                accelerator.backward(out.loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running += out.loss.detach().float().item() / config.grad_accum
            tokens += int(batch["attention_mask"].sum()) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            loss = accelerator.reduce(torch.tensor(running, device=accelerator.device), "mean").item()
            running = 0.0
            losses.append(loss)
            elapsed = time.time() - t0
            rate = (step - start) / max(elapsed, 1e-9)
            record = dict(event="step", stage=stage, step=step, total_steps=steps, epoch=epoch,
                          loss=loss, lr=scheduler.get_last_lr()[0], tokens_per_s=tokens / max(elapsed, 1e-9),
                          elapsed=elapsed, eta=(steps - step) / max(rate, 1e-9))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if run is not None and main:
                run.log(**record)
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step < steps:
                    save_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, step, losses)
            if step >= steps:
                break
        if step >= steps:
            break
    bar.close()
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    model.eval()
    if run is not None and main:
        save_checkpoint(ckpt, model, optimizer, scheduler, step, losses)
    accelerator.free_memory()
    return {"steps": step, "total_steps": steps, "losses": losses, "resumed_from": start,
            "seconds": time.time() - t0, "world_size": accelerator.num_processes}


class TrainSummary(TypedDict):
    """What ``train`` returns; warmup.json and train.json extend it."""

    steps: int
    total_steps: int
    losses: list[float]       # training loss per step
    resumed_from: int         # the step a resumed run started at (0: from scratch)
    seconds: float
    world_size: int


@torch.no_grad()
def validation_loss(model, rows: list[dict], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean LM loss over the response tokens of ``rows``."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            total += model(**batch).loss.float().item() * n
        count += n
    return total / max(count, 1)
