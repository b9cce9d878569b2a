"""Reading Google's TFRecord pretraining shards without TensorFlow, checked against the records
TensorFlow itself decoded (fixtures/*.jsonl)."""

import gzip
import json

import numpy as np
import pytest
from conftest import FIXTURES

from bertkit import BertkitError
from bertkit.cli import main as bertkit
from bertkit.data.pretraining import PretrainingDataset
from bertkit.data.tfrecord import FEATURES, TFRecordFile, encode_example, frame_record, read_examples

SPECIAL = (101, 102, 103, 0)


def tf_records(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


@pytest.mark.parametrize("shard, decoded", [
    ("pretrain_seq128.tfrecord", "pretrain_seq128.jsonl"),
    ("pretrain_seq128.tfrecord.gz", "pretrain_seq128.jsonl"),
    ("pretrain_seq512.tfrecord", "pretrain_seq512.jsonl"),
    ("pretrain_seq128_fullvocab.tfrecord", "pretrain_seq128_fullvocab.jsonl"),
])
def test_dump_equals_tensorflow_decoding(shard, decoded, capsys):
    assert bertkit(["data", "dump", str(FIXTURES / shard)]) == 0
    out = capsys.readouterr().out
    assert [json.loads(line) for line in out.splitlines()] == tf_records(decoded)
    # Same key order and number formatting too: the lines are the very bytes TensorFlow's side wrote.
    assert out == (FIXTURES / decoded).read_text()


def test_corrupt_record_is_a_clean_error_naming_file_and_index(capsys):
    path = FIXTURES / "pretrain_seq128_corrupt.tfrecord"
    assert bertkit(["data", "dump", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(path) in err[0] and "record 1 " in err[0] and "--skip-corrupt" in err[0]
    with pytest.raises(BertkitError, match=r"pretrain_seq128_corrupt.tfrecord: record 1 is corrupt"):
        PretrainingDataset(path, 128, 20, 2000, SPECIAL)


def test_skip_corrupt_yields_all_other_records_and_reports_count(capsys):
    path = FIXTURES / "pretrain_seq128_corrupt.tfrecord"
    assert bertkit(["data", "dump", str(path), "--skip-corrupt"]) == 0
    captured = capsys.readouterr()
    got = [json.loads(line) for line in captured.out.splitlines()]
    want = tf_records("pretrain_seq128.jsonl")
    assert len(got) == 22 and got == want[:1] + want[2:]
    assert "skipped 1 corrupt record" in captured.err
    dataset = PretrainingDataset(path, 128, 20, 2000, SPECIAL, skip_corrupt=True)
    assert len(dataset) == 22 and dataset.corrupt_skipped == 1
    assert dataset[1]["input_ids"].tolist() == want[2]["input_ids"][:sum(want[2]["input_mask"])]


def test_verify_reports_corrupt_tfrecord(capsys):
    assert bertkit(["data", "verify", str(FIXTURES / "pretrain_seq128_corrupt.tfrecord")]) == 2
    assert "record 1" in capsys.readouterr().err
    assert bertkit(["data", "verify", str(FIXTURES / "pretrain_seq128.tfrecord.gz")]) == 0
    assert "23 records" in capsys.readouterr().out


def test_unpacked_repeated_fields_read_the_same(tmp_path):
    """protobuf writers may store repeated fields unpacked (one field per value): still valid."""
    want = tf_records("pretrain_seq512.jsonl")
    path = tmp_path / "unpacked.tfrecord"
    path.write_bytes(b"".join(frame_record(encode_example(
        {k: np.array(r[k], dtype=np.float32 if k == "masked_lm_weights" else np.int64) for k in FEATURES},
        packed=False)) for r in want))
    assert path.stat().st_size > (FIXTURES / "pretrain_seq512.tfrecord").stat().st_size  # really unpacked
    got = [{k: ex[k].tolist() for k in FEATURES} for ex in read_examples(path)]
    assert got == want


def test_dataset_items_are_the_unpadded_records_with_their_static_masks():
    want = tf_records("pretrain_seq128.jsonl")
    dataset = PretrainingDataset(FIXTURES / "pretrain_seq128.tfrecord.gz", 128, 20, 2000, SPECIAL)
    dataset.set_epoch(3)  # static masks: the epoch changes nothing
    assert len(dataset) == len(want)
    for item, record in zip((dataset[i] for i in range(len(dataset))), want):
        n = sum(record["input_mask"])
        m = sum(1 for w in record["masked_lm_weights"] if w > 0)
        assert item["input_ids"].tolist() == record["input_ids"][:n]
        assert item["segment_ids"].tolist() == record["segment_ids"][:n]
        assert item["masked_lm_positions"].tolist() == record["masked_lm_positions"][:m]
        assert item["masked_lm_ids"].tolist() == record["masked_lm_ids"][:m]
        assert int(item["next_sentence_labels"]) == record["next_sentence_labels"][0]


def test_settings_that_do_not_fit_the_records_are_errors():
    with pytest.raises(BertkitError, match="longer than max_seq_length 64"):
        dataset = PretrainingDataset(FIXTURES / "pretrain_seq128.tfrecord", 64, 20, 2000, SPECIAL)
        [dataset[i] for i in range(len(dataset))]
    with pytest.raises(BertkitError, match="more than max_predictions_per_seq 10"):
        dataset = PretrainingDataset(FIXTURES / "pretrain_seq512.tfrecord", 512, 10, 2000, SPECIAL)
        [dataset[i] for i in range(len(dataset))]


def test_truncated_files_are_caught(tmp_path):
    data = (FIXTURES / "pretrain_seq128.tfrecord").read_bytes()
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(data[:1480 + 100])  # the third record (at 1480) loses its end
    with pytest.raises(BertkitError, match="record 2 is corrupt .*file ends"):
        TFRecordFile(cut)
    assert len(TFRecordFile(cut, skip_corrupt=True)) == 2
    gz = tmp_path / "cut.tfrecord.gz"
    gz.write_bytes(gzip.compress(data)[:-40])  # a gzip stream that stops early
    with pytest.raises(BertkitError, match="broken GZIP stream"):
        TFRecordFile(gz)
    kept = TFRecordFile(gz, skip_corrupt=True)
    assert 0 < len(kept) < 23 and kept.corrupt_skipped >= 1
