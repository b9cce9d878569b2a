"""SQuAD data: windows, max context, training targets and post-processing checked against hand
derivations from the definition (Google's run_squad.py semantics), a round trip over the real dev
file, and bad input."""

import json
import re
import string
import time

import numpy as np
import pytest
import torch

from bertkit import BertkitError
from bertkit.tasks.finetune import squad_data as squad
from bertkit.tasks.finetune import squad_predict
from bertkit.tokenizer import WordPiece
from conftest import DATA, VOCAB

DEV = DATA / "squad" / "dev-v1.1-even-articles.json"
WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen twenty").split()  # one WordPiece token each
NUMBERS = " ".join(WORDS)
SMALL = dict(max_seq_length=16, doc_stride=4, max_query_length=8)


@pytest.fixture(scope="module")
def tok():
    return WordPiece(VOCAB)


def write_squad(tmp_path, paragraphs, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def qa(qid, question, context=None, answer=None, start=None, impossible=None):
    q = {"id": qid, "question": question, "answers": []}
    if answer is not None:
        q["answers"] = [{"text": answer, "answer_start": context.index(answer) if start is None else start}]
    if impossible is not None:
        q["is_impossible"] = impossible
    return q


def numbers_example(tmp_path, tok, is_training=False, answer="ten eleven"):
    path = write_squad(tmp_path, [{"context": NUMBERS, "qas": [qa("q", "which number", NUMBERS, answer)]}])
    examples = squad.read_squad(path, is_training)
    return examples, squad.make_features(examples, tok, is_training=is_training, **SMALL)


def pos(feature, word):
    """The sequence position of `word`'s (first) token in a window."""
    return feature.context_start + feature.token_to_word.index(word)


def logits(features, start=(), end=(), base=-100.0):
    """Logit rows at `base` everywhere but the given (window, word, value) entries; a word of None
    means [CLS]."""
    s = [np.full(len(f.input_ids), base) for f in features]
    e = [np.full(len(f.input_ids), base) for f in features]
    for rows, picks in ((s, start), (e, end)):
        for w, word, value in picks:
            rows[w][0 if word is None else pos(features[w], word)] = value
    return s, e


# ---- windows, max context, targets ------------------------------------------------------------

def test_windows_and_max_context_by_hand(tmp_path, tok):
    examples, feats = numbers_example(tmp_path, tok, is_training=True)
    # The question is 2 tokens, so a window holds 16 - 2 - 3 = 11 context tokens; windows start
    # every 4 tokens: 0, 4, 8, and 12, which reaches the 20th and last token.
    assert [(f.token_to_word[0], len(f.token_to_word)) for f in feats] == [(0, 11), (4, 11), (8, 11), (12, 8)]
    assert feats[0].input_ids[:4] == [tok.cls_id, tok.vocab["which"], tok.vocab["number"], tok.sep_id]
    assert feats[0].input_ids[-1] == tok.sep_id and len(feats[0].input_ids) == 16
    assert feats[0].token_type_ids == [0] * 4 + [1] * 12
    assert feats[3].tokens == ["[CLS]", "which", "number", "[SEP]", *WORDS[12:], "[SEP]"]
    # Score of token p in window [a, b]: min(p - a, b - p) + 0.01 * (b - a + 1). E.g. token 7:
    # window 0 gives min(7, 3) + 0.11 = 3.11, window 1 min(3, 7) + 0.11 = 3.11: a tie, the first
    # wins. Token 15: window 2 gives min(7, 3) + 0.11 = 3.11, window 3 min(3, 4) + 0.08 = 3.08.
    owner = [0] * 8 + [1] * 4 + [2] * 4 + [3] * 4
    for w, f in enumerate(feats):
        assert f.max_context == [owner[word] == w for word in f.token_to_word]
    # "ten eleven" is tokens 9-10: position 4 + 9 - window start, where the window holds both.
    assert [(f.start_position, f.end_position) for f in feats] == [(13, 14), (9, 10), (5, 6), (0, 0)]
    assert feats[1].tokens[9:11] == ["ten", "eleven"]


def test_improve_span_narrows_to_the_answer_tokens(tmp_path, tok):
    context = "The leader was John Smith (1895-1943). The Japanese electronics industry is large."
    path = write_squad(tmp_path, [{"context": context, "qas": [
        qa("born", "when was he born", context, "1895"),
        qa("japan", "which country", context, "Japan")]}])
    examples = squad.read_squad(path, is_training=True)
    born, japan = squad.make_features(examples, tok, is_training=True)
    # The word "(1895-1943)." is the tokens ( 1895 - 1943 ) . and the answer is only 1895.
    assert born.tokens[born.start_position: born.end_position + 1] == ["1895"]
    # "Japan" is part of the single token "japanese": no sub-span matches, the word is kept.
    assert japan.tokens[japan.start_position: japan.end_position + 1] == ["japanese"]
    s = [np.where(np.arange(len(f.input_ids)) == f.start_position, 10.0, -10.0) for f in (born, japan)]
    e = [np.where(np.arange(len(f.input_ids)) == f.end_position, 10.0, -10.0) for f in (born, japan)]
    predictions, _, _ = squad_predict.postprocess(examples, [born, japan], s, e)
    assert predictions == {"born": "1895", "japan": "Japanese"}


def test_impossible_questions_point_at_cls(tmp_path, tok):
    path = write_squad(tmp_path, [{"context": NUMBERS, "qas": [qa("q", "which number", impossible=True)]}])
    examples = squad.read_squad(path, is_training=True, version_2=True)
    assert examples[0].is_impossible
    feats = squad.make_features(examples, tok, is_training=True, **SMALL)
    assert len(feats) == 4 and all((f.start_position, f.end_position) == (0, 0) for f in feats)


# ---- post-processing --------------------------------------------------------------------------

def test_max_context_decides_between_overlapping_windows(tmp_path, tok):
    examples, feats = numbers_example(tmp_path, tok)
    # "ten eleven" (words 9-10) is inside windows 0, 1 and 2, but word 9 has its max context in
    # window 1. Windows 0 and 2 score it far higher; only window 1's scores may count.
    s, e = logits(feats, start=[(0, 9, 20.0), (1, 9, 8.0), (2, 9, 30.0)],
                  end=[(0, 10, 20.0), (1, 10, 8.0), (2, 10, 30.0)])
    predictions, nbest, null_odds = squad_predict.postprocess(examples, feats, s, e)
    assert predictions == {"q": "ten eleven"} and null_odds == {}
    top = nbest["q"][0]
    assert (top["text"], top["start_logit"], top["end_logit"]) == ("ten eleven", 8.0, 8.0)


@pytest.mark.parametrize("start, end, expected, logit", [
    # the first context token of the first window
    ([(0, 0, 5.0)], [(0, 0, 5.0)], "one", 5.0),
    # the last context token, just before the final [SEP]
    ([(3, 19, 5.0)], [(3, 19, 5.0)], "twenty", 5.0),
    # a span ending on window 1's last token (word 14), starting where window 1 has max context
    ([(1, 10, 5.0)], [(1, 14, 5.0)], "eleven twelve thirteen fourteen fifteen", 5.0),
    # window 1's first token (word 4) belongs to window 0: window 1's higher score does not count
    ([(1, 4, 30.0), (0, 4, 3.0)], [(1, 4, 30.0), (0, 4, 3.0)], "five", 3.0),
    # words 8-13 lie whole only in windows 1 and 2 (they straddle window 0's end); word 8 belongs
    # to window 1, so window 2's higher score does not count
    ([(1, 8, 5.0), (2, 8, 50.0)], [(1, 13, 5.0), (2, 13, 50.0)],
     "nine ten eleven twelve thirteen fourteen", 5.0),
])
def test_answers_at_window_edges(tmp_path, tok, start, end, expected, logit):
    examples, feats = numbers_example(tmp_path, tok)
    s, e = logits(feats, start, end)
    predictions, nbest, _ = squad_predict.postprocess(examples, feats, s, e)
    assert predictions["q"] == expected
    top = nbest["q"][0]
    assert (top["text"], top["start_logit"], top["end_logit"]) == (expected, logit, logit)


def test_max_answer_length_and_order_of_span(tmp_path, tok):
    examples, feats = numbers_example(tmp_path, tok)
    # start at word 10, end at word 9 (before the start): invalid; the best valid pair is taken.
    s, e = logits(feats, start=[(1, 10, 9.0), (1, 5, 1.0)], end=[(1, 9, 9.0), (1, 6, 1.0)])
    assert squad_predict.postprocess(examples, feats, s, e)[0]["q"] != "eleven ten"
    # the span 10..14 is 5 tokens: allowed at max_answer_length 5, not at 4
    s, e = logits(feats, start=[(1, 10, 5.0)], end=[(1, 14, 5.0)])
    assert squad_predict.postprocess(examples, feats, s, e, max_answer_length=5)[0]["q"] == (
        "eleven twelve thirteen fourteen fifteen")
    assert squad_predict.postprocess(examples, feats, s, e, max_answer_length=4)[0]["q"] != (
        "eleven twelve thirteen fourteen fifteen")


TEXT = "The Apollo-11 crew (Armstrong, Aldrin and Collins) landed in 1969. Café Müller foo\u200bbar"


@pytest.mark.parametrize("first, last, expected", [
    ("apollo", "11", "Apollo-11"),      # punctuation inside a word, case restored
    ("armstrong", "armstrong", "Armstrong"),  # the word "(Armstrong," trimmed to the token
    ("armstrong", "##in", "Armstrong, Aldrin"),  # across words, word pieces joined
    ("1969", "1969", "1969"),          # "1969." without the full stop
    ("cafe", "muller", "Café Müller"),  # accents stripped by the uncased tokenizer come back
    ("foo", "##bar", "foo\u200bbar"),   # the zero-width space vanishes in tokenization: the
                                        # alignment fails and the original word is given whole
])
def test_final_text_maps_back_to_the_original(tmp_path, tok, first, last, expected):
    path = write_squad(tmp_path, [{"context": TEXT, "qas": [qa("q", "who")]}])
    examples = squad.read_squad(path, is_training=False)
    (f,) = squad.make_features(examples, tok)
    s = np.full(len(f.input_ids), -10.0)
    e = np.full(len(f.input_ids), -10.0)
    s[f.tokens.index(first)] = 10.0
    e[f.tokens.index(last)] = 10.0
    predictions, _, _ = squad_predict.postprocess(examples, [f], [s], [e], lowercase=True)
    assert predictions["q"] == expected


def test_version_2_null_answer_and_threshold(tmp_path, tok):
    context = "Paris is the capital of France ."
    path = write_squad(tmp_path, [{"context": context, "qas": [qa("q", "what is the capital", impossible=True)]}])
    examples = squad.read_squad(path, is_training=False, version_2=True)
    (f,) = squad.make_features(examples, tok)
    s, e = logits([f], start=[(0, None, 5.0), (0, 0, 4.0)], end=[(0, None, 5.0), (0, 0, 4.0)])
    # null score 5 + 5 = 10, best span "Paris" 4 + 4 = 8: the difference is 2.
    for threshold, expected in ((0.0, ""), (1.9, ""), (2.0, "Paris"), (2.5, "Paris")):
        predictions, nbest, null_odds = squad_predict.postprocess(
            examples, [f], s, e, version_2=True, null_score_diff_threshold=threshold)
        assert predictions["q"] == expected and null_odds == {"q": 2.0}
    texts = [n["text"] for n in nbest["q"]]
    assert texts[:2] == ["", "Paris"]
    # probabilities: a softmax over start + end logits; the rest of the n-best is at -96 or less
    total = np.exp(10.0) + np.exp(8.0)
    assert nbest["q"][0]["probability"] == pytest.approx(np.exp(10.0) / total, rel=1e-9)
    assert nbest["q"][1]["probability"] == pytest.approx(np.exp(8.0) / total, rel=1e-9)
    # without version 2 the [CLS] scores are ignored
    assert squad_predict.postprocess(examples, [f], s, e)[0]["q"] == "Paris"


def test_version_2_null_score_is_the_lowest_over_windows(tmp_path, tok):
    examples, feats = numbers_example(tmp_path, tok)
    # [CLS] start + end per window: 6, 2, 8, 4 -> the null score is 2 (window 1).
    cls = [(0, 3.0), (1, 1.0), (2, 4.0), (3, 2.0)]
    s, e = logits(feats, start=[(w, None, v) for w, v in cls] + [(1, 9, 2.0)],
                  end=[(w, None, v) for w, v in cls] + [(1, 10, 2.0)])
    predictions, nbest, null_odds = squad_predict.postprocess(examples, feats, s, e, version_2=True)
    assert predictions["q"] == "ten eleven" and null_odds["q"] == 2.0 - 4.0
    (null,) = [n for n in nbest["q"] if n["text"] == ""]
    assert (null["start_logit"], null["end_logit"]) == (1.0, 1.0)


def test_write_predictions(tmp_path):
    out = tmp_path / "out"
    paths = squad_predict.write_predictions(out, {"q": "Paris"}, {"q": [{"text": "Paris"}]})
    assert [p.name for p in paths] == ["predictions.json", "nbest_predictions.json"]
    assert json.loads((out / "predictions.json").read_text()) == {"q": "Paris"}
    squad_predict.write_predictions(out, {"q": ""}, {"q": []}, {"q": 2.5})
    assert json.loads((out / "null_odds.json").read_text()) == {"q": 2.5}
    assert sorted(p.name for p in out.iterdir()) == ["nbest_predictions.json", "null_odds.json",
                                                     "predictions.json"]


def test_collate(tmp_path, tok):
    path = write_squad(tmp_path, [{"context": NUMBERS, "qas": [qa("q", "which number", NUMBERS, "ten")]},
                                  {"context": "one two", "qas": [qa("r", "which", "one two", "two")]}])
    examples = squad.read_squad(path, is_training=True)
    feats = squad.make_features(examples, tok, is_training=True)
    batch = squad.collate(feats, pad_to_multiple_of=8)
    n0, n1 = len(feats[0].input_ids), len(feats[1].input_ids)  # 4 + 20 + 1 and 3 + 2 + 1
    assert (n0, n1) == (25, 6) and batch["input_ids"].shape == (2, 32)
    assert batch["attention_mask"].sum(1).tolist() == [25, 6]
    assert batch["input_ids"][1, 6:].eq(0).all() and batch["token_type_ids"][1].tolist()[:6] == [0, 0, 0, 1, 1, 1]
    assert batch["start_positions"].tolist() == [4 + 9, 3 + 1] == batch["end_positions"].tolist()
    assert batch["feature_index"].tolist() == [0, 1]
    assert all(t.dtype == torch.int64 for t in batch.values())
    assert "start_positions" not in squad.collate(squad.make_features(examples, tok))


# ---- the real dev file ------------------------------------------------------------------------

def normalize(text):
    """The official SQuAD answer normalisation, written out here independently of squad_metric."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def test_round_trip_on_the_dev_file(tok):
    """Training targets of every answerable question, turned into one-hot logits in the windows that
    hold the answer, come back through post-processing as the gold text (normalised). Google's
    pipeline loses a few answers to tokenization (an answer inside a longer word, answers longer
    than max_answer_length), so the bar is 99%."""
    t0 = time.perf_counter()
    examples = squad.read_squad(DEV, is_training=True)
    feats = squad.make_features(examples, tok, is_training=True)
    elapsed = time.perf_counter() - t0
    assert len(examples) + len(examples.skipped) == 5397
    assert elapsed < 30, f"reading and windowing 5397 questions took {elapsed:.1f} s"
    s, e = [], []
    for f in feats:
        s.append(np.full(len(f.input_ids), -10.0))
        e.append(np.full(len(f.input_ids), -10.0))
        if f.start_position:
            s[-1][f.start_position] = e[-1][f.end_position] = 10.0
    predictions, _, _ = squad_predict.postprocess(examples, feats, s, e)
    same = sum(normalize(predictions[ex.qid]) == normalize(ex.answer_text) for ex in examples)
    rate = same / len(examples)
    print(f"round trip: {same} of {len(examples)} answers exact after normalisation ({rate:.4%}); "
          f"{len(examples.skipped)} skipped; features in {elapsed:.2f} s")
    assert rate >= 0.99


def test_prediction_features_cover_every_dev_question(tok):
    examples = squad.read_squad(DEV, is_training=False)
    feats = squad.make_features(examples, tok)
    assert len(examples) == 5397 and {f.example_index for f in feats} == set(range(5397))
    assert max(len(f.input_ids) for f in feats) == 384
    assert all(f.start_position is None for f in feats)
    # Each context token has its max context in exactly one window.
    owned = {}
    for f in feats:
        n = sum(f.max_context)
        owned[f.example_index] = owned.get(f.example_index, 0) + n
    for ei, ex in enumerate(examples[:200]):
        n_tokens = sum(len(tok.encode(w)) for w in ex.words)
        assert owned[ei] == n_tokens


# ---- bad input --------------------------------------------------------------------------------

def test_answer_start_that_does_not_match_is_a_counted_skip(tmp_path, tok):
    context = "Denver Broncos beat the Carolina Panthers in Santa Clara."
    path = write_squad(tmp_path, [{"context": context, "qas": [
        qa("good", "who won", context, "Denver Broncos"),
        qa("moved", "who lost", context, "Carolina Panthers", start=0),
        qa("outside", "where", context, "Santa Clara", start=200),
        qa("negative", "where", context, "Santa Clara", start=-3)]}])
    examples = squad.read_squad(path, is_training=True)
    assert [ex.qid for ex in examples] == ["good"]
    assert [qid for qid, _ in examples.skipped] == ["moved", "outside", "negative"]
    assert "not found at answer_start 0" in examples.skipped[0][1]
    assert "outside the context" in examples.skipped[1][1]
    assert len(squad.read_squad(path, is_training=False)) == 4  # prediction keeps every question


def test_empty_context(tmp_path, tok):
    path = write_squad(tmp_path, [{"context": "", "qas": [qa("a", "what", "x", "x", start=0)]},
                                  {"context": "  ", "qas": [qa("b", "what", impossible=True)]}])
    train = squad.read_squad(path, is_training=True, version_2=True)
    assert [ex.qid for ex in train] == ["b"] and [q for q, _ in train.skipped] == ["a"]
    feats = squad.make_features(train, tok, is_training=True)
    assert len(feats) == 1 and (feats[0].start_position, feats[0].end_position) == (0, 0)
    assert feats[0].tokens == ["[CLS]", "what", "[SEP]", "[SEP]"]
    examples = squad.read_squad(path, is_training=False)
    feats = squad.make_features(examples, tok)
    s = [np.zeros(len(f.input_ids)) for f in feats]
    predictions, nbest, _ = squad_predict.postprocess(examples, feats, s, s)
    assert predictions == {"a": "", "b": ""} and nbest["a"][0]["text"] == ""


def test_question_longer_than_max_seq_length(tmp_path, tok):
    question = " ".join(["why"] * 200) + " ?"
    path = write_squad(tmp_path, [{"context": NUMBERS, "qas": [qa("q", question, NUMBERS, "twelve")]}])
    examples = squad.read_squad(path, is_training=True)
    feats = squad.make_features(examples, tok, max_seq_length=32, doc_stride=8, max_query_length=8,
                                is_training=True)
    assert all(len(f.input_ids) <= 32 and f.tokens[1:10] == ["why"] * 8 + ["[SEP]"] for f in feats)
    # 32 - 8 - 3 = 21 context tokens: one window holds all 20 words; "twelve" is word 11.
    assert len(feats) == 1 and feats[0].start_position == 10 + 11
    with pytest.raises(BertkitError, match="--max_seq_length"):
        squad.make_features(examples, tok, max_seq_length=11, max_query_length=8)


@pytest.mark.parametrize("text, message", [
    ('{"data": [{"paragraphs": [\n{"context": "x", "qas": [}]}]}', r"data\.json:2:26: malformed JSON"),
    ('[1, 2]', r"not a SQuAD file"),
    ('{"data": [{"paragraphs": [{"qas": []}]}]}', r"article 0, paragraph 0 has no 'context'"),
    ('{"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "q7", "answers": []}]}]}]}',
     r"question q7 has no 'question'"),
    ('{"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "q7", "question": "?", "answers": [1]}]}]}]}',
     r"question q7: 'answers' must be a list"),
    ('{"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "d", "question": "?"}, '
     '{"id": "d", "question": "?"}]}]}]}', r"question id d appears twice"),
])
def test_malformed_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "data.json"
    path.write_text(text)
    with pytest.raises(BertkitError, match=message) as e:
        squad.read_squad(path, is_training=False)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(BertkitError, match="no such file"):
        squad.read_squad(tmp_path / "none.json", is_training=True)
