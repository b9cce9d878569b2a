"""Conversion between Google, Hugging Face and bertkit folders, checked against Hugging Face's own
converter and `transformers` itself, and the `bertkit convert` command's handling of bad input."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import BertkitError
from bertkit.checkpoint import load_model_folder, save_model
from bertkit.cli import main as cli_main
from bertkit.config import BertConfig
from bertkit.convert import NAME_MAP, from_hf, read_any, to_hf, write_hf
from bertkit.model import BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification
from conftest import FIXTURES, REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "bertkit", *args], capture_output=True, text=True,
                          timeout=120, env=env)


# ---- Google's checkpoint, read without TensorFlow ----------------------------------------------

def test_google_zip_equals_hugging_face_conversion(google_zip, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any `import tensorflow` now fails
    config, state, vocab, lowercase = read_any(google_zip, tmp_path)
    reference = load_file(FIXTURES / "reference_hf" / "model.safetensors")
    assert len(reference) == 46
    expected = from_hf(reference, config.num_hidden_layers, "reference_hf")
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == torch.float32, name
        assert torch.equal(state[name], tensor), f"{name} differs from Hugging Face's conversion"
    hf_cfg = json.loads((FIXTURES / "reference_hf" / "config.json").read_text())
    for key, value in config.to_dict().items():
        assert hf_cfg[key] == value, key
    assert lowercase and vocab.read_text().splitlines()[101:104] == ["[CLS]", "[SEP]", "[MASK]"]


def test_google_zip_to_hf_runs_in_transformers(google_zip, tmp_path, monkeypatch):
    """Google zip -> `bertkit convert --format hf` -> transformers gives the fixture's reference
    outputs, which transformers computed from Hugging Face's own conversion."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers

    assert cli_main(["convert", "-i", str(google_zip), "-o", str(tmp_path / "hf"), "--format", "hf"]) == 0
    model, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info
    ref = {k: torch.from_numpy(v) for k, v in np.load(FIXTURES / "reference_outputs.npz").items()}
    with torch.no_grad():
        out = model.eval()(input_ids=ref["input_ids"], token_type_ids=ref["token_type_ids"],
                           attention_mask=ref["attention_mask"])
    torch.testing.assert_close(out.prediction_logits, ref["prediction_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.seq_relationship_logits, ref["seq_relationship_logits"], rtol=0, atol=1e-5)


def unpacked_google(google_zip: Path, tmp_path: Path) -> Path:
    with zipfile.ZipFile(google_zip) as z:
        z.extractall(tmp_path)
    return tmp_path / "uncased_L-2_H-128_A-2"


def test_corrupt_tensor_data_fails_its_crc(google_zip, tmp_path):
    folder = unpacked_google(google_zip, tmp_path)
    data = folder / "bert_model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 0x01  # one bit of one float
    data.write_bytes(bytes(raw))
    with pytest.raises(BertkitError, match=r"bert_model.ckpt.index: tensor '.*' fails its checksum"):
        read_any(folder)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-1], "bad magic number"),
    (lambda b: b[:20], "too short|bad magic"),
    (lambda b: bytes([b[0] ^ 0xFF]) + b[1:], "fails its checksum|malformed"),
])
def test_damaged_checkpoint_index_is_refused(google_zip, tmp_path, damage, match):
    folder = unpacked_google(google_zip, tmp_path)
    index = folder / "bert_model.ckpt.index"
    index.write_bytes(damage(index.read_bytes()))
    with pytest.raises(BertkitError, match=match):
        read_any(folder)


def test_missing_checkpoint_data_file(google_zip, tmp_path):
    folder = unpacked_google(google_zip, tmp_path)
    (folder / "bert_model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(BertkitError, match="data-00000-of-00001: checkpoint data file is missing"):
        read_any(folder)

def test_name_map_is_one_to_one():
    for column in range(3):
        names = [row[column] for row in NAME_MAP]
        assert len(set(names)) == len(names), f"column {column} repeats a name"


def test_fixture_model_folder_roundtrip(fixture_model, google_zip, tmp_path):
    """The session's converted folder holds exactly what the zip holds, and reads back verified."""
    config, state, vocab, meta = load_model_folder(fixture_model)
    _, direct, _, _ = read_any(google_zip, tmp_path)
    assert config.vocab_size == 2000 and meta["do_lower_case"] is True
    assert all(torch.equal(state[k], v) for k, v in direct.items()) and state.keys() == direct.keys()


# ---- export to Hugging Face: transformers loads every head -------------------------------------

TINY = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=40)


