"""NER data and scores: the entity counting against seqeval (its default mode follows conlleval) on
crafted IOB1 and IOB2 predictions and on random ones; the CoNLL-2003 training file read whole
(sentences, words and entities per type counted by this test's own loop and by seqeval, equal to
the published figures); first-piece labels against transformers' tokenizer as run_ner.py uses it;
windows of long sentences; the tag scheme."""

import json
import random
import warnings

import pytest
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from bertkit import BertkitError
from bertkit.tasks.finetune import ner_data as nd
from bertkit.tasks.finetune.ner_metric import chunks, score
from bertkit.tokenizer import WordPiece
from conftest import DATA, VOCAB

CONLL = DATA / "conll2003" / "train.txt"


def seqeval_scores(gold, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division warnings of types never predicted
        report = classification_report(gold, pred, output_dict=True)
        return ({"precision": precision_score(gold, pred), "recall": recall_score(gold, pred),
                 "f1": f1_score(gold, pred), "accuracy": accuracy_score(gold, pred)},
                {t: {"precision": r["precision"], "recall": r["recall"], "f1": r["f1-score"], "support": r["support"]}
                 for t, r in report.items() if " avg" not in t})


def assert_like_seqeval(gold, pred):
    ours = score(gold, pred)
    total, per_type = seqeval_scores(gold, pred)
    for k, v in total.items():
        assert ours[k] == pytest.approx(v, abs=1e-12), k
    assert set(ours["per_type"]) == set(per_type)  # types of the gold tags and the predictions
    for t, r in per_type.items():
        assert {k: ours["per_type"][t][k] for k in r} == pytest.approx(r, abs=1e-12), t
    return ours


def test_a_moved_b_boundary_keeps_token_accuracy_high_and_entity_f1_low():
    """IOB1: two adjacent PER chunks told apart by one B- tag. Moving that B- one word costs two of
    forty tokens but both chunks of every sentence."""
    gold = [["O"] * 16 + ["I-PER", "I-PER", "B-PER", "I-PER"] + ["O"] * 20] * 5
    pred = [["O"] * 16 + ["I-PER", "B-PER", "I-PER", "I-PER"] + ["O"] * 20] * 5
    ours = assert_like_seqeval(gold, pred)
    assert ours["accuracy"] == 0.95 and ours["f1"] == 0.0 and ours["entities"] == ours["predicted_entities"] == 10


@pytest.mark.parametrize("gold, pred", [
    # IOB1: I- after O starts a chunk, a B- splits two of one type, a type change splits too
    ([["O", "I-ORG", "I-ORG", "O", "I-LOC"]], [["O", "I-ORG", "I-ORG", "O", "I-LOC"]]),
    ([["I-PER", "I-PER", "B-PER", "O"]], [["I-PER", "I-PER", "I-PER", "O"]]),
    ([["I-PER", "I-LOC", "I-LOC"]], [["I-PER", "I-PER", "I-LOC"]]),  # a type mismatch inside
    ([["I-MISC", "I-MISC"]], [["I-ORG", "I-ORG"]]),  # right span, wrong type
    # chunks at sentence ends: the end of a sentence ends its chunk, the next starts a new one
    ([["O", "I-LOC"], ["I-LOC", "O"]], [["O", "I-LOC"], ["I-LOC", "I-LOC"]]),
    ([["I-LOC"], ["I-LOC"]], [["O"], ["I-LOC"]]),
    # IOB2, and predictions that break it (I- after O, B- inside) still counted as conlleval does
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["I-PER", "I-PER", "O", "B-LOC"]]),
    ([["B-ORG", "I-ORG", "I-ORG", "O"]], [["B-ORG", "B-ORG", "I-ORG", "O"]]),
    ([["B-PER", "B-PER", "O", "B-MISC", "I-MISC"]], [["B-PER", "I-PER", "O", "O", "I-MISC"]]),
    ([["O", "O"]], [["B-PER", "I-LOC"]]),  # nothing to find: precision and recall 0
])
def test_crafted_sequences_score_as_seqeval(gold, pred):
    assert_like_seqeval(gold, pred)
    for sentence in gold + pred:
        assert chunks(sentence) == [(t, s, e + 1) for t, s, e in get_entities(sentence)]


@pytest.mark.parametrize("tags", [["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"],
                                  ["O", "I-PER", "I-LOC", "I-ORG", "B-ORG", "I-MISC"]])
