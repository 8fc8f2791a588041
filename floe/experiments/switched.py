"""A set of layers' validation loss read from adapters on every layer, by switching.

``only_layers_on`` leaves only a set's adapters acting. ``SwitchedLoss`` reads the loss
with them: one validation pass, or less. A set search asks sets by their parent (the set
one layer smaller or larger); the two differ only at one layer j, so decoder blocks
``0..j-1`` compute the same thing for both, and ``SwitchedLoss`` replays those blocks from
the parent's recorded pass (floe.models.replay) instead of computing them: the same loss,
bit for bit, for a share of the work that grows with j (a set search: about half the
blocks; the embeddings and the head still run every pass).
"""
from __future__ import annotations

import contextlib
from collections.abc import Hashable

import torch

from floe.adapters.hydralora import HydraLoraLinear
from floe.models import arch
from floe.models.replay import BlockOutputs, blocks_recorded, blocks_replayed, outputs_bytes
from floe.pipeline.train import validation_loss

__all__ = ["REPLAY_BYTES", "SwitchedLoss", "first_difference", "only_layers_on"]

# A parent's recorded block outputs are kept (per seed) only below this size: every block's
# hidden states for the whole validation sample (SmolLM2, 64 x 128 tokens: about 0.6 GB).
REPLAY_BYTES = 2 * 2**30


@contextlib.contextmanager
def only_layers_on(model, layers: set[int]):
    """Leave-one-in: only the adapters of ``layers`` act inside the block."""
    blocks = arch.decoder_layers(model)
    switched = []
    for k, block in enumerate(blocks):
        for m in block.modules():
            if isinstance(m, HydraLoraLinear):
                switched.append((m, m.enabled))
                m.enabled = k in layers
    try:
        yield model
    finally:
        for m, state in switched:
            m.enabled = state


def first_difference(layers: frozenset[int], parent: frozenset[int] | None) -> int:
    """The first decoder block whose adapter differs between the two sets (0: none shared,
    or no parent)."""
    if parent is None:
        return 0
    differing = layers ^ parent
    return min(differing) if differing else 0


class SwitchedLoss:
    """``loss(layers, parent=None, key=0)``: the validation loss of ``val`` with only the
    adapters of ``layers`` on, under the weights the caller loaded for ``key`` (a seed).
    With a parent, the blocks below the first differing layer are replayed from the
    parent's recorded pass under the same key (recorded on first use: one extra pass per
    parent; one parent kept per key, since the searches ask one parent's children in a
    row). A record over ``max_bytes`` turns replay off for good. ``blocks_run`` and
    ``blocks_replayed`` count the decoder blocks computed and skipped (each over the whole
    validation sample)."""

    def __init__(self, model, val: list[dict], pad_id: int, max_bytes: int = REPLAY_BYTES):
        self.model, self.val, self.pad_id, self.max_bytes = model, val, pad_id, max_bytes
        self.replay = max_bytes > 0
        self._records: dict[Hashable, tuple[frozenset[int], BlockOutputs]] = {}
        self._n_blocks = len(arch.decoder_layers(model))
        self.recordings = self.blocks_run = self.blocks_replayed = 0

    def __call__(self, layers: frozenset[int], parent: frozenset[int] | None = None, key: Hashable = 0) -> float:
        start = first_difference(layers, parent) if self.replay else 0
        outputs = self._recorded(parent, key) if parent is not None and start > 0 else None
        if outputs is None:  # no parent, nothing shared, or replay turned off by the record's size
            start = 0
        self.blocks_run += self._n_blocks - start
        self.blocks_replayed += start
        with only_layers_on(self.model, set(layers)), torch.no_grad():
            if outputs is None:
                return validation_loss(self.model, self.val, self.pad_id)
            with blocks_replayed(self.model, start, outputs):
                return validation_loss(self.model, self.val, self.pad_id)

    def _recorded(self, parent: frozenset[int], key: Hashable) -> BlockOutputs | None:
        found = self._records.get(key)
        if found is not None and found[0] == parent:
            return found[1]
        self._records.pop(key, None)  # the old parent's memory goes before the new one's comes
        with only_layers_on(self.model, set(parent)), torch.no_grad(), blocks_recorded(self.model) as outputs:
            validation_loss(self.model, self.val, self.pad_id)
        self.recordings += 1
        self.blocks_run += self._n_blocks
        if outputs_bytes(outputs) > self.max_bytes:
            self.replay = False
            self._records.clear()
            return None
        self._records[key] = (parent, outputs)
        return outputs
