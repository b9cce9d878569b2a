"""Fuzzing, with hypothesis, of every reader of outside input: bert_config.json, vocab.txt, MRPC TSV,
GLUE TSV and own CSV/TSV/JSON Lines files, NER CoNLL and JSON Lines files, SQuAD JSON (and the SQuAD scorer's predictions files), TFRecord framing and records, TensorFlow
checkpoint indexes, and bertkit's shard manifests and shards. Each either reads its input or
raises BertkitError (one line naming the file for the CLI); any other exception fails the test.

The inputs are mutations of real files (Google's TFRecords and checkpoint, our own dataset) and
documents of the right shape with random values, so the fuzzing gets past the first check.
BERTKIT_FUZZ_SCALE multiplies every example count (default 1: a few thousand in all, ~1 minute).
"""

import contextlib
import gzip
import io
import json
import os
import shutil
import struct
import zipfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bertkit import BertkitError
from bertkit.cli import main as bertkit
from bertkit.config import BertConfig
from bertkit.tasks.finetune import classify, glue_data, ner_predict, tables
from bertkit.tasks.finetune import ner_data as nd
from bertkit.tasks.finetune.ner_metric import is_tag
from bertkit.tasks.finetune import mrpc_data as mrpc
from bertkit.tasks.finetune import squad_data as squad
from bertkit.data.pretraining import PretrainingDataset, collate
from bertkit.data.shards import MANIFEST, bytes_digests, read_manifest, verify_dataset
from bertkit.data.tfrecord import TFRecordFile, encode_example, frame_record
from bertkit.tfbundle import BLOCK_TRAILER, FOOTER_SIZE, masked_crc32c
from bertkit.tokenizer import SPECIAL_TOKENS, WordPiece, load_vocab
from conftest import FIXTURES
from tiny import tiny_setup

SCALE = float(os.environ.get("BERTKIT_FUZZ_SCALE", "1"))


