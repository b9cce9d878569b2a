"""Pretraining instances from tokenized documents, by the algorithm of Google's
`create_pretraining_data.py` (google-research/bert): fill a chunk of whole sentences up to a target
length (the full length, or with odds `short_seq_prob` a random shorter one, drawn per document),
cut it at a random sentence boundary into A and B, and half the time replace B with sentences from
a random other document, putting the sentences that B would have used back for the next chunk.
Then trim the longer of A and B from a random end until the pair fits.

Without next-sentence prediction (`create_blocks`, `bertkit data create --no_nsp`): blocks of one
segment filled to max_seq_length - 2 tokens with whole consecutive sentences, crossing from one
document into the next with a [SEP] between them: RoBERTa's FULL-SENTENCES inputs (Liu et al.
2019, section 4.2), which MosaicBERT also trains on. Full blocks waste no compute on padding or on a
second-segment task.

Masks are not chosen here: `masking.py` draws them when an instance is loaded.
"""

from __future__ import annotations

import random

import numpy as np

from bertkit.tokenizer import truncate_seq_pair

Document = list[list[int]]  # sentences of token ids
Instance = tuple[list[int], list[int] | None, bool]  # (segment A, segment B or None for one segment, B is random)


def create_instances(documents: list[Document], rng: random.Random, max_seq_length: int,
                     short_seq_prob: float = 0.1, dupe_factor: int = 1) -> list[Instance]:
    """All instances of `dupe_factor` passes over the documents, shuffled. `documents` must hold
    no empty document and no empty sentence."""
    documents = list(documents)
    rng.shuffle(documents)
    instances: list[Instance] = []
    for _ in range(dupe_factor):
        for index in range(len(documents)):
            instances += instances_from_document(documents, index, rng, max_seq_length, short_seq_prob)
    rng.shuffle(instances)
    return instances


def instances_from_document(documents: list[Document], index: int, rng: random.Random,
                            max_seq_length: int, short_seq_prob: float) -> list[Instance]:
    document = documents[index]
    max_tokens = max_seq_length - 3  # room for [CLS], [SEP], [SEP]
    # Mostly fill the whole sequence; sometimes aim shorter, so that the model also sees the short
    # sequences it will meet when fine-tuned. Google draws this once per document.
    target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    out: list[Instance] = []
    chunk: list[list[int]] = []
    chunk_tokens = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_tokens += len(document[i])
        if i == len(document) - 1 or chunk_tokens >= target:
            a_sentences = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_sentences] for t in s]
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random = True
                b = _random_segment(documents, index, rng, target - len(a))
                i -= len(chunk) - a_sentences  # the sentences B did not use go back for the next chunk
            else:
                is_random = False
                b = [t for s in chunk[a_sentences:] for t in s]
            truncate_seq_pair(a, b, max_tokens, rng)
            out.append((a, b, is_random))
            chunk, chunk_tokens = [], 0
        i += 1
    return out


def _random_segment(documents: list[Document], index: int, rng: random.Random, length: int) -> list[int]:
    """Whole sentences from a random point of a random other document, at least `length` tokens
    when the document has them. With one document only, it falls back to the same one (as Google's
    script does after ten tries)."""
    for _ in range(10):
        other = rng.randint(0, len(documents) - 1)
        if other != index:
            break
    document = documents[other]
    segment: list[int] = []
    for sentence in document[rng.randint(0, len(document) - 1):]:
        segment += sentence
        if len(segment) >= length:
            break
    return segment


def create_blocks(documents: list[Document], rng: random.Random, max_seq_length: int, sep_id: int,
                  dupe_factor: int = 1) -> list[Instance]:
    """One-segment instances (B None) of `dupe_factor` passes over the documents, shuffled. Each
    pass takes the documents in a new random order and fills blocks of max_seq_length - 2 tokens
    (room for [CLS] and the closing [SEP]) with whole sentences: a sentence that does not fit in
    what is left of a block starts the next one; where one document ends and the next begins, a
    [SEP] goes between them (none at the end of a block). A sentence longer than a block is cut
    into block-sized pieces, so no token is lost."""
    room = max_seq_length - 2
    blocks: list[list[int]] = []
    for _ in range(dupe_factor):
        order = list(range(len(documents)))
        rng.shuffle(order)
        block: list[int] = []
        for d in order:
            joins = bool(block)  # this document goes on in an open block: a separator before its first sentence
            for sentence in documents[d]:
                sep = [sep_id] if joins else []
                if block and len(block) + len(sep) + len(sentence) > room:
                    blocks.append(block)
                    block, sep = [], []
                while len(sentence) > room:
                    blocks.append(sentence[:room])
                    sentence = sentence[room:]
                block += sep + sentence
                joins = False
        if block:
            blocks.append(block)
    rng.shuffle(blocks)
    return [(block, None, False) for block in blocks]


def pack_instances(instances: list[Instance], cls_id: int, sep_id: int, dtype: np.dtype
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lay instances end to end as `[CLS] A [SEP] B [SEP]`, or `[CLS] A [SEP]` where B is None.

    Returns tokens (T,) dtype, offsets (n+1,) int64, segment_a (n,) uint16 (length of [CLS] A [SEP]),
    next_sentence (n,) uint8.
    """
    flat: list[int] = []
    lengths = np.empty(len(instances), dtype=np.int64)
    segment_a = np.empty(len(instances), dtype=np.uint16)
    next_sentence = np.empty(len(instances), dtype=np.uint8)
    for k, (a, b, is_random) in enumerate(instances):
        flat.append(cls_id)
        flat += a
        flat.append(sep_id)
        if b is not None:
            flat += b
            flat.append(sep_id)
        lengths[k] = len(a) + 2 + (len(b) + 1 if b is not None else 0)
        segment_a[k] = len(a) + 2
        next_sentence[k] = is_random
    offsets = np.zeros(len(instances) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.array(flat, dtype=dtype), offsets, segment_a, next_sentence
