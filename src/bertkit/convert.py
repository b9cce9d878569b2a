"""Weights between Google's TensorFlow checkpoints, Hugging Face folders and bertkit folders.

One literal name map serves every direction and the tests:

    bertkit convert --input uncased_L-12_H-768_A-12.zip --output base/
    bertkit convert --input base/ --output base-hf/ --format hf
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bertkit import BertkitError
from bertkit.checkpoint import (check_shapes, is_model_folder, is_tf_prefix, load_model_folder, load_pickle,
                                load_task, resolve_checkpoint, save_model)
from bertkit.config import BertConfig
from bertkit.task_record import TaskRecord

# bertkit name, Hugging Face name, Google TF variable. "{i}" is the layer index. Google stores dense
# kernels as [in, out]; every ".../kernel" is transposed on the way in.
NAME_MAP: list[tuple[str, str, str]] = [
    ("bert.embeddings.word.weight", "bert.embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings"),
    ("bert.embeddings.position.weight", "bert.embeddings.position_embeddings.weight", "bert/embeddings/position_embeddings"),
    ("bert.embeddings.token_type.weight", "bert.embeddings.token_type_embeddings.weight", "bert/embeddings/token_type_embeddings"),
    ("bert.embeddings.norm.weight", "bert.embeddings.LayerNorm.weight", "bert/embeddings/LayerNorm/gamma"),
    ("bert.embeddings.norm.bias", "bert.embeddings.LayerNorm.bias", "bert/embeddings/LayerNorm/beta"),
    ("bert.layers.{i}.query.weight", "bert.encoder.layer.{i}.attention.self.query.weight", "bert/encoder/layer_{i}/attention/self/query/kernel"),
    ("bert.layers.{i}.query.bias", "bert.encoder.layer.{i}.attention.self.query.bias", "bert/encoder/layer_{i}/attention/self/query/bias"),
    ("bert.layers.{i}.key.weight", "bert.encoder.layer.{i}.attention.self.key.weight", "bert/encoder/layer_{i}/attention/self/key/kernel"),
    ("bert.layers.{i}.key.bias", "bert.encoder.layer.{i}.attention.self.key.bias", "bert/encoder/layer_{i}/attention/self/key/bias"),
    ("bert.layers.{i}.value.weight", "bert.encoder.layer.{i}.attention.self.value.weight", "bert/encoder/layer_{i}/attention/self/value/kernel"),
    ("bert.layers.{i}.value.bias", "bert.encoder.layer.{i}.attention.self.value.bias", "bert/encoder/layer_{i}/attention/self/value/bias"),
    ("bert.layers.{i}.out.weight", "bert.encoder.layer.{i}.attention.output.dense.weight", "bert/encoder/layer_{i}/attention/output/dense/kernel"),
    ("bert.layers.{i}.out.bias", "bert.encoder.layer.{i}.attention.output.dense.bias", "bert/encoder/layer_{i}/attention/output/dense/bias"),
    ("bert.layers.{i}.attn_norm.weight", "bert.encoder.layer.{i}.attention.output.LayerNorm.weight", "bert/encoder/layer_{i}/attention/output/LayerNorm/gamma"),
    ("bert.layers.{i}.attn_norm.bias", "bert.encoder.layer.{i}.attention.output.LayerNorm.bias", "bert/encoder/layer_{i}/attention/output/LayerNorm/beta"),
    ("bert.layers.{i}.up.weight", "bert.encoder.layer.{i}.intermediate.dense.weight", "bert/encoder/layer_{i}/intermediate/dense/kernel"),
    ("bert.layers.{i}.up.bias", "bert.encoder.layer.{i}.intermediate.dense.bias", "bert/encoder/layer_{i}/intermediate/dense/bias"),
    ("bert.layers.{i}.down.weight", "bert.encoder.layer.{i}.output.dense.weight", "bert/encoder/layer_{i}/output/dense/kernel"),
    ("bert.layers.{i}.down.bias", "bert.encoder.layer.{i}.output.dense.bias", "bert/encoder/layer_{i}/output/dense/bias"),
    ("bert.layers.{i}.ffn_norm.weight", "bert.encoder.layer.{i}.output.LayerNorm.weight", "bert/encoder/layer_{i}/output/LayerNorm/gamma"),
    ("bert.layers.{i}.ffn_norm.bias", "bert.encoder.layer.{i}.output.LayerNorm.bias", "bert/encoder/layer_{i}/output/LayerNorm/beta"),
    ("bert.pooler.weight", "bert.pooler.dense.weight", "bert/pooler/dense/kernel"),
    ("bert.pooler.bias", "bert.pooler.dense.bias", "bert/pooler/dense/bias"),
    ("mlm.transform.weight", "cls.predictions.transform.dense.weight", "cls/predictions/transform/dense/kernel"),
    ("mlm.transform.bias", "cls.predictions.transform.dense.bias", "cls/predictions/transform/dense/bias"),
    ("mlm.norm.weight", "cls.predictions.transform.LayerNorm.weight", "cls/predictions/transform/LayerNorm/gamma"),
    ("mlm.norm.bias", "cls.predictions.transform.LayerNorm.bias", "cls/predictions/transform/LayerNorm/beta"),
    ("mlm.bias", "cls.predictions.bias", "cls/predictions/output_bias"),
    ("nsp.weight", "cls.seq_relationship.weight", "cls/seq_relationship/output_weights"),
    ("nsp.bias", "cls.seq_relationship.bias", "cls/seq_relationship/output_bias"),
    ("classifier.weight", "classifier.weight", "output_weights"),  # run_classifier.py
    ("classifier.bias", "classifier.bias", "output_bias"),
    ("qa.weight", "qa_outputs.weight", "cls/squad/output_weights"),  # run_squad.py
    ("qa.bias", "qa_outputs.bias", "cls/squad/output_bias"),
]

# Hugging Face keys with no tensor of their own in bertkit: the MLM decoder is the word-embedding
# matrix and its bias is cls.predictions.bias; position_ids is a constant buffer.
HF_TIED_OR_BUFFERS = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
                      "bert.embeddings.position_ids"}


def name_rows(num_layers: int) -> list[tuple[str, str, str]]:
    """NAME_MAP with "{i}" expanded for layers 0..num_layers-1."""
    rows = []
    for row in NAME_MAP:
        if "{i}" in row[0]:
            rows += [tuple(n.replace("{i}", str(i)) for n in row) for i in range(num_layers)]
        else:
            rows.append(row)
    return rows


def _rename(state: dict, num_layers: int, src: int, dst: int, source: str, skip: set[str] = frozenset()
            ) -> dict[str, torch.Tensor]:
    table = {row[src]: row[dst] for row in name_rows(num_layers)}
    unknown = [k for k in state if k not in table and k not in skip]
    if unknown:
        raise BertkitError(f"{source}: unknown weight name(s) {', '.join(unknown[:5])}"
                           + (" ..." if len(unknown) > 5 else ""))
    return {table[k]: v for k, v in state.items() if k in table}


def from_hf(state: dict[str, torch.Tensor], num_layers: int, source: str = "hf") -> dict[str, torch.Tensor]:
    """Hugging Face BERT names to bertkit names. A bare `BertModel` (no `bert.` prefix) is accepted."""
    if not any(k.startswith("bert.") for k in state):
        state = {"bert." + k: v for k, v in state.items()}
    return _rename(state, num_layers, 1, 0, source, skip=HF_TIED_OR_BUFFERS)


def to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    return _rename(state, num_layers, 0, 1, "bertkit")


def from_google(tensors: dict[str, np.ndarray], num_layers: int, source: str = "google"
                ) -> dict[str, torch.Tensor]:
    """Google TF variables to bertkit names. Optimizer slots and the step counter are dropped."""
    table = {row[2]: row[0] for row in name_rows(num_layers)}
    out = {}
    for name, arr in tensors.items():
        if name in table:
            arr = arr.T if name.endswith("/kernel") else arr
            out[table[name]] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))
        elif not re.search(r"(adam_[mv]|global_step|Momentum|LAMB|lamb)", name):
            raise BertkitError(f"{source}: unknown variable {name!r}")
    return out


# ---- reading each format -----------------------------------------------------------------------

def hf_config(d: dict, source: str) -> BertConfig:
    """A Hugging Face config.json as a BertConfig."""
    if not isinstance(d, dict):
        raise BertkitError(f"{source}: expected a JSON object, got {type(d).__name__}")
    if d.get("model_type", "bert") != "bert":
        raise BertkitError(f"{source}: model_type {d.get('model_type')!r} is not BERT")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise BertkitError(f"{source}: only absolute position embeddings are supported")
    act = {"gelu_pytorch_tanh": "gelu_tanh"}.get(d.get("hidden_act", "gelu"), d.get("hidden_act", "gelu"))
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
            "type_vocab_size", "initializer_range", "layer_norm_eps")
    return BertConfig.from_dict({**{k: d[k] for k in keys if k in d}, "hidden_act": act}, source)


def read_hf(folder: Path, workdir: str | os.PathLike | None = None
            ) -> tuple[BertConfig, dict[str, torch.Tensor], Path, bool]:
    """A Hugging Face folder. Its vocabulary is vocab.txt, or, in a folder that transformers 5
    saved (tokenizer.json alone), the WordPiece vocabulary of tokenizer.json written out as a
    vocab.txt in `workdir` (a temporary folder removed at exit when None)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise BertkitError(f"{folder / 'config.json'}: unreadable ({e})") from None
    config = hf_config(cfg, str(folder / "config.json"))
    path = folder / "model.safetensors"
    if path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise BertkitError(f"{path}: unreadable safetensors file ({e})") from None
    elif (folder / "pytorch_model.bin").is_file():
        path = folder / "pytorch_model.bin"
        state = load_pickle(path)  # a pickle that would construct arbitrary objects is refused
    else:
        raise BertkitError(f"{folder}: no model.safetensors or pytorch_model.bin")
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise BertkitError(f"{folder}: the weights file does not hold a name -> tensor mapping")
    vocab, lower = folder / "vocab.txt", True
    if not vocab.is_file():
        vocab, lower = vocab_from_tokenizer_json(folder, workdir)
    try:
        lower = bool(json.loads((folder / "tokenizer_config.json").read_text()).get("do_lower_case", lower))
    except (OSError, ValueError, AttributeError, RecursionError):
        pass
    state = from_hf(state, config.num_hidden_layers, str(folder))
    check_shapes(config, state, str(path), str(folder / "config.json"))
    return config, state, vocab, lower


