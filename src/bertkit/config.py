"""Model configuration in Google's `bert_config.json` keys, and the six model variants of the seed."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from bertkit import BertkitError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_tanh", "relu")

# Keys that some of Google's released configs carry (the multilingual and Chinese models) but that
# their model code never reads; accepted and dropped so those files load.
GOOGLE_INERT_KEYS = {
    "directionality", "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers",
    "pooler_size_per_head", "pooler_type",
}


# Past this, a size is damage or a typo: torch indexes tensors with 32-bit sizes in places, and no
# BERT comes within orders of magnitude of it.
MAX_SIZE = 2**31 - 1


@dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT model. Field names are the keys of Google's `bert_config.json`."""

    vocab_size: int = 30522  # WordPiece vocabulary size; must match vocab.txt
    hidden_size: int = 768  # width H of every layer
    num_hidden_layers: int = 12  # number of Transformer layers L
    num_attention_heads: int = 12  # heads A; H must divide by A
    intermediate_size: int = 3072  # width of the feed-forward inner layer (4H in Google's models)
    hidden_act: str = "gelu"  # "gelu" is the exact erf form; "gelu_new"/"gelu_tanh" the tanh form
    hidden_dropout_prob: float = 0.1  # dropout after embeddings, attention output and feed-forward
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512  # longest sequence the position table covers
    type_vocab_size: int = 2  # number of token types (segments A and B)
    initializer_range: float = 0.02  # std of the truncated normal weight initialiser
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon; Google's code fixes it at 1e-12

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
                raise BertkitError(f"config: {name} must be a positive integer up to {MAX_SIZE}, got {value!r:.40}")
        if self.hidden_size % self.num_attention_heads:
            raise BertkitError(f"config: hidden_size {self.hidden_size} is not a multiple of "
                               f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise BertkitError(f"config: hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise BertkitError(f"config: {name} must be in [0, 1), got {value!r:.40}")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            # float() first: math.isfinite raises OverflowError on an int beyond a float's range
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0 < value <= 1e30 and math.isfinite(float(value))):
                raise BertkitError(f"config: {name} must be a positive number, got {value!r:.40}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "BertConfig":
        """Build from Google's keys; an unknown key is an error, so a typo never passes silently."""
        if not isinstance(d, dict):
            raise BertkitError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - GOOGLE_INERT_KEYS)
        if unknown:
            raise BertkitError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except BertkitError as e:
            raise BertkitError(f"{source}: {str(e).removeprefix('config: ')}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        try:
            text = Path(path).read_text(encoding="utf-8")
            d = json.loads(text)
        except FileNotFoundError:
            raise BertkitError(f"{path}: no such config file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BertkitError(f"{path}: not a JSON config ({e})") from None
        except RecursionError:  # "[[[[..." deeper than the parser's stack
            raise BertkitError(f"{path}: not a JSON config (nested too deeply)") from None
        except OSError as e:
            raise BertkitError(f"{path}: cannot read ({e.strerror})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write Google's layout: sorted keys, indent 2."""
        from bertkit.io import write_atomic

        write_atomic(path, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())


def variant(name: str, vocab_size: int = 30522) -> BertConfig:
    """One of the seed's six model variants, with the shapes of Google's released checkpoints."""
    if name not in VARIANTS:
        raise BertkitError(f"unknown model variant {name!r}; choose from {', '.join(VARIANTS)}")
    layers, hidden, heads = VARIANTS[name]
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=4 * hidden)


# name -> (layers L, hidden H, heads A), from Google's BERT releases (README of google-research/bert:
# the 2020 miniatures tiny..medium, BERT-Base and BERT-Large).
VARIANTS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


def resolve(spec: str | os.PathLike) -> BertConfig:
    """A variant name, a bert_config.json path, or a checkpoint folder holding one."""
    spec = str(spec)
    if spec in VARIANTS:
        return variant(spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "bert_config.json"
    return BertConfig.from_json(path)
