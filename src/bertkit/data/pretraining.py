"""The pretraining dataset that training reads, and its collate function.

    ds = PretrainingDataset("data/seq_len_128/wikicorpus_en/training", max_seq_length=128,
                            max_predictions_per_seq=20, vocab_size=30522, special_ids=(101, 102, 103, 0))
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=4,
                        collate_fn=functools.partial(collate, max_predictions_per_seq=20))
    for epoch in ...: ds.set_epoch(epoch)  # new masks each epoch (bertkit shards)

Sources: bertkit datasets (folders with manifest.json), Google-format TFRecord files (plain or
GZIP), folders of TFRecords, or a list of any of these, read as one dataset in the order given.
bertkit shards hold unmasked instances: masks are drawn on load from (seed, epoch, index).
TFRecords hold masks chosen when they were written; they are used as they are.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bertkit import BertkitError
from bertkit.data import shards as shardfile
from bertkit.data.masking import instance_rng, mask_tokens, word_starts
from bertkit.data.tfrecord import FEATURES, TFRecordFile


class PretrainingDataset:
    """A map-style dataset (works as a torch.utils.data.Dataset) of unpadded pretraining examples.

    Each item: input_ids (L,) int32, segment_ids (L,) int8, masked_lm_positions (n,) int32,
    masked_lm_ids (n,) int32, next_sentence_labels () int64 (1 = B is random), n <= max_predictions_per_seq.
    `next_sentence_pairs` is False for a dataset made with --no_nsp: one segment (segment ids 0),
    next-sentence label 0, for masked-LM training alone.

    masked_lm_prob: None takes each bertkit dataset's own (`create --masked_lm_prob`, 0.15 by
    default); a number applies to all. whole_word_mask: True, or the dataset's manifest says so.

    Checks on open: bertkit shards' sizes against their manifests, and every TFRecord's CRCs. A
    bertkit shard's crc32c is checked the first time this process reads from it (so before it is
    trained on); `verify()` checks them all at once (sha256 with full=True). With `skip_corrupt`,
    corrupt TFRecord records and bertkit shards that fail their checksum are left out (bertkit
    shards are then checked on open) and counted in `corrupt_skipped`.
    """

    def __init__(self, path: str | os.PathLike | list, max_seq_length: int, max_predictions_per_seq: int,
                 vocab_size: int, special_ids: tuple[int, int, int, int], seed: int = 12345,
                 masked_lm_prob: float | None = None, whole_word_mask: bool = False, skip_corrupt: bool = False,
                 word_start: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None):
        self.max_seq_length = max_seq_length
        self.max_predictions = max_predictions_per_seq
        self.vocab_size = vocab_size
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = special_ids
        self.seed = seed
        self.masked_lm_prob = masked_lm_prob
        self.whole_word_mask = whole_word_mask
        self.word_start = word_start
        self.skip_corrupt = skip_corrupt
        self.epoch = 0
        self.corrupt_skipped = 0
        self.sources: list[_Source] = []
        for p in path if isinstance(path, (list, tuple)) else [path]:
            self.sources += self._open(Path(p))
        if not self.sources:
            raise BertkitError(f"{path}: no pretraining data found")
        self._ends = np.cumsum([len(s) for s in self.sources])  # (S,) index just past each source
        if self._ends[-1] == 0:
            skipped = f" ({self.corrupt_skipped} skipped as corrupt)" if self.corrupt_skipped else ""
            raise BertkitError(f"{path}: holds no instances{skipped}")
        if self.corrupt_skipped:
            print(f"bertkit: skipped {self.corrupt_skipped} corrupt record(s) in {path}", file=sys.stderr)
        pairs = {s.next_sentence_pairs for s in self.sources}
        if len(pairs) > 1:
            raise BertkitError(f"{path}: mixes data with next-sentence pairs and data without (--no_nsp); "
                               "train on one kind")
        self.next_sentence_pairs = pairs.pop()  # False: one-segment instances, masked LM alone

    def _open(self, path: Path) -> list[_Source]:
        if shardfile.is_dataset(path):
            return [_ShardSource(self, path)]
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if any(shardfile.is_shard(p) for p in files):
                shardfile.read_manifest(path)  # raises: a folder of our shards without its manifest
            if not files:
                raise BertkitError(f"{path}: empty folder (no manifest.json, no TFRecord files)")
            return [self._open_tfrecord(p) for p in files]
        if not path.exists():
            raise BertkitError(f"{path}: no such file or folder")
        if shardfile.is_shard(path):  # one shard of a dataset: its manifest says how to read it
            return [_ShardSource(self, path.parent, only=path.name)]
        return [self._open_tfrecord(path)]

    def _open_tfrecord(self, path: Path) -> _Source:
        source = _TFRecordSource(path, self.skip_corrupt, self.max_seq_length, self.max_predictions,
                                 self.vocab_size)
        self.corrupt_skipped += source.records.corrupt_skipped
        return source

    def __len__(self) -> int:
        return int(self._ends[-1])

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose load-time masks to draw; TFRecords' fixed masks do not change."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} instances")
        s = int(np.searchsorted(self._ends, i, side="right"))
        local = i - (int(self._ends[s - 1]) if s else 0)
        return self.sources[s].item(local, i)

    def verify(self, full: bool = False) -> None:
        """Check every bertkit shard now: crc32c, or sha256 with `full`. Raises BertkitError."""
        for source in self.sources:
            if isinstance(source, _ShardSource):
                source.verify(full)

    def word_start_for(self, source: _ShardSource) -> np.ndarray | Callable | None:
        if not (self.whole_word_mask or source.manifest["settings"].get("whole_word_mask")):
            return None
        if self.word_start is not None:
            return self.word_start
        return source.word_start()


class _Source:
    next_sentence_pairs = True  # the instances are sentence pairs with a next-sentence label

    def __len__(self) -> int:
        raise NotImplementedError

    def item(self, local: int, index: int) -> dict[str, np.ndarray]:
        raise NotImplementedError


class _ShardSource(_Source):
    """A bertkit dataset folder: memory-mapped shards, masks drawn on load."""

    def __init__(self, owner: PretrainingDataset, folder: Path, only: str | None = None):
        self.owner = owner
        self.folder = folder
        self.manifest = shardfile.read_manifest(folder)
        settings = self.manifest["settings"]
        self._check_settings(settings)
        listed = [e for e in self.manifest["shards"] if only is None or e["file"] == only]
        if only is not None and not listed:
            raise BertkitError(f"{folder / only}: not listed in {folder / shardfile.MANIFEST}")
        entries = []
        for entry in listed:
            path = folder / entry["file"]
            if owner.skip_corrupt:  # check every shard now, so that a bad one can be left out whole
                problem = shardfile.check_shard(path, entry, full=False)
                if problem:
                    owner.corrupt_skipped += entry["instances"]
                    print(f"bertkit: skipping {problem}", file=sys.stderr)
                    continue
            try:
                size = path.stat().st_size
            except OSError:
                raise BertkitError(f"{path}: listed in {folder}/manifest.json but missing") from None
            if size != entry["bytes"]:
                raise BertkitError(f"{path}: {size} bytes, but {folder}/manifest.json says {entry['bytes']} "
                                   "(truncated or replaced)")
            entries.append(entry)
        self.entries = entries
        self._ends = np.cumsum([e["instances"] for e in entries], dtype=np.int64)
        self._verified = [owner.skip_corrupt] * len(entries)  # with skip_corrupt they were checked above
        self._shards: list[shardfile.Shard | None] = [None] * len(entries)
        self._word_start = None
        self.next_sentence_pairs = settings.get("next_sentence_pairs", True)
        self.masked_lm_prob = owner.masked_lm_prob
        if self.masked_lm_prob is None:
            self.masked_lm_prob = settings.get("masked_lm_prob", 0.15)

    def _check_settings(self, settings: dict) -> None:
        owner = self.owner
        ids = settings.get("special_ids", {})
        given = (owner.cls_id, owner.sep_id, owner.mask_id, owner.pad_id)
        if (ids.get("cls"), ids.get("sep"), ids.get("mask"), ids.get("pad")) != given:
            raise BertkitError(f"{self.folder}: made with special ids {ids}, not the (cls, sep, mask, pad) = "
                               f"{given} given")
        if settings.get("vocab_size", 0) > owner.vocab_size:
            raise BertkitError(f"{self.folder}: made with a vocab of {settings['vocab_size']} ids, more than "
                               f"the model's {owner.vocab_size}")
        if settings.get("max_seq_length", 0) > owner.max_seq_length:
            raise BertkitError(f"{self.folder}: instances up to {settings['max_seq_length']} tokens, longer "
                               f"than max_seq_length {owner.max_seq_length}")

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _shard(self, k: int) -> shardfile.Shard:
        shard = self._shards[k]
        if shard is None:
            path = self.folder / self.entries[k]["file"]
            if not self._verified[k]:
                problem = shardfile.check_shard(path, self.entries[k], full=False)
                if problem:
                    raise BertkitError(f"{problem} (corrupt shard; remake it or pass skip_corrupt/--skip-corrupt)")
                self._verified[k] = True
            shard = shardfile.Shard(path)
            shard.check_values(self.owner.vocab_size, self.owner.max_seq_length)
            if len(shard) != self.entries[k]["instances"]:
                raise BertkitError(f"{path}: holds {len(shard)} instances, the manifest says "
                                   f"{self.entries[k]['instances']}")
            self._shards[k] = shard  # only once checked: a caller that goes on after the error is not fooled
        return shard

    def verify(self, full: bool) -> None:
        for k, entry in enumerate(self.entries):
            problem = shardfile.check_shard(self.folder / entry["file"], entry, full)
            if problem:
                raise BertkitError(problem)
            self._verified[k] = True

    def word_start(self) -> np.ndarray:
        if self._word_start is None:
            from bertkit.tokenizer import load_vocab

            vocab = load_vocab(self.folder / self.manifest["settings"].get("vocab_file", "vocab.txt"))
            tokens = sorted(vocab, key=vocab.__getitem__)
            self._word_start = word_starts(tokens)
        return self._word_start

    def item(self, local: int, index: int) -> dict[str, np.ndarray]:
        k = int(np.searchsorted(self._ends, local, side="right"))
        shard = self._shard(k)
        ids, a_length, label = shard.instance(local - (int(self._ends[k - 1]) if k else 0))
        owner = self.owner
        ids = ids.astype(np.int32)
        segment_ids = np.zeros(len(ids), dtype=np.int8)
        segment_ids[a_length:] = 1
        masked, positions, labels = mask_tokens(
            ids, instance_rng(owner.seed, owner.epoch, index), vocab_size=owner.vocab_size,
            cls_id=owner.cls_id, sep_id=owner.sep_id, mask_id=owner.mask_id,
            max_predictions=owner.max_predictions, masked_lm_prob=self.masked_lm_prob,
            word_start=owner.word_start_for(self))
        return {"input_ids": masked, "segment_ids": segment_ids, "masked_lm_positions": positions.astype(np.int32),
                "masked_lm_ids": labels, "next_sentence_labels": np.array(label, dtype=np.int64)}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_shards"] = [None] * len(self._shards)  # reopened (not copied) in a DataLoader worker
        return state


class _TFRecordSource(_Source):
    """A Google-format TFRecord file, with the masks its writer chose."""

    def __init__(self, path: Path, skip_corrupt: bool, max_seq_length: int, max_predictions: int,
                 vocab_size: int):
        self.records = TFRecordFile(path, skip_corrupt)
        self.max_seq_length = max_seq_length
        self.max_predictions = max_predictions
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return len(self.records)

    def item(self, local: int, index: int) -> dict[str, np.ndarray]:
        ex = self.records.example(local)
        where = f"{self.records.path}: record {local}"
        for key in FEATURES:
            if key not in ex:
                raise BertkitError(f"{where}: lacks the feature {key} of Google's pretraining schema")
            if not isinstance(ex[key], np.ndarray) or (ex[key].dtype.kind != "i" and key != "masked_lm_weights"):
                raise BertkitError(f"{where}: feature {key} is not a list of integers")
        mask, weights = ex["input_mask"], ex["masked_lm_weights"]
        length, n = int(np.count_nonzero(mask)), int(np.count_nonzero(weights))
        if length > self.max_seq_length:
            raise BertkitError(f"{where}: {length} tokens, longer than max_seq_length {self.max_seq_length}")
        if n > self.max_predictions:
            raise BertkitError(f"{where}: {n} masked positions, more than max_predictions_per_seq "
                               f"{self.max_predictions} (made with other settings?)")
        # What the model would otherwise meet as an index error mid-run (or, on a GPU, a device assert).
        ids, segments = ex["input_ids"][:length], ex["segment_ids"][:length]
        positions, labels = ex["masked_lm_positions"][:n], ex["masked_lm_ids"][:n]
        problem = (
            "input_mask is not ones then zeros" if not (mask[:length] == 1).all() else
            "fewer input_ids or segment_ids than input_mask marks" if min(len(ids), len(segments)) < length else
            "fewer masked_lm_positions or masked_lm_ids than masked_lm_weights mark"
            if min(len(positions), len(labels)) < n else
            f"input_ids outside the vocabulary [0, {self.vocab_size})" if _outside(ids, 0, self.vocab_size) else
            "segment_ids other than 0 and 1" if _outside(segments, 0, 2) else
            "masked_lm_positions outside the sequence" if _outside(positions, 0, length) else
            f"masked_lm_ids outside the vocabulary [0, {self.vocab_size})" if _outside(labels, 0, self.vocab_size) else
            "next_sentence_labels is not one 0 or 1"
            if len(ex["next_sentence_labels"]) != 1 or _outside(ex["next_sentence_labels"], 0, 2) else None)
        if problem:
            raise BertkitError(f"{where}: {problem}")
        return {"input_ids": ids.astype(np.int32), "segment_ids": segments.astype(np.int8),
                "masked_lm_positions": positions.astype(np.int32), "masked_lm_ids": labels.astype(np.int32),
                "next_sentence_labels": np.array(int(ex["next_sentence_labels"][0]), dtype=np.int64)}


def _outside(values: np.ndarray, low: int, high: int) -> bool:
    return bool(values.size) and (int(values.min()) < low or int(values.max()) >= high)


def collate(samples: list[dict], max_predictions_per_seq: int, pad_to_multiple: int = 8,
            max_seq_length: int | None = None) -> dict:
    """Pad a list of dataset items into a batch of tensors.

    T is the longest input in the batch rounded up to `pad_to_multiple`, but never above
    `max_seq_length` when given (nor below the longest input). Returns input_ids (B,T) int64 (0 pads),
    segment_ids (B,T) int64, input_mask (B,T) int64 (1 real, 0 pad), masked_lm_positions (B,P) int64,
    masked_lm_ids (B,P) int64, masked_lm_weights (B,P) float32 (1 real, 0 pad),
    next_sentence_labels (B,) int64, with P = max_predictions_per_seq.
    """
    import torch

    batch = len(samples)
    longest = max(len(s["input_ids"]) for s in samples)
    width = -(-longest // pad_to_multiple) * pad_to_multiple if pad_to_multiple > 1 else longest
    if max_seq_length is not None:
        width = max(longest, min(width, max_seq_length))
    input_ids = np.zeros((batch, width), dtype=np.int64)  # (B, T)
    segment_ids = np.zeros((batch, width), dtype=np.int64)  # (B, T)
    input_mask = np.zeros((batch, width), dtype=np.int64)  # (B, T)
    positions = np.zeros((batch, max_predictions_per_seq), dtype=np.int64)  # (B, P)
    labels = np.zeros((batch, max_predictions_per_seq), dtype=np.int64)  # (B, P)
    weights = np.zeros((batch, max_predictions_per_seq), dtype=np.float32)  # (B, P)
    nsp = np.zeros(batch, dtype=np.int64)  # (B,)
    for b, s in enumerate(samples):
        n, m = len(s["input_ids"]), len(s["masked_lm_positions"])
        if m > max_predictions_per_seq:
            raise BertkitError(f"an item has {m} masked positions, more than max_predictions_per_seq "
                               f"{max_predictions_per_seq}")
        input_ids[b, :n] = s["input_ids"]
        segment_ids[b, :n] = s["segment_ids"]
        input_mask[b, :n] = 1
        positions[b, :m] = s["masked_lm_positions"]
        labels[b, :m] = s["masked_lm_ids"]
        weights[b, :m] = 1.0
        nsp[b] = s["next_sentence_labels"]
    return {"input_ids": torch.from_numpy(input_ids), "segment_ids": torch.from_numpy(segment_ids),
            "input_mask": torch.from_numpy(input_mask), "masked_lm_positions": torch.from_numpy(positions),
            "masked_lm_ids": torch.from_numpy(labels), "masked_lm_weights": torch.from_numpy(weights),
            "next_sentence_labels": torch.from_numpy(nsp)}
