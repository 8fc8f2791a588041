"""The language-model loss with the head run only where a label is.

A causal LM's head maps every position's hidden state to the vocabulary, but the loss reads
only the positions that predict a label (a response token). Prompts are masked and padding
fills the rest: on the embedded data sets (short benchmark answers) 4-6 % of a batch's
positions predict a label. The head is a large matrix (Gemma-3-270M: 262k words x 640, more
multiply-adds per token than its 18 blocks together; SmolLM2: 49k x 576), and its logits the
largest activation, so running it only there saves most of the head's work and memory in
every training step and every validation pass. Architecture-agnostic: a pre-hook on the
model's output embeddings gathers the predicting positions' hidden states, and what the
model does after the head (Gemma's soft-capping, a logit scale: element-wise) applies as
usual to the gathered logits.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE_INDEX", "head_only_at", "predicting_positions", "token_losses"]

IGNORE_INDEX = -100


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, S) bool: position t predicts token t + 1, so it counts when label t + 1 is set."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def _output_head(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DDP and accelerate wrap the model in .module
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(inner).__name__} has no output embeddings (LM head) to compute a loss with")
    return head


@contextlib.contextmanager
def head_only_at(model: nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """While inside, the LM head sees only the hidden states at ``keep`` ((B, S) bool), as one
    (1, N, hidden) sequence in row-major order: the model's logits come out (1, N, vocab)."""
    def gather(_module, args):
        return (args[0][keep].unsqueeze(0), *args[1:])

    handle = _output_head(model).register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def token_losses(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The cross-entropy of every label token of ``batch`` (1-D, row-major order; at least
    fp32), the head run only at the positions that predict one."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with head_only_at(model, predicting_positions(labels)):
        logits = model(**inputs, use_cache=False).logits[0]
    targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction="none")