def small_vocab(path: Path, size: int) -> Path:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(size - 5)]
    path.write_text("\n".join(tokens) + "\n")
    return path


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (biases and LayerNorms too), so that any swapped, dropped or
    untransposed tensor changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if name.endswith("norm.weight") else 0.0))


def padded_batch(vocab_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    lengths = [17, 9, 13]
    T = max(lengths)
    ids = torch.randint(5, vocab_size, (3, T), generator=g)  # (B, T)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    ids = ids * mask  # [PAD]=0 beyond each length
    types = ((torch.arange(T)[None] >= 5) & mask.bool()).long()  # (B, T): segment B from token 5
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@pytest.mark.parametrize("head", ["BertForPreTraining", "BertForSequenceClassification",
                                  "BertForQuestionAnswering"])
def test_hf_export_loads_into_transformers(head, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers

    build = {"BertForPreTraining": lambda: BertForPreTraining(TINY),
             "BertForSequenceClassification": lambda: BertForSequenceClassification(TINY, num_labels=3),
             "BertForQuestionAnswering": lambda: BertForQuestionAnswering(TINY)}[head]
    ours = build().eval()
    randomize(ours, seed=len(head))
    vocab = small_vocab(tmp_path / "vocab.txt", TINY.vocab_size)
    save_model(tmp_path / "bk", TINY, ours.state_dict(), vocab)
    assert cli_main(["convert", "--input", str(tmp_path / "bk"), "--output", str(tmp_path / "hf"),
                     "--format", "hf"]) == 0

    theirs, info = getattr(transformers, head).from_pretrained(tmp_path / "hf", output_loading_info=True)
    theirs.eval()
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert not info["error_msgs"], info

    batch = padded_batch(TINY.vocab_size)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        got = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        want = theirs(**batch)
    if head == "BertForPreTraining":
        mlm, nsp = got
        diff = (mlm - want.prediction_logits).abs()  # (B, T, V)
        assert diff[real].max() < 1e-5
        torch.testing.assert_close(nsp, want.seq_relationship_logits, rtol=0, atol=1e-5)
    elif head == "BertForSequenceClassification":
        assert got.shape == (3, 3)
        torch.testing.assert_close(got, want.logits, rtol=0, atol=1e-5)
    else:
        start, end = got
        assert (start - want.start_logits).abs()[real].max() < 1e-5
        assert (end - want.end_logits).abs()[real].max() < 1e-5


def test_hf_export_round_trips_through_hf_reader(tmp_path):
    """bertkit -> hf -> bertkit gives back the same tensors."""
    model = BertForPreTraining(TINY)
    randomize(model, seed=3)
    vocab = small_vocab(tmp_path / "vocab.txt", TINY.vocab_size)
    save_model(tmp_path / "bk", TINY, model.state_dict(), vocab)
    assert cli_main(["convert", "-i", str(tmp_path / "bk"), "-o", str(tmp_path / "hf"), "--format", "hf"]) == 0
    config, state, _, _ = read_any(tmp_path / "hf")
    assert config == TINY
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_folder_saved_by_transformers_5_reads_its_vocab_from_tokenizer_json(fixture_model, tmp_path):
    """transformers 5 saves a fast tokenizer as tokenizer.json alone (no vocab.txt): bertkit takes
    the WordPiece vocabulary and the lower-casing from it, and tokenizes as transformers does."""
    import transformers

    from bertkit.tokenizer import WordPiece

    model = transformers.BertModel(transformers.BertConfig(**{
        **json.loads((fixture_model / "bert_config.json").read_text())}))
    tok = transformers.BertTokenizerFast.from_pretrained(str(fixture_model), do_lower_case=True)
    model.save_pretrained(tmp_path / "hf5")
    tok.save_pretrained(tmp_path / "hf5")
    assert not (tmp_path / "hf5" / "vocab.txt").exists()  # what makes this folder the case tested
    config, state, vocab, lowercase = read_any(tmp_path / "hf5", tmp_path / "work")
    assert vocab.read_text() == (fixture_model / "vocab.txt").read_text() and lowercase
    text = "The Origin of the ring , 1895."
    assert WordPiece(vocab, lowercase=lowercase).encode(text) == tok(text, add_special_tokens=False)["input_ids"]
    hf = model.state_dict()
    assert torch.equal(state["bert.layers.1.up.weight"], hf["encoder.layer.1.intermediate.dense.weight"])


def test_training_output_folder_converts_from_its_newest_checkpoint(fixture_model, tmp_path):
    """`bertkit convert --input OUTPUT_DIR` takes that run's newest checkpoint, as --init_checkpoint does."""
    config, state, vocab, _ = read_any(fixture_model)
    out = tmp_path / "run"
    for step, scale in ((1, 1.0), (2, 2.0)):
        save_model(out / f"ckpt-{step:08d}", config, {k: v * scale for k, v in state.items()}, vocab)
    assert cli_main(["convert", "-i", str(out), "-o", str(tmp_path / "hf"), "--format", "hf"]) == 0
    _, got, _, _ = read_any(tmp_path / "hf")
    assert torch.equal(got["bert.pooler.weight"], state["bert.pooler.weight"] * 2.0)


# ---- the command line and bad input ------------------------------------------------------------

def test_cli_convert_google_zip(google_zip, tmp_path, capsys):
    out = tmp_path / "model"
    r = run_cli("convert", "--input", str(google_zip), "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["bert_config.json", "bertkit.json", "model.safetensors",
                                                     "vocab.txt"]
    config, state, _, _ = load_model_folder(out)
    reference = from_hf(load_file(FIXTURES / "reference_hf" / "model.safetensors"), 2)
    assert all(torch.equal(state[k], v) for k, v in reference.items())
    assert list(tmp_path.iterdir()) == [out]  # no temporary folder left beside it

    # An existing output is kept unless --overwrite is given.
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert cli_main(["convert", "--input", str(google_zip), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_overwrite_replaces_output(fixture_model, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert cli_main(["convert", "--input", str(fixture_model), "--output", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


def test_flipped_byte_is_refused(fixture_model, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(fixture_model, bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: the file still parses
    weights.write_bytes(bytes(data))
    assert len(load_file(weights)) == 46  # still a valid safetensors file: only the checksum can tell
    with pytest.raises(BertkitError, match="model.safetensors.*sha256"):
        load_model_folder(bad)
    assert cli_main(["convert", "--input", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "sha256" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", **TINY.to_dict()}))
    small_vocab(folder / "vocab.txt", TINY.vocab_size)
    return folder


class _Payload:
    """Unpickling this would run code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    folder = hf_folder(tmp_path)
    state = BertForPreTraining(TINY).state_dict()
    torch.save({**state, "evil": _Payload(marker)}, folder / "pytorch_model.bin")
    assert not marker.exists()

    r = run_cli("convert", "--input", str(folder), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    assert str(folder / "pytorch_model.bin") in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "refused to load" in r.stderr and "exec" in r.stderr  # the cause, not torch's advice
    assert "\x1b" not in r.stderr
    assert not marker.exists(), "the pickle payload ran"
    assert not (tmp_path / "out").exists()


def test_plain_pytorch_model_bin_still_loads(tmp_path):
    """weights_only loading refuses code, not weights: an ordinary HF .bin converts."""
    folder = hf_folder(tmp_path)
    model = BertForPreTraining(TINY)
    randomize(model, seed=5)
    torch.save(to_hf(model.state_dict(), TINY.num_hidden_layers), folder / "pytorch_model.bin")
    config, state, _, _ = read_any(folder)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_unknown_weight_name_is_refused(tmp_path):
    model = BertForPreTraining(TINY)
    vocab = small_vocab(tmp_path / "vocab.txt", TINY.vocab_size)
    folder = tmp_path / "hf"
    write_hf(folder, TINY, model.state_dict(), vocab, True)
    tensors = load_file(folder / "model.safetensors")
    tensors["bert.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(2)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(BertkitError, match=r"unknown weight name.*rotary"):
        read_any(folder)


@pytest.mark.parametrize("name, data, match", [
    ("pytorch_model.bin", b"", "pytorch_model.bin: refused to load"),
    ("pytorch_model.bin", b"garbage" * 9, "pytorch_model.bin: refused to load"),
    ("pytorch_model.bin", None, "does not hold a name -> tensor mapping"),
    ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", "model.safetensors: unreadable"),
])
def test_damaged_hf_weights_are_one_clear_error(tmp_path, name, data, match):
    folder = hf_folder(tmp_path)
    if data is None:
        torch.save([torch.zeros(3)], folder / name)  # loads under weights_only, but is no state dict
    else:
        (folder / name).write_bytes(data)
    with pytest.raises(BertkitError, match=match):
        read_any(folder)


@pytest.mark.parametrize("config, match", [
    ([1, 2], "expected a JSON object"),
    ({"model_type": "roberta"}, "model_type 'roberta' is not BERT"),
    ({**TINY.to_dict(), "position_embedding_type": "relative_key"}, "only absolute position"),
    ({**TINY.to_dict(), "hidden_size": 30}, "hidden_size 30 is not a multiple"),
])
def test_bad_hf_config(tmp_path, config, match):
    folder = hf_folder(tmp_path)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(BertkitError, match=match) as e:
        read_any(folder)
    assert str(folder / "config.json") in str(e.value)
