"""The dataset that training reads from bertkit shards, and the collate function."""

import json
import pickle
import shutil
from functools import partial

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from bertkit import BertkitError
from bertkit.data.bundled import corpus_path, demo_dataset, vocab_path
from bertkit.data.pretraining import PretrainingDataset, collate
from bertkit.data.shards import Shard, read_manifest
from bertkit.tokenizer import WordPiece

SPECIAL = (101, 102, 103, 0)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return demo_dataset(tmp_path_factory.mktemp("demo") / "phase1", dupe_factor=2)


def open_dataset(path, **kw):
    return PretrainingDataset(path, 128, 20, 30522, SPECIAL, **kw)


def test_items_are_masked_instances_of_the_bundled_text(dataset_dir):
    dataset = open_dataset(dataset_dir)
    manifest = read_manifest(dataset_dir)
    assert len(dataset) == manifest["instances"] > 500
    shard = Shard(dataset_dir / manifest["shards"][0]["file"])
    text_ids = set(np.concatenate(WordPiece(vocab_path()).encode_batch(
        corpus_path().read_text(encoding="utf-8").splitlines())).tolist())
    for i in range(0, len(shard), 97):
        item = dataset[i]
        ids, a_length, label = shard.instance(i)
        restored = item["input_ids"].copy()
        restored[item["masked_lm_positions"]] = item["masked_lm_ids"]
        assert restored.tolist() == ids.tolist()  # masks undone give back the stored instance
        assert item["input_ids"].dtype == np.int32 and len(ids) <= 128
        assert ids[0] == 101 and ids[a_length - 1] == 102 and ids[-1] == 102
        assert item["segment_ids"].tolist() == [0] * a_length + [1] * (len(ids) - a_length)
        assert set(ids[1:a_length - 1].tolist()) <= text_ids
        assert int(item["next_sentence_labels"]) == label in (0, 1)


def test_epochs_change_masks_and_come_back_the_same(dataset_dir):
    dataset = open_dataset(dataset_dir, seed=7)
    epoch0 = [dataset[i]["masked_lm_positions"].tolist() for i in range(50)]
    dataset.set_epoch(1)
    epoch1 = [dataset[i]["masked_lm_positions"].tolist() for i in range(50)]
    assert sum(a != b for a, b in zip(epoch0, epoch1)) >= 45
    resumed = open_dataset(dataset_dir, seed=7)
    resumed.set_epoch(1)  # a restarted run, in a new process, sees the very same masks
    assert [resumed[i]["masked_lm_positions"].tolist() for i in range(50)] == epoch1
    copy = pickle.loads(pickle.dumps(dataset))  # what a spawned DataLoader worker gets
    assert [copy[i]["masked_lm_positions"].tolist() for i in range(50)] == epoch1


def test_dataloader_workers_give_the_same_batches(dataset_dir):
    dataset = open_dataset(dataset_dir)
    batches = [collate([dataset[i] for i in range(b, b + 16)], 20) for b in range(0, 64, 16)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=2,
                                         collate_fn=partial(collate, max_predictions_per_seq=20))
    for want, got in zip(batches, loader):
        for key in want:
            assert torch.equal(want[key], got[key]), key


