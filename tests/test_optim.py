"""LAMB against the update of You et al. 2019 (Algorithm 2) written out per tensor, exact resume
through torch.save, the schedules against their closed forms, and the decay / no-decay split
against the name rule of Google's optimization.py."""

import copy
import io
import math
import re

import pytest
import torch
from torch import nn

from bertkit import BertkitError
from bertkit.config import BertConfig
from bertkit.convert import name_rows
from bertkit.model import BertForPreTraining, BertForSequenceClassification
from bertkit.optim import Lamb, WarmupPolyDecay, clips_gradients, make_optimizer, param_groups


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 32)
        self.norm = nn.LayerNorm(32)
        self.down = nn.Linear(32, 4)

    def forward(self, x):  # (B, 8) -> (B, 4)
        return self.down(torch.tanh(self.norm(self.up(x))))


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():  # LayerNorm starts at 1 and 0; move it so its update is not trivial
        net.norm.weight.add_(0.1 * torch.randn(32))
        net.norm.bias.add_(0.1 * torch.randn(32))
    return net


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, generator=g), 3 * torch.randn(16, 4, generator=g)) for _ in range(n)]


def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # A summed (not averaged) squared error keeps the global gradient norm well above 1.
    return ((net(x) - y) ** 2).sum()


def split_by_hand(net: TinyNet) -> tuple[list, list]:
    """Decay / no-decay written out for this net, independent of bertkit.optim.param_groups."""
    return [net.up.weight, net.down.weight], [net.up.bias, net.norm.weight, net.norm.bias, net.down.bias]


def reference_lamb_step(params_and_decay, state, lr, beta1, beta2, eps, max_norm) -> float:
    """One LAMB update, tensor by tensor, as in Algorithm 2 of You et al. 2019 with Adam moments
    (bias-corrected), decoupled weight decay, and the gradients first clipped by their global norm
    (BERT's clip_by_global_norm). Returns the global norm before clipping."""
    with torch.no_grad():
        norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p, _ in params_and_decay))
        scale = max_norm / norm if max_norm and norm > max_norm else 1.0
        for p, wd in params_and_decay:
            g = p.grad * scale
            s = state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            s["t"] += 1
            s["m"] = beta1 * s["m"] + (1 - beta1) * g
            s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
            m_hat = s["m"] / (1 - beta1 ** s["t"])
            v_hat = s["v"] / (1 - beta2 ** s["t"])
            r = m_hat / (v_hat.sqrt() + eps) + wd * p
            w_norm, r_norm = float(p.norm()), float(r.norm())
            trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
            p -= lr * trust * r
    return norm


def run_reference(steps, lr, wd, decay_everything=False, max_norm=1.0):
    net = tiny_net()
    decay, no_decay = split_by_hand(net)
    if decay_everything:
        decay, no_decay = decay + no_decay, []
    params = [(p, wd) for p in decay] + [(p, 0.0) for p in no_decay]
    state, norms = {}, []
    for x, y in steps:
        net.zero_grad()
        loss_fn(net, x, y).backward()
        norms.append(reference_lamb_step(params, state, lr, 0.9, 0.999, 1e-6, max_norm))
    return net, norms


def test_lamb_matches_algorithm_2_with_clipping_and_no_decay_group():
    steps, lr, wd = batches(20), 0.02, 0.1
    net = tiny_net()
    start = copy.deepcopy(net)
    decay, no_decay = split_by_hand(net)
    opt = Lamb([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
               lr=lr, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0)
    norms = []
    for x, y in steps:  # (B, 8) inputs, (B, 4) targets
        opt.zero_grad()
        loss_fn(net, x, y).backward()
        opt.step()
        norms.append(float(opt.last_grad_norm))

    ref, ref_norms = run_reference(steps, lr, wd)
    assert min(ref_norms) > 2.0, "the gradients must exceed max_grad_norm for clipping to matter"
    assert norms == pytest.approx(ref_norms, rel=1e-4)
    for (name, p), q, p0 in zip(net.named_parameters(), ref.parameters(), start.parameters()):
        assert (p - p0).abs().max() > 1e-3, f"{name} barely moved: the comparison would prove little"
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=f"{name} differs from Algorithm 2")

    # The comparison can tell the options apart: a reference that decays every tensor, or does not
    # clip, ends elsewhere.
    for wrong in (run_reference(steps, lr, wd, decay_everything=True)[0],
                  run_reference(steps, lr, wd, max_norm=None)[0]):
        assert max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(net.parameters(), wrong.parameters())) > 1e-3