def fuzz(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def clean(call, *args, **kwargs):
    """Call a reader: its result, or None when it raised BertkitError with a one-line message."""
    try:
        return call(*args, **kwargs)
    except BertkitError as e:
        assert "\n" not in str(e), str(e)
        return None


# ---- value strategies --------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 600),
                    st.sampled_from([10**400, -10**400]),  # beyond a float's range
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def json_text(value) -> str:
    return json.dumps(value, allow_nan=True)  # NaN and Infinity too: Python's json reads them


junk = st.one_of(st.binary(max_size=200),  # random bytes
                 st.integers(1, 50_000).map(lambda n: "[" * n),  # nesting deeper than the parser's stack
                 st.integers(1, 50_000).map(lambda n: '{"a":' * n))


def mutate(data: bytes, draw, same_length: bool = False) -> bytes:
    """One to three byte-level mutations: flip, truncate, insert, delete, overwrite (with
    `same_length`, only those that keep the length: flip and overwrite)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "overwrite"] if same_length else
                                    ["flip", "truncate", "insert", "delete", "overwrite"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))[: len(data) - at]
            data[at:at + len(chunk)] = chunk
    return bytes(data)


# ---- bert_config.json --------------------------------------------------------------------------

CONFIG_KEYS = list(BertConfig().to_dict()) + ["directionality", "pooler_type", "unknown_key"]
configs = st.one_of(
    st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, max_size=len(CONFIG_KEYS)).map(json_text),
    st.fixed_dictionaries({k: st.one_of(st.just(v), scalars) for k, v in BertConfig(
        vocab_size=100, hidden_size=8, num_attention_heads=2).to_dict().items()}).map(json_text),
    json_values.map(json_text), junk)


@fuzz(1000)
@given(text=configs)
@example(text="[" * 100_000)  # found: RecursionError from json
@example(text='{"initializer_range": 1' + "0" * 400 + "}")  # found: OverflowError from math.isfinite
def test_bert_config(tmp_path, text):
    path = tmp_path / "bert_config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    config = clean(BertConfig.from_json, path)
    if config is not None:
        assert config.hidden_size % config.num_attention_heads == 0


# ---- vocab.txt ---------------------------------------------------------------------------------

tokens = st.one_of(st.sampled_from(SPECIAL_TOKENS + ("the", "##s", "a", "[unused0]")),
                   st.text(max_size=6), st.text(alphabet=" \t\r\n\x00\x0b\x0c\u2028\u3000", max_size=3))
vocabs = st.one_of(
    st.lists(tokens, max_size=30).map(lambda ts: "\n".join(ts) + "\n"),
    st.permutations(list(SPECIAL_TOKENS) + ["the", "cat", "##s", "sat"]).map(lambda ts: "\n".join(ts)),
    junk)


@fuzz(500)
@given(text=vocabs)
def test_vocab(tmp_path, text):
    path = tmp_path / "vocab.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    vocab = clean(load_vocab, path)
    if vocab is not None:
        tok = WordPiece(path)  # the Rust tokenizer takes whatever load_vocab accepts
        ids = tok.encode("the cats sat, unseen")
        assert all(0 <= i < len(vocab) for i in ids)


# ---- MRPC --------------------------------------------------------------------------------------

HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
fields = st.one_of(st.sampled_from(["0", "1", "2", "", "x", "１", "²"]), st.text(max_size=10))
rows = st.lists(fields, min_size=0, max_size=7).map("\t".join)
mrpc_files = st.one_of(
    st.tuples(st.sampled_from([HEADER, HEADER.replace("Quality", "index"), "\ufeff" + HEADER, "", "a\tb"]),
              st.lists(rows, max_size=8), st.sampled_from(["\n", "\r\n", "\r"]))
    .map(lambda t: t[2].join([t[0], *t[1]]) + t[2]),
    junk)


@fuzz(500)
@given(text=mrpc_files)
def test_mrpc(tmp_path, text):
    path = tmp_path / "train.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    examples = clean(mrpc.read_mrpc, path)
    for ex in examples or []:
        assert ex.label in (0, 1, None) and isinstance(ex.text_a, str)


# ---- GLUE files and own CSV / TSV / JSON Lines files --------------------------------------------

RTE_HEADER = "index\tsentence1\tsentence2\tlabel"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
glue_fields = st.one_of(st.sampled_from(["entailment", "not_entailment", "3.800", "nan", "1e400", "", '"', "x"]),
                        st.text(max_size=10))
glue_files = st.one_of(
    st.tuples(st.sampled_from([RTE_HEADER, STSB_HEADER, "\ufeff" + RTE_HEADER, "", "sentence1,sentence2,label"]),
              st.lists(st.lists(glue_fields, max_size=11).map("\t".join), max_size=8),
              st.sampled_from(["\n", "\r\n", "\r"]))
    .map(lambda t: t[2].join([t[0], *t[1]]) + t[2]),
    st.lists(st.dictionaries(st.sampled_from(["sentence1", "sentence2", "label", "text"]), json_values, max_size=4)
             .map(json_text), max_size=6).map("\n".join),
    junk)


@fuzz(200)
@given(text=glue_files, task=st.sampled_from(["rte", "stsb", "cola"]), split=st.sampled_from(["train", "test"]))
def test_glue_file(tmp_path, text, task, split):
    path = tmp_path / "train.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    spec = glue_data.TASKS[task]
    for ex in clean(glue_data.read_split, spec, path, split) or []:
        assert isinstance(ex.text_a, str) and (ex.label is None or ex.label in (spec.labels or ()) or
                                               isinstance(ex.label, float))


@fuzz(200)
@given(text=glue_files, fmt=st.sampled_from(["csv", "tsv", "jsonl", "txt"]))
def test_own_file(tmp_path, text, fmt):
    path = tmp_path / f"own.{fmt}"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    table = clean(tables.read_lines, path, True) if fmt == "txt" else clean(tables.read_table, path)
    if table is not None and fmt != "txt":
        examples = clean(classify.read_examples, table, "sentence1", "sentence2", "label")
        for ex in examples or []:
            assert isinstance(ex.text_a, str) and ex.label is not None


# ---- NER: CoNLL and JSON Lines files ----------------------------------------------------------

conll_fields = st.one_of(st.sampled_from(["I-PER", "B-LOC", "O", "-DOCSTART-", "-X-", "NNP", "I-", "B-X", ""]),
                         st.text(max_size=8))
conll_lines = st.lists(st.lists(conll_fields, max_size=5).map(" ".join), max_size=10)
ner_files = st.one_of(
    st.tuples(conll_lines, st.sampled_from(["\n", "\r\n"])).map(lambda t: t[1].join(t[0]) + t[1]),
    st.lists(st.fixed_dictionaries({"tokens": st.one_of(st.lists(conll_fields, max_size=4), json_values),
                                    "tags": st.one_of(st.lists(conll_fields, max_size=4), json_values)})
             .map(json_text), max_size=5).map("\n".join),
    st.lists(json_values.map(json_text), max_size=4).map("\n".join),
    junk)


@fuzz(300)
@given(text=ner_files, fmt=st.sampled_from(["conll", "jsonl"]), labelled=st.booleans(),
       tag_column=st.sampled_from([None, 2, 3]))
def test_ner_file(tmp_path, text, fmt, labelled, tag_column):
    path = tmp_path / ("train.txt" if fmt == "conll" else "train.jsonl")
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    sentences = clean(nd.read_tagged, path, None, tag_column if fmt == "conll" else None, labelled)
    for s in sentences or []:
        assert s.words and all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in s.words)
        assert (s.tags is None and not labelled) or (len(s.tags) == len(s.words) and all(is_tag(t) for t in s.tags))
    if sentences:
        clean(nd.tag_scheme, sentences, path, "auto", lambda msg: None)
    found = clean(ner_predict.read_input, path, None)  # what `bertkit predict` reads with a tagger
    for s in found.sentences if found else []:
        assert s.words and all(w and not any(c.isspace() for c in w) for w in s.words)


# ---- SQuAD -------------------------------------------------------------------------------------

def maybe(strategy):
    """Mostly the well-formed value, sometimes any JSON value, sometimes left out."""
    return st.one_of(strategy, strategy, strategy, json_values, st.just(...))


def obj(**fields_):
    return st.fixed_dictionaries({k: maybe(v) for k, v in fields_.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not ...})


words = st.text(alphabet="ab c\t\n.\u202f\u00a0é", max_size=40)
answers = obj(text=words, answer_start=st.integers(-5, 60))
questions = obj(id=st.sampled_from(["q1", "q2", "q3"]), question=words, answers=st.lists(answers, max_size=3),
                is_impossible=st.booleans())
paragraphs = obj(context=words, qas=st.lists(questions, max_size=3))
squad_files = st.one_of(obj(version=st.just("1.1"), data=st.lists(obj(paragraphs=st.lists(paragraphs, max_size=3)),
                                                                 max_size=2)).map(json_text),
                        json_values.map(json_text), junk)


@pytest.fixture(scope="module")
def tokenizer():
    return WordPiece(FIXTURES / "vocab_full.txt")


@fuzz(600)
@given(text=squad_files, is_training=st.booleans(), version_2=st.booleans())
@example(text="[" * 100_000, is_training=True, version_2=False)  # found: RecursionError from json
def test_squad(tmp_path, tokenizer, text, is_training, version_2):
    path = tmp_path / "train.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    examples = clean(squad.read_squad, path, is_training, version_2)
    if examples:  # what was read goes on to features without surprises
        features = squad.make_features(examples, tokenizer, max_seq_length=32, doc_stride=8, max_query_length=8,
                                       is_training=is_training)
        assert len({f.example_index for f in features}) == len(examples)


predictions = st.one_of(
    st.dictionaries(st.sampled_from(["q1", "q2", "q3", "zz"]), st.one_of(words, words, json_values)).map(json_text),
    json_values.map(json_text), junk)
na_probs = st.one_of(st.dictionaries(st.sampled_from(["q1", "q2", "q3"]), scalars).map(json_text), junk)


@fuzz(500)
@given(data=squad_files, preds=predictions, na=st.one_of(st.none(), na_probs),
       thresh=st.sampled_from(["1.0", "0", "-1", "nan", "inf", "x"]))
def test_squad_eval(tmp_path, data, preds, na, thresh):
    files = {"data.json": data, "predictions.json": preds, "na.json": na}
    for name, text in files.items():
        if text is not None:
            (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    argv = ["squad-eval", str(tmp_path / "data.json"), str(tmp_path / "predictions.json"), "--na-prob-thresh", thresh]
    if na is not None:
        argv += ["--na-prob-file", str(tmp_path / "na.json")]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = bertkit(argv)
    assert code in (0, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    if code == 0:
        result = json.loads(out.getvalue())
        exact = result["exact"] if "exact" in result else result["exact_match"]  # v2.0's name, v1.1's
        assert 0 <= exact <= 100 and 0 <= result["f1"] <= 100


# ---- TFRecord ----------------------------------------------------------------------------------

TFRECORD = (FIXTURES / "pretrain_seq128.tfrecord").read_bytes()
SPECIAL_IDS = (101, 102, 103, 0)


def records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        out.append(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
    return out


RECORDS = records(TFRECORD)


@st.composite
def tfrecord_files(draw):
    kind = draw(st.sampled_from(["bytes", "file", "payload", "length"]))
    if kind == "bytes":  # random bytes, or random bytes after good records
        data = draw(st.sampled_from([b"", TFRECORD[:4000]])) + draw(st.binary(max_size=300))
    elif kind == "file":  # the real file, damaged: CRCs fail, lengths lie, the end is cut
        data = mutate(TFRECORD, draw)
    elif kind == "payload":  # a record's payload damaged, then framed with valid CRCs: the parser sees it
        chosen = draw(st.lists(st.integers(0, len(RECORDS) - 1), min_size=1, max_size=4))
        data = b"".join(frame_record(mutate(RECORDS[i], draw) if draw(st.booleans()) else RECORDS[i])
                        for i in chosen)
    else:  # a length field that is wrong but carries a valid CRC
        length = struct.pack("<Q", draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 5000))))
        data = frame_record(RECORDS[0]) + length + struct.pack("<I", masked_crc32c(length)) + RECORDS[1]
    if draw(st.booleans()):
        data = gzip.compress(data)
        if draw(st.booleans()):
            data = mutate(data, draw)
    return data


def example_record(**features) -> bytes:
    good = {"input_ids": [101, 7, 8, 102, 9, 102], "input_mask": [1] * 6, "segment_ids": [0, 0, 0, 0, 1, 1],
            "masked_lm_positions": [1, 4], "masked_lm_ids": [1996, 1997], "masked_lm_weights": [1.0, 1.0],
            "next_sentence_labels": [0]}
    return frame_record(encode_example({**good, **features}))


@fuzz(1000)
@given(data=tfrecord_files(), skip=st.booleans())
@example(data=frame_record(b"\n\x08\n\x06\n\x02\xff\xfe\x12\x00"), skip=False)  # found: a feature name not UTF-8
@example(data=example_record(segment_ids=[0, 0]), skip=False)  # found: collate broadcast error
@example(data=example_record(input_ids=[101, 7, 8, 102, 9, 5000]), skip=False)  # found: id past the vocab
@example(data=example_record(masked_lm_positions=[1, 40]), skip=False)  # found: position past the sequence
def test_tfrecord(tmp_path, data, skip):
    path = tmp_path / "shard.tfrecord"
    path.write_bytes(data)
    records_ = clean(TFRecordFile, path, skip_corrupt=skip)
    if records_ is not None:
        for i in range(len(records_)):
            clean(records_.example, i)
        records_.close()
    dataset = clean(PretrainingDataset, path, 128, 20, 2000, SPECIAL_IDS, skip_corrupt=skip)
    if dataset is not None:
        items = [item for item in (clean(dataset.__getitem__, i) for i in range(len(dataset))) if item]
        if items:  # whatever a reader hands over is a batch the model can take
            batch = collate(items, 20)
            assert int(batch["input_ids"].max()) < 2000 and int(batch["input_ids"].min()) >= 0
            assert int(batch["masked_lm_ids"].max()) < 2000 and int(batch["masked_lm_ids"].min()) >= 0
            assert int(batch["segment_ids"].max()) <= 1 and int(batch["next_sentence_labels"].max()) <= 1
            width = batch["input_ids"].shape[1]
            assert int(batch["masked_lm_positions"].max()) < width and int(batch["masked_lm_positions"].min()) >= 0


# ---- TensorFlow checkpoint index ---------------------------------------------------------------

@pytest.fixture(scope="module")
def google_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("google")
    with zipfile.ZipFile(FIXTURES / "uncased_L-2_H-128_A-2.zip") as z:
        z.extractall(root)
    return root / "uncased_L-2_H-128_A-2"


def data_blocks(index: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every block of a checkpoint index: the data blocks and the index block."""
    from bertkit.protowire import read_varint
    from bertkit.tfbundle import _block_entries

    footer = index[-FOOTER_SIZE:]
    _, pos = read_varint(footer, 0)
    _, pos = read_varint(footer, pos)
    off, pos = read_varint(footer, pos)
    size, _ = read_varint(footer, pos)
    blocks = [(off, size)]
    for _, handle in _block_entries(index, off, size, "fixture"):
        o, p = read_varint(handle, 0)
        blocks.append((o, read_varint(handle, p)[0]))
    return blocks


@st.composite
def checkpoint_indexes(draw, index: bytes):
    if draw(st.booleans()):  # damaged anywhere: mostly caught by a block checksum
        return mutate(index, draw)
    # damaged inside one block whose checksum is then fixed: the entry parser sees the damage
    off, size = draw(st.sampled_from(data_blocks(index)))
    block = mutate(index[off:off + size], draw, same_length=True)
    kind = index[off + size]
    trailer = bytes([kind]) + struct.pack("<I", masked_crc32c(block + bytes([kind])))
    return index[:off] + block + trailer + index[off + size + BLOCK_TRAILER:]


@fuzz(400)
@given(data=st.data())
def test_checkpoint_index(tmp_path, google_folder, data):
    from bertkit.convert import read_google

    folder = tmp_path / "ckpt"
    if not folder.exists():
        folder.mkdir()
        for f in google_folder.iterdir():
            if not f.name.endswith(".index"):
                os.symlink(f, folder / f.name)
    index = (google_folder / "bert_model.ckpt.index").read_bytes()
    (folder / "bert_model.ckpt.index").write_bytes(data.draw(checkpoint_indexes(index)))
    clean(read_google, folder)


# ---- bertkit datasets: manifests and shards ----------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_setup(tmp_path_factory) / "data"


def jsonpaths(value, prefix=()):
    """Every (path) into a JSON document, to pick a place to damage."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from jsonpaths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from jsonpaths(v, prefix + (i,))


def replaced(doc, path, new):
    if not path:
        return new
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if new is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = new
    return doc


@st.composite
def damaged_datasets(draw, manifest: dict, shard: bytes):
    """(manifest text, shard bytes): values of the manifest replaced or deleted, or the shard's bytes
    damaged with the manifest's digests updated to match (a bug, or a tampered copy)."""
    doc = manifest
    if draw(st.booleans()):
        paths = list(jsonpaths(manifest))
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(paths))
            doc = replaced(doc, path, draw(st.one_of(json_values, st.just(...)) if path else json_values))
            if not isinstance(doc, (dict, list)):
                break
            paths = list(jsonpaths(doc))
        return json_text(doc), shard
    shard = mutate(shard, draw)
    sha, crc = bytes_digests(shard)
    doc = replaced(doc, ("shards", 0), {**manifest["shards"][0], "bytes": len(shard), "sha256": sha, "crc32c": crc})
    return json_text(doc), shard


