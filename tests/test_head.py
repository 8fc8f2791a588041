"""The LM loss with the head run only at the positions that predict a label (floe.models.head):
the same loss as the model's own, on every supported family, for a fraction of the head."""
from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES, tiny_model

from floe.models.head import IGNORE_INDEX, head_only_at, predicting_positions, token_losses
from floe.pipeline.data import collate


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths, the prompt masked, a few label tokens each."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length, prompt in ((12, 9), (7, 4), (10, 8)):
        ids = torch.randint(3, 96, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return collate(rows, pad_id=0)


def test_predicting_positions_are_those_before_a_label():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX],
                           [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    assert predicting_positions(labels).tolist() == [[False, True, True, False, False],
                                                    [True, False, False, False, False]]


@pytest.mark.parametrize("family", FAMILIES)
def test_token_losses_match_the_models_own_loss(family):
    model = tiny_model(family).double()  # fp64: agreement to rounding, not to bf16 noise
    batch = _batch()
    with torch.no_grad():
        out = model(**batch)
        losses = token_losses(model, batch)
    # The full head's logits in fp64 (the model's own loss casts them to fp32 first).
    full = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX)
    assert losses.dtype == torch.float64
    assert losses.numel() == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == 8
    assert losses.mean().item() == pytest.approx(full.item(), rel=1e-12)
    assert losses.mean().item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_the_head_sees_only_the_predicting_positions_and_its_hook_goes():
    model = tiny_model("gemma3_text", final_logit_softcapping=5.0)  # post-head soft-capping applies
    batch = _batch(1)
    keep = predicting_positions(batch["labels"])
    seen = []
    head = model.get_output_embeddings()
    probe = head.register_forward_hook(lambda _m, args, out: seen.append((args[0].shape, out.shape)))
    with torch.no_grad(), head_only_at(model, keep):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    probe.remove()
    assert seen == [(torch.Size([1, 8, 32]), torch.Size([1, 8, 96]))] and logits.shape == (1, 8, 96)
    assert logits.abs().max() <= 5.0
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(full[keep], logits[0])  # the hook is gone, and the rows are the same
    assert not head._forward_pre_hooks


def test_wrapped_models_and_batches_without_labels():
    model = tiny_model()
    wrapper = torch.nn.Module()
    wrapper.module = model  # as DDP and accelerate wrap a model
    batch = _batch(2)
    with head_only_at(wrapper, predicting_positions(batch["labels"])):
        assert model.get_output_embeddings()._forward_pre_hooks
    empty = {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}
    with torch.no_grad():
        assert token_losses(model, empty).numel() == 0
    with pytest.raises(ValueError, match="no output embeddings"):
        token_losses(torch.nn.Linear(2, 2), batch)
