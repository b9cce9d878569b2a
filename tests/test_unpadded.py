"""The unpadded path (bertkit.unpad): the same loss and gradients as the padded path for the
pretraining, classification and span heads, on batches of mixed lengths; batches with padding take
it whenever it is on, in the model and in a pretraining run."""

import dataclasses

import pytest
import torch

from bertkit import model as model_module
from bertkit import unpad
from bertkit.cli import main as cli
from bertkit.config import BertConfig
from bertkit.model import BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification
from bertkit.tasks.finetune.mrpc import classification_loss
from bertkit.tasks.pretrain import pretraining_loss
from bertkit.tasks.finetune.squad import span_loss
from conftest import FIXTURES

# Dropout at 1e-12 rounds to a cut of 0 in the CPU dropout: both dropouts and the spelled-out
# training attention run, and drop nothing, so the two paths must agree.
TINY = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, hidden_dropout_prob=1e-12, attention_probs_dropout_prob=1e-12)
LENGTHS = [24, 9, 17, 9, 24, 3, 9]  # runs of equal lengths, a full row, one of three tokens
P = 5


def batch(lengths: list[int], T: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every head's inputs for sequences of these lengths, padded on the right to T."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), T or max(lengths)
    n = torch.tensor(lengths)[:, None]  # (B, 1)
    mask = (torch.arange(T)[None] < n).long()  # (B, T)
    ids = torch.randint(5, TINY.vocab_size, (B, T), generator=g) * mask  # (B, T), [PAD] 0 beyond
    types = ((torch.arange(T)[None] >= n // 2) & mask.bool()).long()  # (B, T)
    positions = torch.stack([torch.randint(1, max(length, 2), (P,), generator=g) for length in lengths])  # (B, P)
    weights = (torch.arange(P)[None] < (n + 1) // 3).float()  # (B, P): short rows predict fewer
    positions = positions * weights.long()  # padding predictions at 0, as the collate leaves them
    return {"input_ids": ids, "segment_ids": types, "token_type_ids": types, "input_mask": mask,
            "attention_mask": mask, "masked_lm_positions": positions,
            "masked_lm_ids": torch.randint(5, TINY.vocab_size, (B, P), generator=g), "masked_lm_weights": weights,
            "next_sentence_labels": torch.randint(0, 2, (B,), generator=g),
            "labels": torch.randint(0, 2, (B,), generator=g),
            "start_positions": (n[:, 0] * 2) // 3, "end_positions": n[:, 0] - 1}


def loss_and_grads(model, loss_fn, b: dict, unpad_on: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.bert.unpad = unpad_on
    model.zero_grad(set_to_none=True)
    loss, _ = loss_fn(model, b)
    loss.backward()
    assert model.bert.path == ("unpadded" if unpad_on else "padded")
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


HEADS = {"pretraining": (BertForPreTraining, pretraining_loss),
         "classification": (lambda cfg: BertForSequenceClassification(cfg, num_labels=2), classification_loss),
         "span": (BertForQuestionAnswering, span_loss)}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("padding", ["right", "extra columns"])
def test_unpadded_loss_and_gradients_equal_padded(head, padding):
    build, loss_fn = HEADS[head]
    torch.manual_seed(0)
    model = build(TINY).train()
    b = batch(LENGTHS, T=32 if padding == "extra columns" else None)  # no row full when T is 32
    padded, grads_padded = loss_and_grads(model, loss_fn, b, False)
    unpadded, grads_unpadded = loss_and_grads(model, loss_fn, b, True)
    torch.testing.assert_close(unpadded, padded, rtol=0, atol=1e-5)
    assert set(grads_unpadded) == set(grads_padded) == {n for n, _ in model.named_parameters()}
    for name, g in grads_padded.items():
        torch.testing.assert_close(grads_unpadded[name], g, rtol=0, atol=1e-5, msg=name)
    moved = max(g.abs().max().item() for g in grads_padded.values())
    assert moved > 1e-3  # the gradients compared are not all near zero


def test_span_loss_ignores_padding():
    """Span logits at padding are the lowest float in both paths: a window's loss does not depend on
    how far its batch is padded (before, the padded positions' logits took part in the softmax)."""
    torch.manual_seed(0)
    model = BertForQuestionAnswering(TINY).eval()
    b = batch(LENGTHS)
    wider = {**b, **{k: torch.nn.functional.pad(b[k], (0, 16)) for k in ("input_ids", "token_type_ids", "attention_mask")}}
    for on in (False, True):
        model.bert.unpad = on
        with torch.no_grad():
            start, end = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])  # (B, T) each
            loss, _ = span_loss(model, b)
            loss_wide, _ = span_loss(model, wider)
        assert (start[~b["attention_mask"].bool()] == torch.finfo(start.dtype).min).all()
        torch.testing.assert_close(loss_wide, loss, rtol=0, atol=1e-6)


def test_left_padding_and_general_masks():
    """pack() takes any pattern of real tokens: each keeps its own column's position embedding."""
    torch.manual_seed(0)
    model = BertForPreTraining(TINY).eval()
    b = batch([10, 6, 8])
    flipped = {k: b[k].flip(1) for k in ("input_ids", "segment_ids", "input_mask")}  # padding on the left
    out = {}
    for on in (False, True):
        model.bert.unpad = on
        with torch.no_grad():
            out[on] = model(flipped["input_ids"], flipped["segment_ids"], flipped["input_mask"])
    real = flipped["input_mask"].bool()
    torch.testing.assert_close(out[True][0][real], out[False][0][real], rtol=0, atol=1e-5)
    # (The pooled vector reads column 0, padding here: meaningless in both paths, so not compared.)


def test_pack_groups_equal_lengths_into_blocks():
    p = unpad.pack(batch(LENGTHS)["attention_mask"])
    assert p.groups == ((2, 24), (1, 17), (3, 9), (1, 3))  # (sequences, length), longest first
    assert p.order.tolist() == [0, 4, 2, 1, 3, 6, 5]
    assert len(p.tokens) == sum(LENGTHS)
    x = torch.arange(7 * 24).view(7, 24)  # (B, T)
    assert torch.equal(unpad.scatter(unpad.gather(x, p), p), x * batch(LENGTHS)["attention_mask"])


def attention_calls(monkeypatch) -> list[tuple]:
    """Record (mask given, key length) of every attention the model computes."""
    calls = []
    real = model_module.attention

    def spy(q, k, v, mask, p):
        calls.append((mask is not None, k.shape[-2]))
        return real(q, k, v, mask, p)

    monkeypatch.setattr(model_module, "attention", spy)
    return calls


def test_batch_with_padding_takes_the_unpadded_path(monkeypatch):
    """Fails if a padded batch reaches attention at its padded length while unpadding is on."""
    calls = attention_calls(monkeypatch)
    torch.manual_seed(0)
    model = BertForPreTraining(TINY).train()
    b = batch(LENGTHS)
    pretraining_loss(model, b)
    assert model.bert.path == "unpadded"
    assert calls and not any(masked for masked, _ in calls)  # no mask: every key real
    assert sorted({t for _, t in calls}) == sorted(set(LENGTHS))  # each sequence at its own length
    calls.clear()
    model.bert.unpad = False
    pretraining_loss(model, b)
    assert model.bert.path == "padded" and all(masked and t == 24 for masked, t in calls)
    calls.clear()
    full = batch([24, 24])
    model.bert.unpad = True
    pretraining_loss(model, {**full, "input_mask": None})  # what pretraining passes without padding
    assert model.bert.path == "dense" and all(not masked and t == 24 for masked, t in calls)
    model(full["input_ids"], full["segment_ids"], full["input_mask"])  # an all-ones mask: no gather either
    assert model.bert.path == "dense"


def test_pretraining_run_takes_the_unpadded_path(tmp_path, monkeypatch):
    """`bertkit pretrain` on real shards with padding: unpadded by default, padded with --nounpad."""
    assert cli(["data", "create", str(FIXTURES / "sample_text.txt"), "-o", str(tmp_path / "data"),
                "--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "1",
                "--vocab_file", str(FIXTURES / "vocab_full.txt")]) == 0
    config = dataclasses.replace(TINY, vocab_size=30522, max_position_embeddings=64)
    config.to_json(tmp_path / "bert_config.json")
    calls = attention_calls(monkeypatch)
    for flags, masked in (([], False), (["--nounpad"], True)):
        calls.clear()
        assert cli(["pretrain", f"--input_files_dir={tmp_path / 'data'}", f"--output_dir={tmp_path / 'out'}",
                    f"--bert_config_file={tmp_path / 'bert_config.json'}", "--train_batch_size=8",
                    "--max_seq_length=64", "--max_predictions_per_seq=10", "--num_train_steps=3",
                    "--num_warmup_steps=1", "--overwrite", "--noresume", *flags]) == 0
        assert calls
        assert any(t < 64 for _, t in calls) != masked  # sequences at their own lengths, or not
        assert any(m for m, _ in calls) == masked


@pytest.mark.parametrize("flags, on", [([], True), (["--nounpad"], False), (["--unpad=false"], False)])
def test_finetune_flag_reaches_the_model(flags, on):
    """The run flag is shared: fine-tuning's model builder sets the encoder's switch from it."""
    from types import SimpleNamespace

    from bertkit.tasks.finetune import runner as ft
    from bertkit.tasks.finetune.mrpc import parser

    args = parser().parse_args(["--output_dir=unused", "--data_dir=unused", "--bert_config_file=tiny", *flags])
    assert args.unpad is on
    settings = ft.FinetuneSettings.from_args(args, "MRPC")
    model = ft.build(BertForSequenceClassification(TINY), SimpleNamespace(state=None, settings=settings))
    assert model.bert.unpad is on