@fuzz(400)
@given(data=st.data(), skip=st.booleans())
def test_dataset(tmp_path, dataset, data, skip):
    manifest = json.loads((dataset / MANIFEST).read_text())
    shard_name = manifest["shards"][0]["file"]
    text, shard = data.draw(damaged_datasets(manifest, (dataset / shard_name).read_bytes()))
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / MANIFEST).write_text(text)
    (folder / shard_name).write_bytes(shard)
    if not (folder / "vocab.txt").exists():
        shutil.copy(dataset / "vocab.txt", folder / "vocab.txt")
    if clean(read_manifest, folder) is not None:
        clean(verify_dataset, folder)
    vocab_size = manifest["settings"]["vocab_size"]
    ids = manifest["settings"]["special_ids"]
    opened = clean(PretrainingDataset, folder, 64, 10, vocab_size, (ids["cls"], ids["sep"], ids["mask"], ids["pad"]),
                   skip_corrupt=skip)
    if opened is not None:
        items = [item for item in (clean(opened.__getitem__, i) for i in range(len(opened))) if item]
        if items:
            batch = collate(items, 10)
            assert 0 <= int(batch["input_ids"].min()) and int(batch["input_ids"].max()) < vocab_size
            assert int(batch["masked_lm_positions"].max()) < batch["input_ids"].shape[1]
            assert int(batch["segment_ids"].max()) <= 1


