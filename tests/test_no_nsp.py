"""Masked LM without next-sentence pairs: `bertkit data create --no_nsp` blocks, their round trip
through the shards, and `bertkit pretrain` on them (no NSP loss, the NSP head and pooler untouched)."""

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertkit import BertkitError
from bertkit.cli import main as cli
from bertkit.data.instances import create_blocks
from bertkit.data.pretraining import PretrainingDataset
from bertkit.data.shards import read_manifest
from bertkit.data.text import documents
from bertkit.optim import make_optimizer
from bertkit.tokenizer import WordPiece, load_vocab
from conftest import FIXTURES

SEP = 102
VOCAB = FIXTURES / "vocab_full.txt"


def test_blocks_fill_with_whole_sentences_and_cut_only_what_cannot_fit():
    # one document, room for 6 tokens: 3+2 fit, 4 starts a new block, 8 is cut into 6 + 2
    doc = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17]]
    blocks = create_blocks([doc], random.Random(0), max_seq_length=8, sep_id=SEP)
    assert sorted(b for b, _, _ in blocks) == [[1, 2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13, 14, 15], [16, 17]]
    assert all(b is None and not is_random for _, b, is_random in blocks)
    # two documents share a block, a [SEP] between them, in either order
    blocks = create_blocks([[[1, 2]], [[3, 4]]], random.Random(1), max_seq_length=8, sep_id=SEP)
    assert [b for b, _, _ in blocks] in ([[1, 2, SEP, 3, 4]], [[3, 4, SEP, 1, 2]])
    # a document that does not fit after the separator starts a new block, with no [SEP] at either end
    blocks = create_blocks([[[1, 2, 3]], [[4, 5, 6]]], random.Random(2), max_seq_length=8, sep_id=SEP)
    assert sorted(b for b, _, _ in blocks) == [[1, 2, 3], [4, 5, 6]]
    # dupe passes: each document's tokens dupe_factor times over
    docs = [[[i * 10 + j] * (1 + (i + j) % 4) for j in range(5)] for i in range(6)]
    blocks = create_blocks(docs, random.Random(3), max_seq_length=12, sep_id=SEP, dupe_factor=3)
    tokens = Counter(t for b, _, _ in blocks for t in b if t != SEP)
    assert tokens == Counter({t: 3 * n for t, n in Counter(t for d in docs for s in d for t in s).items()})
    assert all(len(b) <= 10 for b, _, _ in blocks)


@pytest.fixture(scope="module")
def no_nsp_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("nonsp") / "data"
    assert cli(["data", "create", str(FIXTURES / "sample_text.txt"), "-o", str(out), "--no_nsp",
                "--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "2",
                "--vocab_file", str(VOCAB)]) == 0
    return out


def test_no_nsp_data_round_trips(no_nsp_data):
    """The shards give back one-segment blocks ([CLS] ... [SEP], segment ids 0, label 0) holding
    every token of the text twice (dupe factor 2)."""
    manifest = read_manifest(no_nsp_data)
    assert manifest["settings"]["next_sentence_pairs"] is False
    vocab = load_vocab(VOCAB)
    data = PretrainingDataset(no_nsp_data, 64, 10, len(vocab), (vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"], 0))
    assert data.next_sentence_pairs is False and len(data) == manifest["instances"]
    seen, lengths = Counter(), []
    for i in range(len(data)):
        item = data[i]
        ids = item["input_ids"].copy()
        ids[item["masked_lm_positions"]] = item["masked_lm_ids"]
        assert ids[0] == vocab["[CLS]"] and ids[-1] == vocab["[SEP]"] and len(ids) <= 64
        assert not item["segment_ids"].any() and int(item["next_sentence_labels"]) == 0
        seen.update(t for t in ids[1:-1].tolist() if t != vocab["[SEP]"])
        lengths.append(len(ids))
    tokenizer = WordPiece(VOCAB)
    text = (FIXTURES / "sample_text.txt").read_text(encoding="utf-8")
    sentences = [s for d in documents(text, "sentences", None) for s in d]
    encoded = tokenizer.encode_batch(sentences)
    expected = Counter(t for ids in encoded for t in ids)
    assert seen == Counter({t: 2 * n for t, n in expected.items()})
    # blocks hold several sentences (these average 33 tokens), not one each as sentence pairs' A would
    assert np.mean(lengths) > 1.3 * (np.mean([len(ids) for ids in encoded]) + 2)

    nsp_data = no_nsp_data.parent / "pairs"
    assert cli(["data", "create", str(FIXTURES / "sample_text.txt"), "-o", str(nsp_data), "--max_seq_length", "64",
                "--max_predictions_per_seq", "10", "--dupe_factor", "1", "--vocab_file", str(VOCAB)]) == 0
    assert read_manifest(nsp_data)["settings"]["next_sentence_pairs"] is True
    with pytest.raises(BertkitError, match="mixes data with next-sentence pairs and data without"):
        PretrainingDataset([nsp_data, no_nsp_data], 64, 10, len(vocab), (101, 102, 103, 0))


def test_pretraining_without_nsp_leaves_the_nsp_head_untouched(no_nsp_data, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "bert_config.json"
    config.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}))
    argv = ["pretrain", "--input_files_dir", str(no_nsp_data), "--bert_config_file", str(config), "--output_dir",
            str(out), "--train_batch_size", "4", "--max_seq_length", "64", "--max_predictions_per_seq", "10",
            "--num_train_steps", "4", "--num_warmup_steps", "0", "--learning_rate", "1e-2", "--log_every", "1",
            "--save_checkpoints_steps", "2", "--keep_checkpoints", "0", "--peak_tflops", "0.1",
            "--do_eval", "--eval_files_dir", str(no_nsp_data), "--max_eval_steps", "2"]
    assert cli(argv) == 0
    first, last = (load_file(out / f"ckpt-0000000{n}" / "model.safetensors") for n in (2, 4))
    # the starting weights: the same seed builds the same model (pretrain seeds before it builds)
    from bertkit.config import BertConfig
    from bertkit.model import BertForPreTraining
    torch.manual_seed(12345)
    init = BertForPreTraining(BertConfig(**json.loads(config.read_text()))).state_dict()
    for name in ("nsp.weight", "nsp.bias", "bert.pooler.weight", "bert.pooler.bias"):
        assert torch.equal(last[name], init[name]) and torch.equal(first[name], init[name]), name
    assert not torch.equal(last["bert.layers.0.query.weight"], init["bert.layers.0.query.weight"])
    assert not torch.equal(last["mlm.transform.weight"], first["mlm.transform.weight"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert train and all("nsp_loss" not in r and r["loss"] == r["mlm_loss"] for r in train)
    result = json.loads((out / "results.json").read_text())
    assert "eval_mlm_accuracy" in result and "eval_nsp_accuracy" not in result


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_optimizers_leave_parameters_without_gradients_alone(name):
    """Weight decay included: a parameter that got no gradient in a step does not move."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = make_optimizer(name, model, lr=0.1, weight_decay=0.5)
    idle = [p.detach().clone() for p in model[1].parameters()]
    busy = model[0].weight.detach().clone()
    for _ in range(3):
        model[0](torch.randn(8, 4)).square().sum().backward()  # model[1] takes no part
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(torch.equal(p, q) for p, q in zip(model[1].parameters(), idle))
    assert not torch.equal(model[0].weight, busy)