def test_random_sequences_score_as_seqeval(tags):
    rng = random.Random(len(tags[1]))
    for _ in range(200):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 4))]
        pred = [[rng.choice(tags) if rng.random() < 0.4 else g for g in s] for s in gold]
        assert_like_seqeval(gold, pred)


@pytest.fixture(scope="module")
def conll_train():
    return nd.read_tagged(CONLL)


def test_conll2003_train_read_whole(conll_train):
    """The reader finds the published counts (Tjong Kim Sang and De Meulder 2003) and the entities
    per type this test counts with its own loop over the file's lines, and seqeval on its tags."""
    sentences = conll_train
    assert len(sentences) == 14041 and sum(len(s.words) for s in sentences) == 203621
    counts, prev = {}, "O"
    for line in CONLL.read_text(encoding="utf-8").splitlines():
        tag = line.split()[-1] if line.strip() and not line.startswith("-DOCSTART-") else "O"
        if tag != "O" and (tag[0] == "B" or prev == "O" or prev[2:] != tag[2:]):
            counts[tag[2:]] = counts.get(tag[2:], 0) + 1
        prev = tag
    assert counts == {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}
    ours = score([s.tags for s in sentences], [s.tags for s in sentences])
    assert {t: r["support"] for t, r in ours["per_type"].items()} == counts
    found = {}
    for t, _, _ in get_entities([s.tags for s in sentences]):
        found[t] = found.get(t, 0) + 1
    assert found == counts
    assert sentences[0].words[:3] == ["EU", "rejects", "German"] and sentences[0].lines[:2] == [3, 4]
    warned = []
    assert nd.tag_scheme(sentences, CONLL, "auto", warned.append) == "IOB1"
    assert len(warned) == 1 and ":152428: 2 tag(s) do not fit IOB1" in warned[0]  # `the Atlanta`, `Urdu-speaking`: B-MISC


