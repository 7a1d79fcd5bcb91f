"""Packing must not change what the model learns: the summed SFT loss over a dataset is the same
whether its conversations are packed into shared rows or fed one per row, for every attention
implementation the recipes offer. Without document boundaries the losses differ, which is what
makes this test able to fail."""

from pathlib import Path

import pytest
import torch

from training.models import ModelConfig
from training.sft import SFTStageConfig, build_trainer

BATCH, MAX_LENGTH = 4, 192


@pytest.fixture
def workspace(sft_workspace: Path) -> Path:
    return sft_workspace


def trainer_for(workspace: Path, attn: str, packing: bool):
    config = SFTStageConfig(
        output_dir=str(workspace / f"run-{attn}-{packing}"),
        data=str(workspace / "data" / "sft"),
        tokenizer=str(workspace / "tokenizer"),
        model=ModelConfig(preset="tiny", max_position_embeddings=256, attn_implementation=attn),
        per_device_train_batch_size=BATCH,
        max_length=MAX_LENGTH,
        packing=packing,
        use_cpu=True,
    )
    trainer, counts = build_trainer(config)
    assert counts["truncated"] == 0  # truncation would make the two sides see different tokens
    return trainer


def token_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token loss of every labelled token."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    )
    return losses[labels.reshape(-1) != -100]


def dataset_losses(trainer, batch_size: int, drop_positions: bool = False) -> torch.Tensor:
    data, collate = trainer.train_dataset, trainer.data_collator
    parts = []
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        if drop_positions:
            batch.pop("position_ids")
        parts.append(token_losses(trainer.model, batch))
    return torch.cat(parts)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_packed_and_unpacked_losses_agree(workspace, attn):
    packed, plain = trainer_for(workspace, attn, True), trainer_for(workspace, attn, False)
    plain.model.load_state_dict(packed.model.state_dict())
    packed.model.eval(), plain.model.eval()
    assert len(packed.train_dataset) < len(plain.train_dataset)  # conversations really share rows

    batch = packed.data_collator([packed.train_dataset[i] for i in range(BATCH)])
    assert batch["input_ids"].shape == (1, BATCH * MAX_LENGTH)  # fixed shape: one compile
    assert int((batch["position_ids"] == 0).sum()) > BATCH  # several documents per row

    packed_losses, plain_losses = dataset_losses(packed, BATCH), dataset_losses(plain, 1)
    # Packing drops one label per document (a document's first token has no context) and the
    # unpacked rows never had one, so the counts match exactly.
    assert packed_losses.numel() == plain_losses.numel()
    assert float(packed_losses.sum()) == pytest.approx(float(plain_losses.sum()), rel=1e-5)

    # The same packed rows without document boundaries let tokens see earlier documents: the
    # loss of individual tokens moves by orders of magnitude more than the tolerance above.
    leaky = dataset_losses(packed, BATCH, drop_positions=True)
    assert float((leaky - packed_losses).abs().max()) > 1e-2