def test_found_by_fuzzing_dataset(dataset, tmp_path):
    """Cases the dataset fuzzing found, kept as plain regressions (their inputs are too big for @example)."""
    ids = read_manifest(dataset)["settings"]["special_ids"]
    special = (ids["cls"], ids["sep"], ids["mask"], ids["pad"])

    def copy(edit_manifest=None, edit_shard=None):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        shutil.copytree(dataset, folder)
        manifest = json.loads((folder / MANIFEST).read_text())
        shard = folder / manifest["shards"][0]["file"]
        if edit_shard:
            shard.write_bytes(edit_shard(shard.read_bytes()))
            sha, crc = bytes_digests(shard.read_bytes())
            manifest["shards"][0].update(bytes=shard.stat().st_size, sha256=sha, crc32c=crc)
        if edit_manifest:
            edit_manifest(manifest)
        (folder / MANIFEST).write_text(json.dumps(manifest))
        return folder

    # A shard holding fewer instances than the manifest says: refused on every read, not only the
    # first (the shard was cached before the check, so the second read hit an IndexError).
    folder = copy(edit_manifest=lambda m: m["shards"][0].update(instances=m["shards"][0]["instances"] + 1))
    opened = PretrainingDataset(folder, 64, 10, 2997, special)
    for i in (0, len(opened) - 1):
        with pytest.raises(BertkitError, match="the manifest says"):
            opened[i]
    # A shard header naming a dtype numpy parses with Python's parser (SyntaxError).
    folder = copy(edit_shard=lambda b: b.replace(b'"<u2", 140]', b'",u2", 140]', 1))
    with pytest.raises(BertkitError, match="malformed shard header"):
        PretrainingDataset(folder, 64, 10, 2997, special)[0]
    # A manifest that is JSON but not an object (AttributeError), or a shard entry naming a path.
    for bad in ("null", "[]"):
        (folder / MANIFEST).write_text(bad)
        with pytest.raises(BertkitError, match="not a version-1"):
            read_manifest(folder)
    folder = copy(edit_manifest=lambda m: m["shards"][0].update(file="../../etc/passwd"))
    with pytest.raises(BertkitError, match="not a file in the dataset folder"):
        read_manifest(folder)
