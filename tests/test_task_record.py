"""The task record (task.json) of a fine-tuned model folder: written with the checkpoint and listed
in bertkit.json, read back as it was written, refused when damaged, absent from old folders (which
still load), carried by `bertkit convert`, and read by transformers from the Hugging Face export."""

import json

import pytest
import torch

from bertkit import BertkitError
from bertkit.checkpoint import TASK, load_model_folder, load_task, save_model, save_training
from bertkit.cli import main as cli_main
from bertkit.io import file_digest
from bertkit.model import BertForSequenceClassification
from bertkit.task_record import TaskRecord
from synthetic import CONFIG

RTE = TaskRecord("rte", "sequence_classification", labels=("entailment", "not_entailment"), max_seq_length=64,
                 text_column="sentence1", text_pair_column="sentence2", label_column="label")


def small_vocab(path, n):
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(n - 5)]) + "\n")
    return path


@pytest.fixture
def vocab(tmp_path):
    return small_vocab(tmp_path / "vocab.txt", CONFIG.vocab_size)


def test_round_trip_through_a_training_checkpoint(tmp_path, vocab):
    model = BertForSequenceClassification(CONFIG, num_labels=2)
    folder = save_training(tmp_path / "out", 3, CONFIG, model.state_dict(), vocab, True, {"state": {}, "param_groups": []},
                           {}, task=RTE)
    meta = json.loads((folder / "bertkit.json").read_text())
    assert meta["sha256"][TASK] == file_digest(folder / TASK)  # checksummed like the other files
    assert load_task(folder) == RTE
    assert json.loads((folder / TASK).read_text())["labels"] == ["entailment", "not_entailment"]
    load_model_folder(folder)  # the folder still verifies whole


def test_folder_without_a_record_loads_and_has_none(tmp_path, vocab):
    model = BertForSequenceClassification(CONFIG, num_labels=2)
    folder = save_model(tmp_path / "old", CONFIG, model.state_dict(), vocab)
    assert load_task(folder) is None
    load_model_folder(folder)


def test_damaged_or_foreign_records_are_refused(tmp_path, vocab):
    model = BertForSequenceClassification(CONFIG, num_labels=2)
    folder = save_model(tmp_path / "m", CONFIG, model.state_dict(), vocab, task=RTE)
    text = (folder / TASK).read_text()
    (folder / TASK).write_text(text.replace("not_entailment", "contradiction"))
    with pytest.raises(BertkitError, match=r"task.json: sha256 does not match"):
        load_task(folder)
    with pytest.raises(BertkitError, match=r"task.json: sha256 does not match"):
        load_model_folder(folder)
    plain = save_model(tmp_path / "plain", CONFIG, model.state_dict(), vocab)
    (plain / TASK).write_text(text)
    with pytest.raises(BertkitError, match=r"task.json: not listed in bertkit.json"):
        load_task(plain)


@pytest.mark.parametrize("change, match", [
    ({"colour": "red"}, "unknown key"),
    ({"head": "span"}, "head must be one of"),
    ({"labels": None}, "regression head has labels null"),
    ({"problem": "regression"}, "regression head has labels null"),
    ({"labels": ["a", "a"]}, "labels repeat"),
    ({"max_seq_length": 0}, "max_seq_length must be"),
    ({"version": 7}, "version 7"),
])
def test_bad_records_name_the_file(change, match):
    with pytest.raises(BertkitError, match=match) as e:
        TaskRecord.from_dict({**RTE.to_dict(), **change}, "m/task.json")
    assert str(e.value).startswith("m/task.json: ")


def test_regression_record_has_one_output():
    stsb = TaskRecord("stsb", "sequence_classification", problem="regression", text_column="sentence1",
                      text_pair_column="sentence2")
    assert stsb.num_outputs == 1 and RTE.num_outputs == 2
    assert TaskRecord.from_json(stsb.to_json(), "x") == stsb


def test_convert_carries_the_record_and_hf_reads_its_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers

    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG, num_labels=2)
    vocab = small_vocab(tmp_path / "vocab.txt", CONFIG.vocab_size)
    folder = save_model(tmp_path / "m", CONFIG, model.state_dict(), vocab, task=RTE)
    assert cli_main(["convert", "-i", str(folder), "-o", str(tmp_path / "copy")]) == 0
    assert load_task(tmp_path / "copy") == RTE
    assert cli_main(["convert", "-i", str(folder), "-o", str(tmp_path / "hf"), "--format", "hf"]) == 0
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert hf.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert hf.config.label2id == {"entailment": 0, "not_entailment": 1}
    assert hf.config.problem_type == "single_label_classification"
