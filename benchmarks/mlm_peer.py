"""What time_to_quality.py shares between the sides: the WikiText-2 split, the fixed-mask evaluation
set (built once; bertkit reads it as a Google-format TFRecord, the peer gets the same arrays), the one
scoring function of a transformers masked-LM model, and the peer itself: continued pretraining as a
transformers run_mlm.py user runs it, in a plain PyTorch loop.

The peer follows run_mlm.py and the Trainer's defaults: every line of the training text tokenized
with [CLS]/[SEP] (empty lines too), concatenated and cut into 128-token blocks (group_texts, the
remainder dropped), DataCollatorForLanguageModeling (15%, 80/10/10, new masks every batch),
BertForMaskedLM, torch's fused AdamW (lr as given, betas 0.9/0.999, eps 1e-8, weight decay 0), a linear schedule to
0 over the planned steps without warm-up, gradients clipped to 1.0, batch 32, fp32.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

BLOCK = 128
EVAL_MASK = 0.15


def split_articles(raw: Path, out: Path, held_out: float = 0.1) -> tuple[Path, Path]:
    """Cut WikiText at its ` = Title = ` lines: the first 90% of the articles are the training text,
    the last 10% the evaluation text. Returns (train.raw, heldout.raw)."""
    lines = raw.read_text(encoding="utf-8").splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(r"^ = [^=].* = $", line.rstrip("\n"))]
    cut = starts[len(starts) - max(1, round(len(starts) * held_out))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.raw").write_text("".join(lines[:cut]), encoding="utf-8")
    (out / "heldout.raw").write_text("".join(lines[cut:]), encoding="utf-8")
    return out / "train.raw", out / "heldout.raw"


def build_eval_set(heldout: Path, model_dir: Path, out: Path, seed: int = 20240501, P: int = 20) -> dict:
    """The fixed-mask evaluation set, the same for every model: the held-out paragraphs (headings
    and blank lines left out), tokenized with the model's vocabulary by transformers' tokenizer,
    concatenated and cut into blocks of [CLS] + 126 tokens + [SEP]; in each block 15% of the 126
    (19) positions masked, 80% [MASK] / 10% a random id / 10% kept, from one fixed seed. Written to
    out/eval.tfrecord (bertkit's --eval_files_dir) and out/eval.npz (the peer's arrays)."""
    from transformers import AutoTokenizer

    from bertkit.data.tfrecord import encode_example, frame_record

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    paragraphs = [s.strip() for s in heldout.read_text(encoding="utf-8").splitlines()
                  if s.strip() and not s.strip().startswith("=")]
    ids = [t for p in paragraphs for t in tok(p, add_special_tokens=False)["input_ids"]]
    n = BLOCK - 2
    blocks = np.array([ids[i:i + n] for i in range(0, len(ids) - n + 1, n)], dtype=np.int64)  # (N, 126)
    rng = np.random.default_rng(seed)
    k = round(EVAL_MASK * n)
    N = len(blocks)
    input_ids = np.concatenate([np.full((N, 1), tok.cls_token_id), blocks, np.full((N, 1), tok.sep_token_id)], 1)
    positions = np.zeros((N, P), dtype=np.int64)  # (N, P), padded with 0 past k
    labels = np.zeros((N, P), dtype=np.int64)
    weights = np.zeros((N, P), dtype=np.float32)
    for b in range(N):
        pos = np.sort(rng.choice(np.arange(1, BLOCK - 1), k, replace=False))
        labels[b, :k], positions[b, :k], weights[b, :k] = input_ids[b, pos], pos, 1.0
        draw = rng.random(k)
        input_ids[b, pos[draw < 0.8]] = tok.mask_token_id
        swap = pos[draw >= 0.9]
        input_ids[b, swap] = rng.integers(0, len(tok), len(swap))
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "eval.npz", input_ids=input_ids, positions=positions, labels=labels, weights=weights)
    with open(out / "eval.tfrecord", "wb") as f:
        for b in range(N):
            f.write(frame_record(encode_example({
                "input_ids": input_ids[b], "input_mask": np.ones(BLOCK, np.int64),
                "segment_ids": np.zeros(BLOCK, np.int64), "masked_lm_positions": positions[b],
                "masked_lm_ids": labels[b], "masked_lm_weights": weights[b], "next_sentence_labels": [0]})))
    return {"blocks": N, "masked": int(weights.sum()), "tokens": len(ids), "seed": seed}


def score(model, ev: dict, batch: int = 32) -> float:
    """Masked-LM accuracy of a transformers BertForMaskedLM on the fixed-mask set: the argmax of the
    vocabulary logits at each masked position against the original id, over all masked positions.
    The head runs at the masked positions only (it is position-wise: the same logits as the full
    forward's there), in evaluation mode, fp32."""
    import torch

    hits = total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ev["input_ids"]), batch):
            ids = torch.from_numpy(ev["input_ids"][i:i + batch])  # (B, T)
            pos, labels = torch.from_numpy(ev["positions"][i:i + batch]), torch.from_numpy(ev["labels"][i:i + batch])
            w = torch.from_numpy(ev["weights"][i:i + batch])  # (B, P)
            hidden = model.bert(input_ids=ids, attention_mask=torch.ones_like(ids),
                                token_type_ids=torch.zeros_like(ids)).last_hidden_state  # (B, T, H)
            picked = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, P, H)
            logits = model.cls(picked)  # (B, P, V)
            hits += float(((logits.argmax(-1) == labels).float() * w).sum())
            total += float(w.sum())
    model.train()
    return hits / max(total, 1.0)


