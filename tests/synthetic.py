"""A tiny synthetic pretraining dataset and model, for tests of the training loop that need no
real data (the data pipeline has its own tests on real data)."""

import numpy as np
import torch

from bertkit.config import BertConfig

CONFIG = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)
P = 5  # masked positions per sequence


class Instances:
    """Sequences of 10..T random ids with P masked positions; next-sentence label alternates."""

    def __init__(self, n: int = 64, T: int = 32, V: int = 100, seed: int = 0):
        r = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            L = int(r.integers(10, T + 1))
            ids = r.integers(5, V, L)
            ids[0], ids[-1] = 1, 2
            pos = np.sort(r.choice(np.arange(1, L - 1), P, replace=False))
            labels = ids[pos].copy()
            ids[pos] = 3
            self.items.append(dict(input_ids=ids, segment_ids=np.zeros(L, np.int64), masked_lm_positions=pos,
                                   masked_lm_ids=labels, next_sentence_labels=np.int64(i % 2)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(samples):
    B, T = len(samples), max(len(x["input_ids"]) for x in samples)
    out = dict(input_ids=torch.zeros(B, T, dtype=torch.long), segment_ids=torch.zeros(B, T, dtype=torch.long),
               input_mask=torch.zeros(B, T, dtype=torch.long), masked_lm_positions=torch.zeros(B, P, dtype=torch.long),
               masked_lm_ids=torch.zeros(B, P, dtype=torch.long), masked_lm_weights=torch.zeros(B, P),
               next_sentence_labels=torch.zeros(B, dtype=torch.long))
    for i, x in enumerate(samples):
        L, n = len(x["input_ids"]), len(x["masked_lm_positions"])
        out["input_ids"][i, :L] = torch.as_tensor(x["input_ids"])
        out["input_mask"][i, :L] = 1
        out["masked_lm_positions"][i, :n] = torch.as_tensor(x["masked_lm_positions"])
        out["masked_lm_ids"][i, :n] = torch.as_tensor(x["masked_lm_ids"])
        out["masked_lm_weights"][i, :n] = 1
        out["next_sentence_labels"][i] = int(x["next_sentence_labels"])
    return out
