"""The alignment measurements on real tiny checkpoints: a policy equal to its reference has zero
KL and no moved tensors; a perturbed one has positive KL and says which tensors moved."""

import json

import pytest
import torch

from assets.resources import SAMPLES
from training.alignment import AlignmentConfig, main
from training.checkpoint import publish
from training.models import ModelConfig, build_causal_lm
from training.tokenizer import TokenizerConfig, corpus_texts, to_transformers, train_tokenizer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("alignment")
    tokenizer = to_transformers(
        train_tokenizer(corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig(vocab_size=400))
    )
    model = build_causal_lm(ModelConfig(preset="tiny", max_position_embeddings=128), tokenizer)
    reference = publish(model, tokenizer, root / "sft", {"stage": "sft"})
    with torch.no_grad():
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    moved = publish(model, tokenizer, root / "dpo", {"stage": "dpo"})
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": [{"role": "user", "content": f"Add {i} and 2."}]})
            + "\n"
            for i in range(6)
        )
    )
    return root, reference, moved, prompts


def test_kl_and_moved_tensors_tell_a_copy_from_a_trained_policy(checkpoints):
    root, reference, moved, prompts = checkpoints
    report = main(
        AlignmentConfig(
            policies={"sft": str(reference), "dpo": str(moved)},
            reference=str(reference),
            prompts=str(prompts),
            output=str(root / "out"),
            max_new_tokens=6,
            kl_samples=6,
            batch_size=4,
        )
    )
    same, trained = report["policies"]["sft"], report["policies"]["dpo"]
    assert same["kl_to_reference"] == pytest.approx(0.0, abs=1e-4)
    assert same["moved_tensors"] == 0
    assert trained["kl_to_reference"] > 0.01
    assert trained["moved_tensors"] >= 1  # the tied embedding / output head
    for name in ("sft", "dpo"):
        lines = (root / "out" / f"generations_{name}.jsonl").read_text().splitlines()
        assert [json.loads(x)["id"] for x in lines] == [f"p{i}" for i in range(6)]
    assert json.loads((root / "out" / "alignment.json").read_text()) == report


def test_paired_comparison_counts_gains_and_losses_and_tests_them():
    from assets.alignment import exact_match_by_kind, mcnemar_p, paired_with_reference
    from curation.synthetic import generate_tasks

    tasks = generate_tasks(20, seed=7)
    sft = [t.answer if i < 5 else "no" for i, t in enumerate(tasks)]  # right on tasks 0-4
    policy = [t.answer if 3 <= i < 15 else "no" for i, t in enumerate(tasks)]  # right on 3-14
    paired = paired_with_reference(tasks, policy, sft)
    assert (paired["gained_vs_sft"], paired["lost_vs_sft"]) == (10, 3)
    # 10 against 3: P(X <= 3 | n=13, 1/2) = 378/8192, two-sided 0.0923.
    assert paired["p_vs_sft"] == pytest.approx(2 * 378 / 8192, abs=1e-4)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(12, 0) < 0.001
    by_kind = exact_match_by_kind(tasks, {"sft": sft, "policy": policy})
    assert by_kind["kind"].to_list()[:2] == ["add", "sub"]
    assert by_kind.filter(by_kind["kind"] == "add").row(0) == ("add", "1/2", "1/2")