def vocab_from_tokenizer_json(folder: Path, workdir: str | os.PathLike | None) -> tuple[Path, bool]:
    """vocab.txt (tokens in id order) and lower-casing from the WordPiece tokenizer.json of `folder`."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise BertkitError(f"{folder}: no vocab.txt (nor tokenizer.json) beside the weights")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        model, normalizer = spec["model"], spec.get("normalizer") or {}
        if model.get("type") != "WordPiece":
            raise BertkitError(f"{path}: a {model.get('type')} tokenizer; BERT needs WordPiece")
        ids = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        if [i for _, i in ids] != list(range(len(ids))):
            raise BertkitError(f"{path}: the vocabulary's ids are not 0..{len(ids) - 1}")
        tokens = [t for t, _ in ids]
        if any("\n" in t for t in tokens):
            raise BertkitError(f"{path}: a token holds a line break; it cannot be a vocab.txt line")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise BertkitError(f"{path}: unreadable tokenizer ({e})") from None
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="bertkit-vocab-")
        atexit.register(shutil.rmtree, workdir, True)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    vocab = Path(workdir) / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return vocab, bool(normalizer.get("lowercase", True))


def read_google(folder: Path, prefix: Path | None = None) -> tuple[BertConfig, dict[str, torch.Tensor], Path, bool]:
    """A Google checkpoint folder: bert_config.json, vocab.txt and one TensorFlow checkpoint, or the
    checkpoint `prefix` in it when given (a folder may hold several)."""
    from bertkit.tfbundle import read_checkpoint

    indexes = [Path(f"{prefix}.index")] if prefix is not None else sorted(folder.glob("*.index"))
    if len(indexes) != 1:
        raise BertkitError(f"{folder}: expected one TensorFlow checkpoint (*.index), found {len(indexes)}")
    if not (folder / "bert_config.json").is_file():
        raise BertkitError(f"{indexes[0]}: no bert_config.json beside the checkpoint")
    config = BertConfig.from_json(folder / "bert_config.json")
    tensors = read_checkpoint(str(indexes[0])[: -len(".index")])
    state = from_google(tensors, config.num_hidden_layers, str(indexes[0]))
    check_shapes(config, state, str(indexes[0]), str(folder / "bert_config.json"))
    # Google names its cased models "cased_L-..." and its uncased ones "uncased_L-...".
    lower = not re.search(r"(^|[^n])cased", folder.name)
    return config, state, folder / "vocab.txt", lower


def read_any(src: str | os.PathLike, workdir: str | os.PathLike | None = None
             ) -> tuple[BertConfig, dict[str, torch.Tensor], Path, bool]:
    """(config, bertkit state dict, vocab path, lowercase) from any supported source. A zip is
    unpacked into `workdir`, which must outlive the returned vocab path. TensorFlow's names are
    taken too (see `resolve_checkpoint`): a checkpoint prefix, `model.ckpt-N` of an output folder;
    a training output folder stands for its newest valid checkpoint."""
    src = resolve_checkpoint(src)
    if is_tf_prefix(src):
        found = read_google(src.parent, prefix=src)
        return _check_vocab(found)
    if src.is_file() and src.suffix == ".zip":
        from bertkit.fetch import extract

        if workdir is None:
            raise ValueError("a zip needs a workdir to unpack into")
        extract(src, Path(workdir))
        found = [p.parent for p in Path(workdir).rglob("bert_config.json")]
        if len(found) != 1:
            raise BertkitError(f"{src}: expected one bert_config.json in the zip, found {len(found)}")
        src = found[0]
    if not src.is_dir():
        raise BertkitError(f"{src}: no such checkpoint folder or zip")
    if is_model_folder(src):
        config, state, vocab, meta = load_model_folder(src)
        found = config, state, vocab, bool(meta.get("do_lower_case", True))
    elif (src / "config.json").is_file():
        found = read_hf(src, workdir)
    elif (src / "bert_config.json").is_file():
        found = read_google(src)
    else:
        raise BertkitError(f"{src}: not a bertkit, Hugging Face or Google BERT checkpoint")
    return _check_vocab(found)


def read_task(src: str | os.PathLike) -> TaskRecord | None:
    """The task record of a checkpoint `read_any` reads: a bertkit folder's task.json, else None
    (pretrained weights, foreign formats, folders fine-tuned before task records)."""
    src = resolve_checkpoint(src)
    return load_task(src) if src.is_dir() and is_model_folder(src) else None


def _check_vocab(found: tuple) -> tuple[BertConfig, dict[str, torch.Tensor], Path, bool]:
    config, vocab = found[0], found[2]
    from bertkit.tokenizer import load_vocab

    tokens = len(load_vocab(vocab))
    if tokens > config.vocab_size:  # ids past the embedding table would crash the model
        raise BertkitError(f"{vocab}: {tokens} tokens, more than the config's vocab_size "
                           f"{config.vocab_size} (vocab and config of different models)")
    return found


def write_hf(folder: str | os.PathLike, config: BertConfig, state: dict[str, torch.Tensor],
             vocab: Path, lowercase: bool, task: TaskRecord | None = None) -> None:
    """A folder that `transformers` loads: config.json, model.safetensors, vocab.txt. A classifier's
    label names come from its task record (`id2label`, `label2id`; `problem_type` regression for a
    one-output regression head), else LABEL_0, LABEL_1, ..."""
    import shutil

    from safetensors.torch import save_file

    from bertkit.io import atomic_path

    heads = {k.split(".")[0] for k in state if not k.startswith("bert.")}
    tokens = task is not None and task.head == "token_classification"
    arch = ("BertForPreTraining" if "mlm" in heads else
            ("BertForTokenClassification" if tokens else "BertForSequenceClassification") if "classifier" in heads
            else "BertForQuestionAnswering" if "qa" in heads else "BertModel")
    hf = to_hf(state, config.num_hidden_layers)
    if arch == "BertModel":
        hf = {k.removeprefix("bert."): v for k, v in hf.items()}
    cfg = {"architectures": [arch], "model_type": "bert", "pad_token_id": 0,
           "position_embedding_type": "absolute", **config.to_dict(),
           "hidden_act": {"gelu_tanh": "gelu_pytorch_tanh"}.get(config.hidden_act, config.hidden_act)}
    if "classifier" in heads:
        n = state["classifier.weight"].shape[0]
        names = [f"LABEL_{i}" for i in range(n)]
        if task is not None and task.labels is not None and len(task.labels) == n:
            names = list(task.labels)
        cfg["id2label"] = {str(i): name for i, name in enumerate(names)}
        cfg["label2id"] = {name: i for i, name in enumerate(names)}
        if task is not None and not tokens:
            cfg["problem_type"] = "regression" if task.problem == "regression" else "single_label_classification"
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in hf.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase}, indent=2) + "\n")
        shutil.copyfile(vocab, tmp / "vocab.txt")


def convert(src: str | os.PathLike, dst: str | os.PathLike, fmt: str = "bertkit") -> Path:
    """Convert any supported checkpoint into a bertkit (or Hugging Face) folder at `dst`."""
    with tempfile.TemporaryDirectory(prefix="bertkit-convert-") as work:
        config, state, vocab, lower = read_any(src, work)
        task = read_task(src)
        if fmt == "hf":
            write_hf(dst, config, state, vocab, lower, task)
        elif fmt == "bertkit":
            save_model(dst, config, state, vocab, lowercase=lower, extra={"converted_from": str(src)}, task=task)
        else:
            raise BertkitError(f"--format must be bertkit or hf, got {fmt!r}")
    return Path(dst)


def main(argv: list[str]) -> int:
    from bertkit.flags import ArgumentParser, flag, parse_bool

    p = ArgumentParser(prog="bertkit convert", description=(
        "Convert a BERT checkpoint. SRC may be a Google checkpoint zip, folder or prefix (bert_config.json, "
        "vocab.txt, bert_model.ckpt.*; TensorFlow is not needed), a Hugging Face folder (config.json, "
        "model.safetensors or pytorch_model.bin, vocab.txt or tokenizer.json), a bertkit folder, or a "
        "training output folder (its newest valid checkpoint)."))
    p.add_argument("--input", "-i", required=True, help="Checkpoint zip, folder or TensorFlow prefix to read.")
    p.add_argument("--output", "-o", required=True, help="Folder to write; replaced atomically.")
    p.add_argument("--format", choices=("bertkit", "hf"), default="bertkit",
                   help="bertkit (default) or hf (loadable by transformers).")
    flag(p, "overwrite", type=parse_bool, default=False,
         help="Replace --output if it exists (`--overwrite` or `--overwrite true`, as in every command).")
    args = p.parse_args(argv)
    if Path(args.output).exists() and not args.overwrite:
        raise BertkitError(f"{args.output}: already exists (pass --overwrite to replace it)")
    out = convert(args.input, args.output, args.format)
    print(f"wrote {args.format} checkpoint to {out}")
    return 0
