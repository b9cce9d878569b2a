"""BERT on one device: embeddings, post-LayerNorm Transformer encoder, pooler, and the heads
(pretraining, sequence classification, token classification, span QA). Knows nothing of distribution or precision policy.

Shapes: B batch, T sequence length, H hidden size, nh heads, hs head size (H / nh), V vocabulary,
P masked positions per sequence; N real tokens of a batch run unpadded (bertkit.unpad).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertkit import unpad
from bertkit.config import BertConfig


def activation(name: str):
    if name == "gelu":
        return F.gelu  # exact erf form, what "gelu" means in Hugging Face's configs
    if name in ("gelu_new", "gelu_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")  # Google's modeling.py computes this form
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """Dropout's draw on a CPU: a bool mask, True where an element is kept, and the kept elements'
    scale. 32 random bits per element compared with p * 2**32, faster than torch's Bernoulli
    sampling there (benchmarks/dropout.py): the same draw to within 2**-32 of p, from the same
    seeded generator."""
    n = shape.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-2**63, None).view(torch.int32)[:n]
    cut = round(p * 2**32)  # elements whose bits fall below cut - 2**31 are dropped
    return bits.view(shape) >= cut - 2**31, 2**32 / (2**32 - cut)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout: on a CPU through keep_mask, elsewhere torch's fused dropout."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    keep, scale = keep_mask(x.shape, p)
    return x * keep.to(x.dtype).mul_(scale)


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class DropThenAttend(torch.autograd.Function):
    """dropout(w, p) @ v on a CPU, the same numbers as that chain through autograd, which would keep
    for the backward pass a float mask and the dropped weights beside w: two more float
    (B, nh, R, T) tensors a layer, 113 MB each at seq 384 and batch 16. This keeps a bool mask and
    remakes the dropped weights when the gradient comes (w is kept by the softmax anyway)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(w.shape, p)
        ctx.save_for_backward(w, keep, v)
        ctx.scale = scale
        return (w * keep.to(w.dtype).mul_(scale)) @ v

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        w, keep, v = ctx.saved_tensors
        # Under autocast the forward product ran in g's dtype: the backward's products do too.
        mask = keep.to(w.dtype).mul_(ctx.scale)
        grad_v = ((w * mask).to(g.dtype).transpose(-2, -1) @ g).to(v.dtype)
        grad_w = (g @ v.to(g.dtype).transpose(-2, -1)).to(w.dtype).mul_(mask)
        return grad_w, grad_v, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v over keys where `mask` is True, with dropout `p` on the weights.
    Training on a CPU spells it out so the weights take keep_mask's faster draw (torch's own
    fallback would sample Bernoulli); otherwise scaled_dot_product_attention's fused kernels."""
    if p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, nh, R, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # [CLS] is never masked: no empty row
    return DropThenAttend.apply(scores.softmax(-1), v, p)


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, H); or packed tokens (N,) with their `positions` -> (N, H)."""
        pos = self.position.weight[:input_ids.shape[1]] if positions is None else self.position(positions)
        x = self.word(input_ids) + pos  # (B, T, H) or (N, H)
        if token_type_ids is None:
            x = x + self.token_type.weight[0]
        else:
            x = x + self.token_type(token_type_ids)
        return self.drop(self.norm(x))


class Layer(nn.Module):
    """One post-LayerNorm Transformer layer: x = norm(x + attn(x)); x = norm(x + ffn(x))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        H = cfg.hidden_size
        self.nh = cfg.num_attention_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.out = nn.Linear(H, H)
        self.attn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.up = nn.Linear(H, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, H)
        self.ffn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.act = activation(cfg.hidden_act)
        self.p_attn = cfg.attention_probs_dropout_prob
        self.drop = Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None = None,
                packing: unpad.Packing | None = None) -> torch.Tensor:
        """x: (B, T, H); mask: (B, 1, 1, T) bool, True where a key may be attended, or None.
        With `rows` (B, R) positions, only those positions query and come out: (B, R, H).
        With a `packing`, x is the packed real tokens (N, H), `rows` their packed indices (B*R,),
        and the result (N, H) or (B*R, H), in packed order."""
        p = self.p_attn if self.training else 0.0
        H = x.shape[-1]
        if packing is not None:
            xq = x if rows is None else x[rows]  # (M, H)
            r = None if rows is None else len(rows) // packing.shape[0]
            a = unpad.attention(self.query(xq), self.key(x), self.value(x), self.nh, packing, r,
                                lambda q, k, v: attention(q, k, v, None, p))  # (M, H)
        else:
            B, T, _ = x.shape
            hs = H // self.nh
            xq = x if rows is None else x.gather(1, rows[..., None].expand(-1, -1, H))  # (B, R, H)
            q = self.query(xq).view(B, -1, self.nh, hs).transpose(1, 2)  # (B, nh, R, hs)
            k, v = (f(x).view(B, T, self.nh, hs).transpose(1, 2) for f in (self.key, self.value))  # (B, nh, T, hs)
            a = attention(q, k, v, mask, p).transpose(1, 2).reshape(B, -1, H)  # (B, R, H)
        xq = self.attn_norm(xq + self.drop(self.out(a)))
        return self.ffn_norm(xq + self.drop(self.down(self.act(self.up(xq)))))


