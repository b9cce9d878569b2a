"""Entity-level scores of tag sequences, counted as CoNLL's `conlleval` script counts them (and
seqeval does in its default mode, which follows it), for tags in IOB1 or IOB2.

A tag is `O`, `B-TYPE` or `I-TYPE`. The chunks (entities) are read the same way in both schemes,
by conlleval's rules: a chunk starts at a B- tag, at an I- tag after O, and at any tag whose type
differs from the tag before; it ends before O, before a B- tag, and before a tag of another type.
So `I-PER I-PER` is one PER chunk, `I-PER B-PER` two (IOB1), and `O I-LOC` a LOC chunk even where
IOB2 would call the I- invalid. A sentence's end ends its chunks. A chunk is counted correct when
the gold and predicted ones have the same type, start and end; precision and recall are micro
averages over the chunks of all types, and a ratio over zero chunks is 0.

The schemes differ in where B- may stand: IOB1 (the original CoNLL-2003 files) puts B- only on the
first word of a chunk that directly follows a chunk of the same type, and starts every other chunk
with I-; IOB2 starts every chunk with B-. `scheme_evidence` finds the tags that only one of them
allows.
"""

from __future__ import annotations

from typing import Sequence

SCHEMES = ("IOB1", "IOB2")


def split_tag(tag: str) -> tuple[str, str]:
    """("O", "") for O, else (prefix, type): B-PER -> ("B", "PER")."""
    if tag == "O":
        return "O", ""
    return tag[0], tag[2:]


def is_tag(tag: str) -> bool:
    """O, or B-/I- followed by a type."""
    return tag == "O" or (len(tag) > 2 and tag[0] in "BI" and tag[1] == "-")


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The chunks of one sentence's tags as (type, first word, one past the last word)."""
    out = []
    start, prev_prefix, prev_type = 0, "O", ""
    for i, tag in enumerate([*tags, "O"]):  # the O after the end closes the last chunk
        prefix, type_ = split_tag(tag)
        if prev_prefix != "O" and (prefix != "I" or type_ != prev_type):
            out.append((prev_type, start, i))
        if prefix != "O" and (prefix == "B" or prev_prefix == "O" or type_ != prev_type):
            start = i
        prev_prefix, prev_type = prefix, type_
    return out


def scheme_evidence(tags: Sequence[str]) -> tuple[list[int], list[int]]:
    """(the words only IOB1 allows, the words only IOB2 allows) in one sentence: an I- tag that
    starts a chunk is IOB1's, a B- tag that does not follow a chunk of its type IOB2's."""
    iob1, iob2 = [], []
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate(tags):
        prefix, type_ = split_tag(tag)
        follows_same = prev_prefix != "O" and prev_type == type_
        if prefix == "I" and not follows_same:
            iob1.append(i)
        elif prefix == "B" and not follows_same:
            iob2.append(i)
        prev_prefix, prev_type = prefix, type_
    return iob1, iob2


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def score(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Entity precision, recall and F1 (micro), token accuracy, and the same per entity type, of
    the `predicted` tags of each sentence against the `gold` ones:

    {"precision", "recall", "f1", "accuracy", "entities" (gold chunks), "predicted_entities",
     "correct_entities", "tokens", "per_type": {TYPE: {"precision", "recall", "f1", "support"
     (gold chunks), "predicted"}}}, with a type listed when it is in the gold or the predictions."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold ones")
    gold_chunks, pred_chunks = set(), set()
    tokens = right = 0
    for s, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {s}: {len(p)} predicted tags for {len(g)} gold ones")
        gold_chunks.update((s, *c) for c in chunks(g))
        pred_chunks.update((s, *c) for c in chunks(p))
        tokens += len(g)
        right += sum(a == b for a, b in zip(g, p))
    correct = gold_chunks & pred_chunks
    per_type = {}
    for t in sorted({c[1] for c in gold_chunks | pred_chunks}):
        n_gold = sum(c[1] == t for c in gold_chunks)
        n_pred = sum(c[1] == t for c in pred_chunks)
        per_type[t] = {**_prf(sum(c[1] == t for c in correct), n_pred, n_gold), "support": n_gold,
                       "predicted": n_pred}
    return {**_prf(len(correct), len(pred_chunks), len(gold_chunks)), "accuracy": right / tokens if tokens else 0.0,
            "entities": len(gold_chunks), "predicted_entities": len(pred_chunks), "correct_entities": len(correct),
            "tokens": tokens, "per_type": per_type}