def test_lamb_trust_ratio_is_one_for_zero_weights_or_zero_update():
    lr, eps = 0.1, 1e-6
    zero = nn.Parameter(torch.zeros(5))
    still = nn.Parameter(torch.full((3,), 2.0))
    opt = Lamb([zero, still], lr=lr, eps=eps, weight_decay=0.0, max_grad_norm=None)
    zero.grad = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    still.grad = torch.zeros(3)  # zero update: ||u|| = 0 must not turn into NaN
    opt.step()
    # First step: m_hat = g, v_hat = g^2, so with ratio 1 the step is lr * g / (|g| + eps).
    g = zero.grad
    torch.testing.assert_close(zero.detach(), -lr * g / (g.abs() + eps), rtol=0, atol=1e-7)
    assert torch.equal(still.detach(), torch.full((3,), 2.0))


def train(net, opt, sched, steps, max_grad_norm=1.0):
    for x, y in steps:
        opt.zero_grad()
        loss_fn(net, x, y).backward()
        if not clips_gradients(opt):
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
        opt.step()
        sched.step()


def through_disk(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_resume_through_state_dict_is_bit_identical(name):
    steps = batches(10, seed=3)

    def fresh():
        net = tiny_net()
        opt = make_optimizer(name, net, lr=0.01)
        return net, opt, schedule(opt, 3, 10, 0.5, continuous=False)

    net, opt, sched = fresh()
    train(net, opt, sched, steps)

    first = fresh()
    train(*first, steps[:5])
    saved = through_disk({"model": first[0].state_dict(), "opt": first[1].state_dict(),
                          "sched": first[2].state_dict()})
    net2, opt2, sched2 = fresh()  # a new process would start from here
    net2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    train(net2, opt2, sched2, steps[5:])

    for (key, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), key
    for p, q in zip(net.parameters(), net2.parameters()):
        for key, value in opt.state[p].items():
            assert torch.equal(value, opt2.state[q][key]), key
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_lamb_keeps_fp32_moments_for_bf16_parameters():
    torch.manual_seed(0)
    w32 = torch.randn(4, 6)
    g = torch.randn(4, 6)
    p16 = nn.Parameter(w32.to(torch.bfloat16))
    p32 = nn.Parameter(p16.detach().float())  # the same start, as fp32
    opts = [Lamb([p], lr=0.05, weight_decay=0.01) for p in (p16, p32)]
    for p, opt in zip((p16, p32), opts):
        p.grad = g.to(p.dtype)
        opt.step()
    state = opts[0].state[p16]
    assert p16.dtype == torch.bfloat16 and state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    # Computed in fp32, then rounded once to bf16 (gradients in bf16 differ by their own rounding).
    torch.testing.assert_close(p16.detach().float(), p32.detach(), rtol=1e-2, atol=1e-2)

    fresh = Lamb([p16], lr=0.05)
    fresh.load_state_dict(through_disk(opts[0].state_dict()))
    assert fresh.state[p16]["exp_avg"].dtype == torch.float32
    assert torch.equal(fresh.state[p16]["exp_avg_sq"], state["exp_avg_sq"])


def schedule(opt, warmup: int, total: int, power: float, continuous: bool) -> torch.optim.lr_scheduler.LambdaLR:
    """The loop's schedule as a torch scheduler (the loop itself sets the rate from the same function)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, WarmupPolyDecay(warmup, total, power, continuous=continuous))


def lrs(sched, n: int) -> list[float]:
    """Learning rate used by updates 0..n-1."""
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def test_pretraining_schedule_closed_form():
    base, W, T = 2e-3, 100, 1000
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    lr = lrs(schedule(opt, W, T, 0.5, continuous=False), T + 2)
    # NVIDIA's LAMB schedule: step/W during warmup, then (1 - step/T) ** 0.5, 0 from T on.
    assert lr[0] == 0.0
    assert lr[50] == pytest.approx(base * 0.5, rel=1e-12)
    assert lr[99] == pytest.approx(base * 0.99, rel=1e-12)
    assert lr[W] == pytest.approx(base * math.sqrt(0.9), rel=1e-12)
    assert lr[550] == pytest.approx(base * math.sqrt(0.45), rel=1e-12)
    assert lr[999] == pytest.approx(base * math.sqrt(0.001), rel=1e-12)
    assert lr[T] == lr[T + 1] == 0.0


def test_finetuning_schedule_closed_form():
    base, T = 5e-5, 1005
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    W = 100  # int(1005 * 0.1), as Google's run_classifier.py computes it
    sched = schedule(opt, int(T * 0.1), T, 1.0, continuous=True)
    assert sched.lr_lambdas[0].num_warmup_steps == W
    lr = lrs(sched, T + 1)
    assert lr[0] == 0.0
    assert lr[50] == pytest.approx(base * 0.5, rel=1e-12)
    assert lr[W] == pytest.approx(base, rel=1e-12)  # no drop at the end of warmup
    assert lr[W + 181] == pytest.approx(base * (T - W - 181) / (T - W), rel=1e-12)
    assert lr[T] == 0.0


def test_warmup_longer_than_the_run_stays_in_warmup():
    """Google's and NVIDIA's schedules accept W > T (the seed's phase 1 example: 100 steps, 2000
    warm-up): the rate rises as step / W for the whole run; a note says so."""
    from bertkit.optim import long_warmup_note

    sched = WarmupPolyDecay(num_warmup_steps=2000, num_train_steps=100)
    assert [sched(s) for s in (0, 1, 99)] == [0.0, 1 / 2000, 99 / 2000]
    assert long_warmup_note(2000, 100) == ("note: the warm-up (2000 steps) is longer than the run (100 steps): "
                                           "the learning rate stays in warm-up and reaches 5.0% of its peak at "
                                           "the last step")
    assert long_warmup_note(100, 100) is None
    with pytest.raises(BertkitError, match="num_warmup_steps must be >= 0"):
        WarmupPolyDecay(num_warmup_steps=-1, num_train_steps=10)


def tiny_config() -> BertConfig:
    return BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=16)


@pytest.mark.parametrize("model_cls", [BertForPreTraining, BertForSequenceClassification])
def test_param_groups_match_googles_name_rule(model_cls):
    model = model_cls(tiny_config())
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0

    ids_decay, ids_no = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    all_ids = {id(p) for p in model.parameters()}
    assert not ids_decay & ids_no, "a parameter in both groups"
    assert ids_decay | ids_no == all_ids, "a parameter in neither group"
    assert len(decay["params"]) + len(no_decay["params"]) == len(all_ids)  # the tied decoder once

    # Google's optimization.py: no decay where the TF variable name matches LayerNorm or bias.
    to_google = {row[0]: row[2] for row in name_rows(model.config.num_hidden_layers)}
    names = dict(model.named_parameters())
    for name, p in names.items():
        excluded = any(re.search(r, to_google[name]) for r in ("LayerNorm", "layer_norm", "bias"))
        assert (id(p) in ids_no) == excluded, name
    assert id(names["bert.embeddings.word.weight"]) in ids_decay  # embeddings are decayed


def test_param_groups_skip_frozen_parameters():
    net = tiny_net()
    net.up.weight.requires_grad_(False)
    decay, no_decay = param_groups(net, 0.01)
    assert [id(p) for p in decay["params"]] == [id(net.down.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(net.up.bias), id(net.norm.weight),
                                                   id(net.norm.bias), id(net.down.bias)}


def test_make_optimizer():
    net = tiny_net()
    lamb = make_optimizer("lamb", net, lr=1e-3, max_grad_norm=1.0)
    adamw = make_optimizer("adamw", net, lr=1e-3, weight_decay=0.05)
    assert isinstance(lamb, Lamb) and clips_gradients(lamb)
    assert not clips_gradients(make_optimizer("lamb", net, lr=1e-3, max_grad_norm=None))
    assert isinstance(adamw, torch.optim.AdamW) and not clips_gradients(adamw)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    with pytest.raises(BertkitError, match="adam"):
        make_optimizer("adam", net, lr=1e-3)
    with pytest.raises(BertkitError, match="learning_rate"):
        make_optimizer("lamb", net, lr=0.0)