def load_eval(folder: Path) -> dict:
    with np.load(folder / "eval.npz") as z:
        return {k: z[k] for k in z.files}


def train_blocks(tok, text: Path) -> list[dict]:
    """run_mlm.py's tokenize_function and group_texts: every line with its special tokens, all of
    them concatenated, cut into BLOCK-token blocks, the remainder dropped."""
    enc = tok(text.read_text(encoding="utf-8").splitlines(), return_special_tokens_mask=True)
    joined = {k: [t for seq in v for t in seq] for k, v in enc.items()}
    n = len(joined["input_ids"]) // BLOCK * BLOCK
    return [{k: v[i:i + BLOCK] for k, v in joined.items()} for i in range(0, n, BLOCK)]


def run_peer(job: dict) -> dict:
    """One peer run: `job` holds model_dir, train_text, eval_dir, lr, budget_s, steps (the schedule's
    length), eval_every, seed. Training seconds leave out evaluation, as bertkit's train_s does."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling
    from transformers import get_linear_schedule_with_warmup

    torch.set_num_threads(job.get("threads", 1))
    torch.manual_seed(job["seed"])
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    blocks = train_blocks(tok, Path(job["train_text"]))
    ev = load_eval(Path(job["eval_dir"])) if job.get("eval_every") else None
    model = BertForMaskedLM.from_pretrained(job["model_dir"])  # MiniLM has no MLM head: it starts fresh
    model.train()
    # the Trainer's defaults: torch's fused AdamW with torch >= 2.8 (adamw_torch_fused), weight decay 0
    # (so its no-decay groups change nothing), eps 1e-8
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            fused=True)
    sched = get_linear_schedule_with_warmup(opt, 0, job["steps"])
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    loader = torch.utils.data.DataLoader(blocks, batch_size=32, shuffle=True, collate_fn=collator,
                                         generator=torch.Generator().manual_seed(job["seed"]))
    curve, step, excluded, losses, times = [], 0, 0.0, [], []
    t0 = time.perf_counter()
    train_s = lambda: time.perf_counter() - t0 - excluded  # noqa: E731
    while step < job["steps"] and train_s() < job["budget_s"]:
        for b in loader:
            loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss))
            times.append((step, round(train_s(), 3)))
            last = step >= job["steps"] or train_s() >= job["budget_s"]
            if ev is not None and (step % job["eval_every"] == 0 or last):
                t = time.perf_counter()
                curve.append({"step": step, "train_s": round(train_s(), 3), "accuracy": score(model, ev),
                              "loss": float(np.mean(losses[-job["eval_every"]:]))})
                excluded += time.perf_counter() - t
            if last:
                break
    return {"steps": step, "train_s": round(train_s(), 3), "curve": curve, "blocks": len(blocks),
            "seq_per_s": round(32 * step / max(train_s(), 1e-9), 2), "step_train_s": times}


def main_peer(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    result = run_peer(job)
    Path(job["result"]).write_text(json.dumps(result, indent=1) + "\n")
    return 0
