"""BertConfig against Google's released bert_config.json files, and its handling of bad files."""

import json
import re

import pytest

from bertkit import BertkitError
from bertkit.config import VARIANTS, BertConfig, resolve, variant
from conftest import DATA

CONFIGS = DATA / "bert" / "configs"

# Google's shapes (google-research/bert README): layers, hidden, heads.
GOOGLE_SHAPES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
                 "base": (12, 768, 12), "large": (24, 1024, 16)}
RELEASED = {"mini": "uncased_L-4_H-256_A-4", "medium": "uncased_L-8_H-512_A-8",
            "base": "uncased_L-12_H-768_A-12", "large": "uncased_L-24_H-1024_A-16"}


@pytest.mark.parametrize("name", list(GOOGLE_SHAPES))
def test_variant_shapes(name):
    c = variant(name)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == GOOGLE_SHAPES[name]
    assert c.intermediate_size == 4 * c.hidden_size
    assert (c.vocab_size, c.max_position_embeddings, c.type_vocab_size) == (30522, 512, 2)
    assert c.hidden_act == "gelu" and c.layer_norm_eps == 1e-12
    assert resolve(name) == c


def test_variants_are_exactly_the_six():
    assert set(VARIANTS) == set(GOOGLE_SHAPES)
    with pytest.raises(BertkitError, match="unknown model variant 'huge'"):
        variant("huge")


@pytest.mark.parametrize("name, folder", list(RELEASED.items()))
def test_variant_equals_google_config(name, folder):
    path = CONFIGS / folder / "bert_config.json"
    assert BertConfig.from_json(path) == variant(name)
    assert resolve(CONFIGS / folder) == variant(name)  # a folder holding bert_config.json


def test_miniature_release_base_config_equals_base():
    assert BertConfig.from_json(CONFIGS / "uncased_L-12_H-768_A-12_miniature_release" / "bert_config.json") \
        == variant("base")


def test_json_round_trip(tmp_path):
    c = BertConfig(vocab_size=2000, hidden_size=96, num_hidden_layers=3, num_attention_heads=6,
                   intermediate_size=200, hidden_act="gelu_tanh", hidden_dropout_prob=0.0,
                   max_position_embeddings=64, initializer_range=0.05, layer_norm_eps=1e-6)
    path = tmp_path / "bert_config.json"
    c.to_json(path)
    assert BertConfig.from_json(path) == c
    written = json.loads(path.read_text())
    assert written["hidden_size"] == 96 and list(written) == sorted(written)  # Google's keys, sorted
    # A released file survives a round trip unchanged in value.
    base = BertConfig.from_json(CONFIGS / "uncased_L-12_H-768_A-12" / "bert_config.json")
    base.to_json(path)
    google = json.loads((CONFIGS / "uncased_L-12_H-768_A-12" / "bert_config.json").read_text())
    again = json.loads(path.read_text())
    assert {k: again[k] for k in google} == google


def write(tmp_path, d) -> str:
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(d) if not isinstance(d, str) else d)
    return str(path)


def google_base() -> dict:
    return json.loads((CONFIGS / "uncased_L-12_H-768_A-12" / "bert_config.json").read_text())


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, {**google_base(), "hiden_size": 768})
    with pytest.raises(BertkitError, match=rf"{re.escape(path)}: unknown key\(s\) 'hiden_size'"):
        BertConfig.from_json(path)


def test_inert_google_keys_are_accepted(tmp_path):
    """The multilingual release carries pooler_* and directionality keys its code never reads."""
    d = {**google_base(), "directionality": "bidi", "pooler_type": "first_token_transform",
         "pooler_fc_size": 768, "pooler_num_attention_heads": 12, "pooler_num_fc_layers": 3,
         "pooler_size_per_head": 128}
    assert BertConfig.from_json(write(tmp_path, d)) == variant("base")


@pytest.mark.parametrize("change, match", [
    ({"num_attention_heads": 7}, "hidden_size 768 is not a multiple of num_attention_heads 7"),
    ({"hidden_size": -768}, "hidden_size must be a positive integer"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
    ({"intermediate_size": 3072.5}, "intermediate_size must be a positive integer"),
    ({"vocab_size": True}, "vocab_size must be a positive integer"),
    ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be in \[0, 1\)"),
    ({"hidden_act": "swish"}, "hidden_act 'swish' is not one of"),
    ({"layer_norm_eps": 0}, "layer_norm_eps must be a positive number"),
])
def test_invalid_values_name_the_file(tmp_path, change, match):
    path = write(tmp_path, {**google_base(), **change})
    with pytest.raises(BertkitError, match=f"^{re.escape(path)}: {match}"):
        BertConfig.from_json(path)


@pytest.mark.parametrize("text, match", [
    ("{'hidden_size': 768}", "not a JSON config"),
    ('{"hidden_size": 768', "not a JSON config"),
    ("[1, 2]", "expected a JSON object"),
])
def test_non_json_file_names_the_file(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(BertkitError, match=f"^{re.escape(path)}: {match}"):
        BertConfig.from_json(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(BertkitError, match="no such config file"):
        BertConfig.from_json(tmp_path / "nope.json")
    path = tmp_path / "bert_config.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BertkitError, match=f"^{re.escape(str(path))}: not a JSON config"):
        BertConfig.from_json(path)
