"""parallelize() compiles before it wraps for data parallelism, and compiles per Transformer layer,
so each layer's gradients are ready while earlier layers still run their backward (what lets DDP's
all-reduce overlap the backward pass)."""

import torch
from torch import nn

from bertkit import distributed
from bertkit.config import BertConfig
from bertkit.distributed import Dist, parallelize, unwrap
from bertkit.model import BertForPreTraining, Layer

TINY = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=40)


def quick_compile(monkeypatch):
    """torch.compile without Inductor's code generation (minutes on this CPU): aot_eager still
    makes one autograd node per compiled region, which is what the order is about."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "aot_eager"}))


def test_layers_are_compiled_in_place_before_ddp_wraps(monkeypatch):
    quick_compile(monkeypatch)
    seen = {}

    class FakeDDP(nn.Module):  # records what DDP would be handed
        def __init__(self, module, **kw):
            super().__init__()
            seen["compiled_layers"] = [m._compiled_call_impl is not None for m in module.modules() if isinstance(m, Layer)]
            seen["whole_compiled"] = module._compiled_call_impl is not None
            self.module = module

    monkeypatch.setattr(distributed.nn.parallel, "DistributedDataParallel", FakeDDP)
    model = BertForPreTraining(TINY)
    names = list(model.state_dict())
    wrapped = parallelize(model, Dist(rank=0, world_size=2), compile=True)
    assert isinstance(wrapped, FakeDDP)
    assert seen == {"compiled_layers": [True, True, True], "whole_compiled": False}
    assert list(wrapped.module.state_dict()) == names  # checkpoints keep the plain names
    assert parallelize(BertForPreTraining(TINY), Dist(), compile=False)._compiled_call_impl is None


def gradient_order(model: nn.Module) -> list[str]:
    """The order in which the last layer's gradients and the word embeddings' gradient (the last
    one the backward pass makes) become ready, in one forward and backward pass."""
    events = []
    plain = unwrap(model)
    for p in plain.bert.layers[-1].parameters():
        p.register_post_accumulate_grad_hook(lambda p: events.append("last layer"))
    plain.bert.embeddings.word.weight.register_post_accumulate_grad_hook(lambda p: events.append("embeddings"))
    mlm, nsp = model(torch.randint(0, 120, (2, 16)), None, None, torch.tensor([[1, 2], [3, 4]]))
    (mlm.float().logsumexp(-1).sum() + nsp.sum()).backward()
    return events


def test_last_layer_gradients_are_ready_before_the_backward_reaches_the_embeddings(monkeypatch):
    quick_compile(monkeypatch)
    torch.manual_seed(0)
    model = parallelize(BertForPreTraining(TINY).eval(), Dist(), compile=True)
    events = gradient_order(model)
    assert events.index("last layer") < events.index("embeddings"), events
    assert unwrap(model).bert.layers[0]._compiled_call_impl is not None


def test_tf32_is_on_by_default_and_the_flag_turns_it_off():
    from bertkit.distributed import set_tf32
    from bertkit.tasks.pretrain import parser

    base = ["--input_files_dir", "x", "--output_dir", "y"]
    assert parser().parse_args(base).tf32 is True
    assert parser().parse_args(base + ["--tf32", "false"]).tf32 is False
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        set_tf32(True)
        assert matmul.fp32_precision == "tf32"  # read without a GPU: it is only a setting
        set_tf32(False)
        assert matmul.fp32_precision == "ieee"
    finally:
        matmul.fp32_precision = before
