"""Record the decoder blocks' outputs of one set of passes and replay a prefix of them.

Two evaluations that differ only from decoder block ``j`` on (in the set search: a set and
its parent with one layer's adapter switched) compute blocks ``0..j-1`` identically. So the
parent's passes record every block's output, batch by batch, and the child's passes skip
blocks ``0..j-1``: each returns block ``j-1``'s recorded output for the batch, and block
``j`` onward computes as if they had run. The result is the same tensors, bit for bit, for
a fraction of the work. Architecture-agnostic: a block's output is replayed as the very
object it returned (a tensor, or a tuple in older transformers), so the model's own loop,
masks and rotary embeddings are untouched.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from floe.models.arch import decoder_layers

__all__ = ["BlockOutputs", "blocks_recorded", "blocks_replayed", "outputs_bytes"]

# Per block, per forward call (one batch each), in order.
BlockOutputs = list[list[object]]


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


def outputs_bytes(outputs: BlockOutputs) -> int:
    """Memory held by recorded outputs (their tensors)."""
    def size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        return sum(size(v) for v in value) if isinstance(value, tuple) else 0
    return sum(size(v) for block in outputs for v in block)


@contextlib.contextmanager
def blocks_recorded(model) -> Iterator[BlockOutputs]:
    """For the block: every decoder block's output of every forward call, recorded."""
    blocks = decoder_layers(model)
    outputs: BlockOutputs = [[] for _ in blocks]
    handles = [block.register_forward_hook(lambda _m, _args, out, k=k: outputs[k].append(_detached(out)))
               for k, block in enumerate(blocks)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def blocks_replayed(model, start: int, outputs: BlockOutputs) -> Iterator[None]:
    """For the block: decoder blocks ``0..start-1`` compute nothing; each forward call (a
    batch, counted at block 0) gets block ``start-1``'s recorded output for that batch, so
    blocks ``start`` on see what they would have. ``start`` 0: nothing is replayed. The
    forward calls must be the recorded ones, in the same order (the same batches)."""
    blocks = decoder_layers(model)
    if start <= 0:
        yield
        return
    if start > len(blocks) or len(outputs) != len(blocks):
        raise ValueError(f"cannot replay {start} of {len(blocks)} blocks from {len(outputs)} recorded")
    recorded = outputs[start - 1]
    batch = [-1]

    def replay(*_args, _first: bool = False, **_kwargs):
        if _first:
            batch[0] += 1
            if batch[0] >= len(recorded):
                raise RuntimeError(f"more forward calls than the {len(recorded)} recorded")
        return recorded[batch[0]]

    # The instance attribute shadows the class's forward (accelerate's device hooks set one
    # too: it is put back as it was).
    saved = [block.__dict__.get("forward") for block in blocks[:start]]
    for k, block in enumerate(blocks[:start]):
        block.forward = (lambda *a, **kw: replay(*a, _first=True, **kw)) if k == 0 else replay
    try:
        yield
    finally:
        for block, forward in zip(blocks[:start], saved):
            if forward is None:
                del block.forward
            else:
                block.forward = forward