def test_first_pieces_labelled_as_run_ner_labels_them(conll_train):
    """transformers' tokenizer with is_split_into_words, first piece labelled and -100 elsewhere
    (run_ner.py with label_all_tokens False), gives the labels of our windows."""
    from transformers import BertTokenizer  # the fast tokenizer (tokenizers), as run_ner.py requires

    sentences = conll_train[:300]
    labels = sorted({t for s in sentences for t in s.tags})
    ids = {t: i for i, t in enumerate(labels)}
    features, cut = nd.make_features(sentences, WordPiece(VOCAB), 128, ids)
    assert cut == 0 and [f.sentence for f in features] == list(range(300))
    hf = BertTokenizer(vocab=str(VOCAB), do_lower_case=True)
    enc = hf([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=128)
    for i, (f, s) in enumerate(zip(features, sentences)):
        words, previous, expected = enc.word_ids(i), None, []
        for w in words:
            expected.append(-100 if w is None or w == previous else ids[s.tags[w]])
            previous = w
        assert f.input_ids == enc["input_ids"][i]
        assert f.labels == expected


def test_long_sentences_become_windows_of_whole_words():
    tok = WordPiece(VOCAB)
    words = "the quick brown fox jumps over the lazy dog near the riverbank at dawn".split()
    long = nd.Sentence(words * 3, ["O", "I-PER"] * (len(words) * 3 // 2), list(range(1, len(words) * 3 + 1)))
    short = nd.Sentence(["hello"], ["O"], [99])
    ids = {"I-PER": 0, "O": 1}
    features, cut = nd.make_features([long, short], tok, 16, ids)
    assert cut == 1
    pieces = tok.encode_words([long.words])[0]
    mine = [f for f in features if f.sentence == 0]
    assert [f.word for f in mine] == sorted(f.word for f in mine) and mine[0].word == 0
    covered = []
    for f in mine:
        assert len(f.input_ids) <= 16 and f.input_ids[0] == tok.cls_id and f.input_ids[-1] == tok.sep_id
        n = len(f.starts)
        covered += range(f.word, f.word + n)
        assert f.input_ids[1:-1] == [p for w in pieces[f.word:f.word + n] for p in w]
        assert [f.labels[p] for p in f.starts] == [ids[t] for t in long.tags[f.word:f.word + n]]
        assert sum(label != nd.IGNORE for label in f.labels) == n
    assert covered == list(range(len(long.words)))  # every word once, in order
    rows = [[(f.sentence, f.word + k) for k in range(len(f.starts))] for f in features]
    assert nd.join_windows(features[::-1], rows[::-1], 2) == [[(0, w) for w in range(len(long.words))], [(1, 0)]]
    # a word with more pieces than a window holds keeps its first ones
    (f,), _ = nd.make_features([nd.Sentence(["supercalifragilistic"], ["O"], [1])], tok, 4, ids)
    assert f.input_ids == [tok.cls_id, *tok.encode_words([["supercalifragilistic"]])[0][0][:2], tok.sep_id]


def test_collate_marks_first_pieces_and_ignores_padding():
    tok = WordPiece(VOCAB)
    sentences = [nd.Sentence(["U.S.", "troops"], ["I-LOC", "O"], [1, 2]), nd.Sentence(["hi"], ["O"], [4])]
    features, _ = nd.make_features(sentences, tok, 128, {"I-LOC": 0, "O": 1})
    b = nd.collate(features)
    assert b["input_ids"].shape == (2, 7)  # [CLS] u . s . troops [SEP]; [CLS] hi [SEP] and padding
    assert b["first"].tolist() == [[False, True, False, False, False, True, False],
                                   [False, True, False, False, False, False, False]]
    assert b["labels"][b["first"]].tolist() == [0, 1, 1]
    assert (b["labels"][~b["first"]] == nd.IGNORE).all() and b["attention_mask"].sum().item() == 7 + 3


def test_conll_and_jsonl_reading(tmp_path):
    conll = tmp_path / "a.conll"
    conll.write_bytes(b"-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\r\nrejects VBZ I-VP O\n\n\n"
                      b"-DOCSTART- -X- O O\nPeter NNP I-NP B-PER\nBlackburn NNP I-NP I-PER")
    s = nd.read_tagged(conll)
    assert [(x.words, x.tags, x.lines) for x in s] == [
        (["EU", "rejects"], ["I-ORG", "O"], [3, 4]), (["Peter", "Blackburn"], ["B-PER", "I-PER"], [8, 9])]
    assert [x.tags for x in nd.read_tagged(conll, tag_column=3)] == [["I-NP", "I-VP"], ["I-NP", "I-NP"]]
    words_only = tmp_path / "w.txt"
    words_only.write_text("EU\nrejects\n\nPeter\n")
    assert [(x.words, x.tags) for x in nd.read_tagged(words_only, labelled=False)] == [(["EU", "rejects"], None),
                                                                                       (["Peter"], None)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}) + "\n\n"
                     + json.dumps({"tokens": ["Peter"], "tags": ["B-PER"]}) + "\n")
    assert [(x.words, x.tags, x.lines) for x in nd.read_tagged(jsonl)] == [
        (["EU", "rejects"], ["B-ORG", "O"], [1, 1]), (["Peter"], ["B-PER"], [3])]
    assert nd.file_format(jsonl) == "jsonl" and nd.file_format(conll) == "conll"
    assert nd.file_format(conll, "jsonl") == "jsonl"
    assert nd.tag_scheme(nd.read_tagged(jsonl), jsonl) == "IOB2"
    with pytest.raises(BertkitError, match=r"a.jsonl: --tag_column applies to CoNLL files"):
        nd.read_tagged(jsonl, tag_column=2)


def test_conll_tag_column_and_bad_tags(tmp_path):
    f = tmp_path / "b.txt"
    f.write_text("EU I-ORG NNP\nrejects O VBZ\n")
    assert nd.read_tagged(f, tag_column=2)[0].tags == ["I-ORG", "O"]
    with pytest.raises(BertkitError, match=r"b.txt:1:10: tag 'NNP' is not O, B-TYPE or I-TYPE"):
        nd.read_tagged(f)
    with pytest.raises(BertkitError, match=r"b.txt:1: --tag_column 4, but the lines have 3 fields"):
        nd.read_tagged(f, tag_column=4)


def test_tag_scheme_given_and_counted(tmp_path):
    iob2 = [nd.Sentence(["a", "b", "c"], ["B-PER", "I-PER", "O"], [1, 2, 3]),
            nd.Sentence(["d", "e"], ["O", "I-LOC"], [5, 6])]
    warned = []
    assert nd.tag_scheme(iob2, "f", "auto", warned.append) == "IOB2"  # one B- start against one I- start: IOB2
    assert "f:6: 1 tag(s) do not fit IOB2" in warned[0]
    warned.clear()
    assert nd.tag_scheme(iob2, "f", "IOB1", warned.append) == "IOB1"
    assert "f:1: 1 tag(s) do not fit IOB1" in warned[0]
