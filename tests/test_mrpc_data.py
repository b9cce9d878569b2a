"""MRPC data: the readers against the real GLUE and Microsoft files, GLUE's construction of
train/dev/test.tsv, features, padded batches, length-grouped batching, metrics and bad input."""


import pytest
import torch

from bertkit import BertkitError
from bertkit.tasks.finetune import mrpc_data as mrpc
from bertkit.tokenizer import WordPiece
from conftest import DATA, VOCAB

GLUE = DATA / "mrpc" / "glue"
MSFT = DATA / "mrpc" / "microsoft_original"


@pytest.fixture(scope="module")
def tok():
    return WordPiece(VOCAB)


def test_glue_counts_and_labels():
    # Counts from SOURCES.md and GLUE's published split sizes (3668 / 408 / 1725).
    train = mrpc.read_mrpc(GLUE / "train.tsv")
    dev = mrpc.read_mrpc(GLUE / "dev.tsv")
    test = mrpc.read_mrpc(GLUE / "test.tsv")
    assert len(train) == 3668 and sum(e.label for e in train) == 2474
    assert len(dev) == 408 and sum(e.label for e in dev) == 279
    assert len(test) == 1725 and all(e.label is None for e in test)
    assert [e.guid for e in test[:3]] == ["0", "1", "2"] and test[-1].guid == "1724"


def test_microsoft_counts():
    for path in (MSFT / "msr_paraphrase_train.txt", GLUE / "msr_paraphrase_train.txt"):
        examples = mrpc.read_mrpc(path)
        assert len(examples) == 4076 and sum(e.label for e in examples) == 2753


def test_rows_match_the_raw_files():
    # GLUE rows 0, 1 and 3 of train as Hugging Face `datasets` documents them (glue/mrpc, train).
    train = mrpc.read_mrpc(GLUE / "train.tsv")
    assert (train[0].label, train[0].text_a, train[0].text_b) == (
        1, 'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
        'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his evidence .')
    assert (train[1].label, train[1].text_a) == (
        0, "Yucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion .")
    assert train[3].label == 0 and train[3].text_b == (
        "Tab shares jumped 20 cents , or 4.6 % , to set a record closing high at A $ 4.57 .")
    # Microsoft's untokenized first row, and dev/test rows, against the raw bytes of the files.
    first = mrpc.read_mrpc(MSFT / "msr_paraphrase_train.txt")[0]
    assert (first.label, first.text_a) == (
        1, 'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.')
    for path, row in ((GLUE / "dev.tsv", 17), (GLUE / "test.tsv", 1000), (GLUE / "train.tsv", 2999)):
        raw = path.read_bytes().decode("utf-8").split("\n")[row + 1]
        label, _, _, a, b = raw.split("\t")
        ex = mrpc.read_mrpc(path)[row]
        assert (ex.text_a, ex.text_b) == (a, b)
        assert ex.label == (int(label) if path.name != "test.tsv" else None)


def test_find_mrpc(tmp_path):
    assert mrpc.find_mrpc(GLUE) == {s: GLUE / f"{s}.tsv" for s in ("train", "dev", "test")}
    assert mrpc.find_mrpc(DATA / "mrpc")["train"] == GLUE / "train.tsv"  # looks in glue/
    assert mrpc.find_mrpc(MSFT) == {"train": MSFT / "msr_paraphrase_train.txt"}
    with pytest.raises(BertkitError, match="holds no MRPC files"):
        mrpc.find_mrpc(tmp_path, download=False)


def test_download_builds_glue_files_byte_for_byte(tmp_path):
    """From the SentEval train file and GLUE's dev ids (both pinned by sha256), our build writes
    GLUE's train.tsv and dev.tsv exactly. The labelled test file is held out here, so a stand-in is
    made from GLUE's test.tsv; rebuilding test.tsv from it must give GLUE's file back."""
    src = tmp_path / "src"
    src.mkdir()
    lines = (GLUE / "test.tsv").read_text(encoding="utf-8").splitlines()
    fake = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [
        "1\t" + line.split("\t", 1)[1] for line in lines[1:]]
    (src / "msr_test.txt").write_text("\n".join(fake) + "\n", encoding="utf-8")
    sources = {
        "msr_paraphrase_train.txt": ((GLUE / "msr_paraphrase_train.txt").as_uri(),
                                     mrpc.MRPC_SOURCES["msr_paraphrase_train.txt"][1]),
        "msr_paraphrase_test.txt": ((src / "msr_test.txt").as_uri(), None),
        "dev_ids.tsv": ((GLUE / "dev_ids.tsv").as_uri(), mrpc.MRPC_SOURCES["dev_ids.tsv"][1]),
    }
    out = tmp_path / "data"
    found = mrpc.find_mrpc(out, sources=sources)
    assert found == {s: out / f"{s}.tsv" for s in ("train", "dev", "test")}
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert (out / name).read_bytes() == (GLUE / name).read_bytes(), name


