"""GLUE's files read by bertkit against the reading of Google's run_classifier.py processors and
Hugging Face's glue processors (csv with tabs and quotechar None, columns by position, header row
skipped except in CoLA's train/dev): on the real staged training files of CoLA, SST-2, STS-B, RTE
and MRPC, and on small files written here in GLUE's exact layouts (header lines and column order of
GLUE's MNLI, QNLI, QQP and WNLI files, and of XNLI's) for the tasks not staged."""

import csv

import pytest

from bertkit import BertkitError
from bertkit.tasks.finetune import glue_data
from conftest import DATA

GLUE = DATA / "glue"


def google_rows(path):
    """Google's DataProcessor._read_tsv: csv.reader with tabs and quotechar None."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quotechar=None))


# (text_a, text_b, label) of a training row, by position as Google's (CoLA, MRPC, MNLI, XNLI) and
# Hugging Face's (SST-2, STS-B, QQP, QNLI, RTE, WNLI) processors take them.
POSITIONS = {
    "cola": lambda r: (r[3], None, r[1]),
    "sst2": lambda r: (r[0], None, r[1]),
    "mrpc": lambda r: (r[3], r[4], r[0]),
    "stsb": lambda r: (r[7], r[8], float(r[-1])),
    "qqp": lambda r: (r[3], r[4], r[5]),
    "mnli": lambda r: (r[8], r[9], r[-1]),
    "qnli": lambda r: (r[1], r[2], r[-1]),
    "rte": lambda r: (r[1], r[2], r[-1]),
    "wnli": lambda r: (r[1], r[2], r[-1]),
}
TEST_POSITIONS = {  # (id, text_a, text_b) of a test row
    "cola": lambda r: (r[0], r[1], None), "sst2": lambda r: (r[0], r[1], None),
    "mrpc": lambda r: (r[0], r[3], r[4]), "stsb": lambda r: (r[0], r[7], r[8]),
    "qqp": lambda r: (r[0], r[1], r[2]), "mnli": lambda r: (r[0], r[8], r[9]),
    "qnli": lambda r: (r[0], r[1], r[2]), "rte": lambda r: (r[0], r[1], r[2]), "wnli": lambda r: (r[0], r[1], r[2]),
}


def ours(task, path, split="train"):
    return [(ex.text_a, ex.text_b, ex.label) for ex in glue_data.read_split(glue_data.TASKS[task], path, split)]


@pytest.mark.parametrize("task, path, rows, counts", [
    ("cola", GLUE / "CoLA" / "train.tsv", 8551, {"1": 6023, "0": 2528}),
    ("sst2", GLUE / "SST-2" / "train.tsv", 67349, {"1": 37569, "0": 29780}),
    ("stsb", GLUE / "STS-B" / "train.tsv", 5749, None),
    ("rte", GLUE / "RTE" / "train.tsv", 2490, {"entailment": 1249, "not_entailment": 1241}),
    ("mrpc", DATA / "mrpc" / "glue" / "train.tsv", 3668, {"1": 2474, "0": 1194}),
])
def test_staged_training_files_read_as_google_reads_them(task, path, rows, counts):
    examples = ours(task, path)
    reference = google_rows(path)
    if task != "cola":  # only CoLA's train/dev have no header
        reference = reference[1:]
    assert len(examples) == rows  # the counts in ../shared/data/SOURCES.md
    assert examples == [POSITIONS[task](r) for r in reference]
    if counts:
        assert {k: sum(ex[2] == k for ex in examples) for k in counts} == counts
    else:  # STS-B: scores from 0 to 5, mean 2.701
        scores = [ex[2] for ex in examples]
        assert min(scores) == 0.0 and max(scores) == 5.0 and abs(sum(scores) / len(scores) - 2.701) < 5e-4


def test_a_quote_is_text(tmp_path):
    """SST-2's sentences hold bare quotes: never quoting, as GLUE and Google read them."""
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\n"a film that \t1\nit \'s "" great "\t0\n', encoding="utf-8")
    assert ours("sst2", path) == [('"a film that ', None, "1"), ('it \'s "" great "', None, "0")]