class BertModel(nn.Module):
    """The encoder. Returns the last hidden states (B, T, H) and, with a pooler, the pooled [CLS]
    vector (B, H).

    A batch with padding runs unpadded (bertkit.unpad) while `unpad` is True: the same numbers at
    real tokens, no work at padded ones, whose hidden states come out as zeros. `path` records the
    way the last batch took: "unpadded", "padded" (a mask in attention) or "dense" (no padding)."""

    def __init__(self, cfg: BertConfig, pooler: bool = True, unpad: bool = True):
        super().__init__()
        self.config = cfg
        self.unpad = unpad
        self.path = ""
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if pooler else None

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids, token_type_ids: (B, T) int; attention_mask: (B, T), 1 for real tokens and 0 for
        padding, or None when nothing is padded (faster: no mask in attention).

        `rows` (B, R), the positions whose outputs a head reads, first of them [CLS] (0) when the
        pooler is used: the last layer then runs its queries, feed-forward and norms on those
        positions only and returns (B, R, H). The same numbers, less work: a classifier needs [CLS]
        alone, the pretraining heads [CLS] and the masked positions."""
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: no gather, no mask
        last = len(self.layers) - 1
        if attention_mask is not None and self.unpad:
            self.path = "unpadded"
            p = unpad.pack(attention_mask)
            types = None if token_type_ids is None else unpad.gather(token_type_ids, p)  # (N,)
            x = self.embeddings(unpad.gather(input_ids, p), types, p.positions)  # (N, H)
            packed_rows = None if rows is None else unpad.row_index(rows, p)  # (B*R,)
            for i, layer in enumerate(self.layers):
                x = layer(x, None, packed_rows if i == last else None, p)  # (N, H); last: (N or B*R, H)
            x = unpad.scatter(x, p) if rows is None else unpad.unsort_rows(x, p)  # (B, T or R, H)
        else:
            self.path = "dense" if attention_mask is None else "padded"
            mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
            for i, layer in enumerate(self.layers):
                x = layer(x, mask, rows if i == last else None)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, H)
        return x, pooled


def init_weights(model: nn.Module, std: float) -> None:
    """Google's initialisation: truncated normal (cut at 2 std) for weights, zero biases, LayerNorm
    at 1 and 0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BertForPreTraining(nn.Module):
    """Masked-LM head (its decoder is the word-embedding matrix) and next-sentence head."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        self.mlm = MaskedLMHead(cfg)
        self.nsp = nn.Linear(cfg.hidden_size, 2)
        init_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, masked_positions: torch.Tensor | None = None,
                predicted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns MLM logits and NSP logits (B, 2). With `masked_positions` (B, P) the vocabulary
        projection runs on those positions only and the MLM logits are (B, P, V); without, on every
        position: (B, T, V). The projection is most of a small model's work, so pass the positions.

        With `predicted` (B, P) bool, False at the padding of `masked_positions`, the MLM logits are
        those of the real predictions alone, (Np, V) in (B, P) order. While the encoder unpads
        (`bert.unpad`), the head then runs on those rows only; the padded path computes all P rows
        and keeps the real ones."""
        rows = None
        if masked_positions is not None:
            cls = torch.zeros_like(masked_positions[:, :1])
            rows = torch.cat([cls, masked_positions], 1)  # (B, 1 + P)
        x, pooled = self.bert(input_ids, token_type_ids, attention_mask, rows)  # (B, 1 + P or T, H), (B, H)
        if masked_positions is not None:
            x = x[:, 1:]  # (B, P, H)
        decoder = self.bert.embeddings.word.weight
        if predicted is None:
            return self.mlm(x, decoder), self.nsp(pooled)
        if self.bert.unpad:
            return self.mlm(x[predicted], decoder), self.nsp(pooled)  # (Np, V): no work on padding
        return self.mlm(x, decoder)[predicted], self.nsp(pooled)