def test_download_offline_is_one_clear_error(tmp_path):
    sources = {name: (f"http://127.0.0.1:9/{name}", None) for name in mrpc.MRPC_SOURCES}
    with pytest.raises(BertkitError, match=r"cannot download http://127\.0\.0\.1:9/") as e:
        mrpc.find_mrpc(tmp_path / "data", sources=sources)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "data").glob("*.tsv"))


def test_the_default_sources_are_glues():
    urls = {url for url, _ in mrpc.MRPC_SOURCES.values()}
    assert urls == {"https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
                    "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt",
                    "https://dl.fbaipublicfiles.com/glue/data/mrpc_dev_ids.tsv"}


@pytest.mark.parametrize("body, message", [
    ("1\t1\t2\tonly a\n", r"bad\.tsv:2: expected 5 tab-separated columns, found 4"),
    ("1\t1\t2\ta\tb\n2\t3\t4\tc\td\n", r"bad\.tsv:3: label \(Quality\) must be 0 or 1, found '2'"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.tsv"
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + body)
    with pytest.raises(BertkitError, match=message):
        mrpc.read_mrpc(path)


def test_bad_header_and_encoding(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("1\t1\t2\ta\tb\n")  # no header (a known broken copy of MRPC)
    with pytest.raises(BertkitError, match=r"bad\.tsv:1: expected the tab-separated MRPC header"):
        mrpc.read_mrpc(path)
    path.write_bytes(b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\xff\tb\n")
    with pytest.raises(BertkitError, match=r"bad\.tsv:2: not valid UTF-8"):
        mrpc.read_mrpc(path)


def test_features_equal_encode_pair_and_fit(tok):
    examples = mrpc.read_mrpc(GLUE / "dev.tsv")
    for max_len in (128, 24):
        features = mrpc.make_features(examples, tok, max_len)
        for ex, f in zip(examples, features):
            assert (f.input_ids, f.token_type_ids) == tok.encode_pair(ex.text_a, ex.text_b, max_len)
            assert len(f.input_ids) <= max_len and f.label == ex.label
    # At 24 tokens every pair is cut; the longer side loses first, so the sides differ by at most 1.
    f = mrpc.make_features(examples[:1], tok, 24)[0]
    a_len = f.token_type_ids.index(1) - 2
    assert len(f.input_ids) == 24 and abs(a_len - (24 - 3 - a_len)) <= 1


def test_collate_pads_to_the_batch():
    feats = [mrpc.PairFeature([101, 7, 102], [0, 0, 0], 1),
             mrpc.PairFeature([101, 5, 102, 6, 102], [0, 0, 0, 1, 1], 0)]
    batch = mrpc.collate(feats)
    assert batch["input_ids"].tolist() == [[101, 7, 102, 0, 0], [101, 5, 102, 6, 102]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [1, 0]
    assert all(t.dtype == torch.int64 for t in batch.values())
    batch = mrpc.collate(feats, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].sum().item() == 8
    unlabelled = mrpc.collate([mrpc.PairFeature([101, 102], [0, 0], None)])
    assert "labels" not in unlabelled


def test_metrics_by_hand():
    # tp = 2 (rows 0, 4), fp = 1 (row 1), fn = 1 (row 3), correct = 3 of 5.
    m = mrpc.metrics([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert mrpc.metrics([0, 0], [0, 0])["f1"] == 0.0  # no positives anywhere


def test_write_glue_predictions(tmp_path):
    test = mrpc.read_mrpc(GLUE / "test.tsv")
    out = tmp_path / "out" / "test_results.tsv"
    mrpc.write_predictions(out, test, [i % 2 for i in range(len(test))])
    lines = out.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1726
    assert lines[1] == "0\t0" and lines[2] == "1\t1" and lines[-1] == "1724\t0"
    assert [p.name for p in out.parent.iterdir()] == ["test_results.tsv"]  # no temporary left