def write(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + ["\t".join(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


PARSE = "( ( The cat ) ( sat . ) )"
MNLI_TRAIN = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
MNLI_TEST = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2")
NLI = ["neutral", "entailment", "contradiction"]


def mnli_row(i, labels):
    return [str(i), str(31193 + i), f"{31193 + i}n", "government", PARSE, PARSE, f"(ROOT {i})", f"(ROOT {i})",
            f'The "cat" {i} sat.', f"A cat {i} sat.", *labels]


@pytest.fixture
def mnli(tmp_path):
    d = tmp_path / "MNLI"
    write(d / "train.tsv", MNLI_TRAIN, [mnli_row(i, [NLI[i % 3], NLI[i % 3]]) for i in range(7)])
    for name in ("dev_matched", "dev_mismatched"):
        write(d / f"{name}.tsv", MNLI_DEV, [mnli_row(i, [NLI[i % 3]] * 5 + [NLI[(i + 1) % 3]]) for i in range(5)])
    for name in ("test_matched", "test_mismatched"):
        write(d / f"{name}.tsv", MNLI_TEST, [mnli_row(100 + i, []) for i in range(4)])
    return d


def test_mnli_layouts(mnli):
    task = glue_data.TASKS["mnli"]
    for name, split in (("train", "train"), ("dev_matched", "dev"), ("dev_mismatched", "dev")):
        path = mnli / f"{name}.tsv"
        assert ours("mnli", path, split) == [POSITIONS["mnli"](r) for r in google_rows(path)[1:]]
    # gold_label, the last column, not label1
    assert [ex[2] for ex in ours("mnli", mnli / "dev_matched.tsv", "dev")] == [NLI[(i + 1) % 3] for i in range(5)]
    test = glue_data.read_split(task, mnli / "test_matched.tsv", "test")
    assert [(ex.guid, ex.text_a, ex.text_b) for ex in test] == [TEST_POSITIONS["mnli"](r) for r in
                                                                google_rows(mnli / "test_matched.tsv")[1:]]
    assert all(ex.label is None for ex in test)
    assert glue_data.split_files(task, "dev") == {"": "dev_matched.tsv", "_mm": "dev_mismatched.tsv"}


@pytest.mark.parametrize("task, header, test_header, rows, test_rows", [
    ("qnli", "index\tquestion\tsentence\tlabel", "index\tquestion\tsentence",
     [["0", "What came first?", 'The "egg", some say.', "entailment"], ["1", "Who?", "Nobody.", "not_entailment"]],
     [["0", "Why?", "Because."], ["1", "How?", "So."]]),
    ("qqp", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "id\tquestion1\tquestion2",
     [["133273", "213221", "213222", "How is the life of a math student?", "Which level of prepration?", "0"],
      ["402555", "536040", "536041", 'How do I control my "horny" emotions?', "How do you control lust?", "1"]],
     [["0", "Why do rockets look white?", "Why are rockets white?"], ["1", "What is it?", "Is it?"]]),
    ("wnli", "index\tsentence1\tsentence2\tlabel", "index\tsentence1\tsentence2",
     [["0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1"], ["1", "John hit Bill.", "Bill hit.", "0"]],
     [["0", "Maude asked.", "Maude did."]]),
])
def test_unstaged_layouts(tmp_path, task, header, test_header, rows, test_rows):
    write(tmp_path / "train.tsv", header, rows)
    write(tmp_path / "test.tsv", test_header, test_rows)
    assert ours(task, tmp_path / "train.tsv") == [POSITIONS[task](r) for r in google_rows(tmp_path / "train.tsv")[1:]]
    test = glue_data.read_split(glue_data.TASKS[task], tmp_path / "test.tsv", "test")
    assert [(ex.guid, ex.text_a, ex.text_b) for ex in test] == [TEST_POSITIONS[task](r) for r in
                                                                google_rows(tmp_path / "test.tsv")[1:]]


def test_cola_test_file_has_a_header(tmp_path):
    write(tmp_path / "test.tsv", "index\tsentence", [["0", "Bill whistled past the house."], ["1", "The car honked."]])
    test = glue_data.read_split(glue_data.TASKS["cola"], tmp_path / "test.tsv", "test")
    assert [(ex.guid, ex.text_a) for ex in test] == [("0", "Bill whistled past the house."), ("1", "The car honked.")]


XNLI_DEV = ("language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\tpromptID\tpairID\tgenre\tlabel1\tlabel2\tlabel3\tlabel4\t"
            "label5\tsentence1_tokenized\tsentence2_tokenized\tmatch")


def test_xnli_as_googles_processor(tmp_path):
    write(tmp_path / "multinli" / "multinli.train.zh.tsv", "premise\thypo\tlabel",
          [["他说，妈妈，我回来了。", "校车把他放下后，他立即给他妈妈打了电话。", "neutral"],
           ["他说，妈妈，我回来了。", "他一句话也没说。", "contradictory"]])
    dev = [[lang, NLI[i % 3], "", "", "", "", f"s1 {lang} {i}", f"s2 {lang} {i}", "1", str(i), "facetoface",
            *[NLI[i % 3]] * 5, "a", "b", "True"] for i in range(3) for lang in ("ar", "zh")]
    write(tmp_path / "xnli.dev.tsv", XNLI_DEV, dev)
    task = glue_data.find_task("XNLI")
    train = glue_data.read_split(task, tmp_path / "multinli" / "multinli.train.zh.tsv", "train", "zh")
    assert [ex.label for ex in train] == ["neutral", "contradiction"]  # Google renames contradictory
    rows = google_rows(tmp_path / "xnli.dev.tsv")[1:]
    want = [(r[6], r[7], r[1]) for r in rows if r[0] == "zh"]  # Google's positions, rows of the language
    got = glue_data.read_split(task, tmp_path / "xnli.dev.tsv", "dev", "zh")
    assert [(ex.text_a, ex.text_b, ex.label) for ex in got] == want and len(want) == 3
    with pytest.raises(BertkitError, match="no rows of language 'de'"):
        glue_data.read_split(task, tmp_path / "xnli.dev.tsv", "dev", "de")


@pytest.mark.parametrize("name, task", [("CoLA", "cola"), ("cola", "cola"), ("SST-2", "sst2"), ("sst2", "sst2"),
                                        ("STS-B", "stsb"), ("MNLI", "mnli"), ("MRPC", "mrpc"), ("XNLI", "xnli"),
                                        ("qqp", "qqp"), ("QNLI", "qnli"), ("RTE", "rte"), ("WNLI", "wnli")])
def test_task_spellings(name, task):
    assert glue_data.find_task(name).name == task


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(BertkitError, match=r"--task_name SQuAD: not a GLUE task; choose from CoLA, SST-2, MRPC"):
        glue_data.find_task("SQuAD")


def test_labels_in_google_index_order():
    assert glue_data.TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")  # MnliProcessor.get_labels
    assert glue_data.TASKS["cola"].labels == ("0", "1") and glue_data.TASKS["stsb"].labels is None