def test_collate_pads_and_describes_the_batch():
    samples = [
        {"input_ids": np.array([101, 5, 6, 102, 7, 102], np.int32),
         "segment_ids": np.array([0, 0, 0, 0, 1, 1], np.int8),
         "masked_lm_positions": np.array([1, 4], np.int32), "masked_lm_ids": np.array([9, 8], np.int32),
         "next_sentence_labels": np.array(1)},
        {"input_ids": np.array([101, 5, 102, 7, 8, 9, 10, 11, 12, 102], np.int32),
         "segment_ids": np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], np.int8),
         "masked_lm_positions": np.array([3], np.int32), "masked_lm_ids": np.array([4], np.int32),
         "next_sentence_labels": np.array(0)},
    ]
    batch = collate(samples, max_predictions_per_seq=4)
    assert batch["input_ids"].shape == (2, 16)  # longest 10, rounded up to a multiple of 8
    assert batch["input_ids"].dtype == torch.int64 and batch["masked_lm_weights"].dtype == torch.float32
    assert batch["input_ids"][0].tolist() == [101, 5, 6, 102, 7, 102] + [0] * 10
    assert batch["input_mask"].sum(1).tolist() == [6, 10]
    assert batch["segment_ids"][1].tolist() == [0, 0, 0] + [1] * 7 + [0] * 6
    assert batch["masked_lm_positions"].tolist() == [[1, 4, 0, 0], [3, 0, 0, 0]]
    assert batch["masked_lm_ids"].tolist() == [[9, 8, 0, 0], [4, 0, 0, 0]]
    assert batch["masked_lm_weights"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert batch["next_sentence_labels"].tolist() == [1, 0]
    assert collate(samples, 4, max_seq_length=12)["input_ids"].shape == (2, 12)  # never past the max
    assert collate(samples, 4, pad_to_multiple=1)["input_ids"].shape == (2, 10)
    with pytest.raises(BertkitError, match="more than max_predictions_per_seq 1"):
        collate(samples, 1)


def test_mixing_our_shards_and_tfrecords(dataset_dir):
    tf = FIXTURES / "pretrain_seq128_fullvocab.tfrecord"
    dataset = PretrainingDataset([dataset_dir, tf], 128, 20, 30522, SPECIAL)
    ours = open_dataset(dataset_dir)
    assert len(dataset) == len(ours) + 23
    first = json.loads((FIXTURES / "pretrain_seq128_fullvocab.jsonl").read_text().splitlines()[0])
    assert dataset[len(ours)]["input_ids"].tolist() == first["input_ids"][:sum(first["input_mask"])]
    assert dataset[-1]["input_ids"].shape[0] > 0


def test_a_shard_that_does_not_match_its_manifest_is_caught(dataset_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(dataset_dir, bad)
    shard = bad / read_manifest(bad)["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte among the token ids
    shard.write_bytes(bytes(data))
    dataset = open_dataset(bad)  # sizes match: opening is fine
    with pytest.raises(BertkitError, match="crc32c does not match the manifest"):
        dataset[0]  # ... but nothing of the shard is read before its checksum is checked
    with pytest.raises(BertkitError, match="sha256 does not match"):
        open_dataset(bad).verify(full=True)
    skipping = open_dataset([bad, dataset_dir], skip_corrupt=True)
    assert skipping.corrupt_skipped == len(open_dataset(dataset_dir)) and len(skipping) == skipping.corrupt_skipped
    assert "skipping" in capsys.readouterr().err
    shard.write_bytes(bytes(data[:-10]))  # truncated: caught on open
    with pytest.raises(BertkitError, match="truncated or replaced"):
        open_dataset(bad)


def test_settings_that_do_not_fit_the_dataset_are_errors(dataset_dir):
    with pytest.raises(BertkitError, match="longer than max_seq_length 64"):
        PretrainingDataset(dataset_dir, 64, 20, 30522, SPECIAL)
    with pytest.raises(BertkitError, match="special ids"):
        PretrainingDataset(dataset_dir, 128, 20, 30522, (1, 2, 3, 0))
    with pytest.raises(BertkitError, match="more than the model's 2000"):
        PretrainingDataset(dataset_dir, 128, 20, 2000, SPECIAL)


def test_whole_word_masking_from_the_datasets_vocab(dataset_dir):
    dataset = open_dataset(dataset_dir, whole_word_mask=True)
    starts = np.array([not t.startswith("##") for t in WordPiece(vocab_path()).convert_ids_to_tokens(range(30522))])
    checked = 0
    for i in range(200):
        item = dataset[i]
        ids = item["input_ids"].copy()
        ids[item["masked_lm_positions"]] = item["masked_lm_ids"]
        word = np.cumsum(starts[ids])
        for p in item["masked_lm_positions"]:
            same = np.flatnonzero((word == word[p]) & (ids != 101) & (ids != 102))
            assert set(same) <= set(item["masked_lm_positions"].tolist())
            checked += len(same) > 1
    assert checked > 50  # multi-piece words were masked, and always whole


def test_the_datasets_masked_lm_prob_applies_unless_training_sets_one(tmp_path):
    from bertkit.data.pipeline import PrepareConfig, prepare

    out = tmp_path / "heavy"
    prepare(PrepareConfig(inputs=[str(corpus_path())], output=str(out), vocab_file=str(vocab_path()),
                          phases=[(128, 80)], dupe_factor=1, masked_lm_prob=0.3), progress=False)
    heavy = PretrainingDataset(out, 128, 80, 30522, SPECIAL)
    light = PretrainingDataset(out, 128, 80, 30522, SPECIAL, masked_lm_prob=0.1)
    for i in range(20):
        length = len(heavy[i]["input_ids"])
        assert len(heavy[i]["masked_lm_positions"]) == max(1, int(round(length * 0.3)))
        assert len(light[i]["masked_lm_positions"]) == max(1, int(round(length * 0.1)))


def test_one_shard_of_a_dataset_reads_alone(dataset_dir, capsys):
    from bertkit.cli import main as bertkit

    entry = read_manifest(dataset_dir)["shards"][0]
    alone = open_dataset(dataset_dir / entry["file"])
    assert len(alone) == entry["instances"]
    assert bertkit(["data", "dump", str(dataset_dir / entry["file"]), "--limit", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and lines[0]["input_ids"] == alone[0]["input_ids"].tolist()
    assert lines[0]["masked_lm_weights"] == [1.0] * len(lines[0]["masked_lm_ids"])