def pretraining_flops(cfg: BertConfig, T, P):
    """Training FLOPs (forward, backward) of one `BertForPreTraining` sequence of T tokens with P
    masked positions, as the model computes it; T and P may be numbers or arrays (one per sequence).
    The MFU of the training log and of benchmarks/pretrain_throughput.py both count with this.

        forward  = (L-1) * (2*T*(4*H*H + 2*H*I) + 4*T*T*H)   projections and feed-forward; QK^T and AV
                 + 2*T*2*H*H + 2*R*(2*H*H + 2*H*I) + 4*R*T*H  last layer: keys and values at all T,
                                                             the rest at the R = 1 + P rows read
                 + 2*P*(H*H + H*V)                           masked-LM transform and decoder
                 + 2*H*H + 4*H                               pooler and next-sentence head
        training = 3 * forward                               (the backward pass costs twice the forward)
    """
    L, H, I, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    R = 1 + P  # rows the heads read from the last layer: [CLS] and the masked positions
    layer = 2 * T * (4 * H * H + 2 * H * I) + 4 * T * T * H
    last = 2 * T * 2 * H * H + 2 * R * (2 * H * H + 2 * H * I) + 4 * R * T * H
    forward = (L - 1) * layer + last + 2 * P * (H * H + H * V) + 2 * H * H + 4 * H
    return 3 * forward


class MaskedLMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """x: (..., H); decoder: the word embeddings (V, H). Returns logits (..., V)."""
        return F.linear(self.norm(self.act(self.transform(x))), decoder, self.bias)


class BertForSequenceClassification(nn.Module):
    def __init__(self, cfg: BertConfig, num_labels: int = 2):
        super().__init__()
        self.config = cfg
        self.num_labels = num_labels
        self.bert = BertModel(cfg)
        self.drop = Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Returns logits (B, num_labels) from the pooled [CLS] vector."""
        cls = torch.zeros_like(input_ids[:, :1])  # (B, 1): the pooler reads [CLS] alone
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask, cls)
        return self.classifier(self.drop(pooled))


class BertForTokenClassification(nn.Module):
    """A tag per token (named entities): dropout and a linear layer over every token's last hidden
    state, no pooler, as Hugging Face's BertForTokenClassification (the same weight names)."""

    def __init__(self, cfg: BertConfig, num_labels: int):
        super().__init__()
        self.config = cfg
        self.num_labels = num_labels
        self.bert = BertModel(cfg, pooler=False)
        self.drop = Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, select: torch.Tensor | None = None) -> torch.Tensor:
        """Returns logits (B, T, num_labels); at padding they are the bias alone (the encoder's
        output there is zero), so read them where attention_mask is 1. With `select` (B, T) bool,
        only the selected tokens' logits, (M, num_labels) in row-major order: the classifier then
        runs on those rows alone (a tagger's loss reads each word's first piece)."""
        x, _ = self.bert(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        if select is not None:
            x = x[select]  # (M, H)
        return self.classifier(self.drop(x))


class BertForQuestionAnswering(nn.Module):
    """Span extraction: a start and an end logit per token. No pooler, as in Google's run_squad.py
    and Hugging Face's BertForQuestionAnswering."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg, pooler=False)
        self.qa = nn.Linear(cfg.hidden_size, 2)
        init_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns start and end logits, each (B, T), at the lowest float at padding: no answer is
        there, and the span loss is then the same whatever the padding (unpadded or not)."""
        x, _ = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.qa(x)  # (B, T, 2)
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask.bool()[..., None], torch.finfo(logits.dtype).min)
        start, end = logits.unbind(-1)  # (B, T) each
        return start, end
