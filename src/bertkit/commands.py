"""The command table: each `bertkit` subcommand is a `main(argv)` in its own module, named here and
imported only when called, so `bertkit --help` stays fast and a broken optional dependency breaks
one command. A leaf: the launcher reads it to run a step in-process."""

from __future__ import annotations

# name -> (module holding `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("bertkit.convert", "convert a checkpoint between Google, Hugging Face and bertkit formats"),
    "download-model": ("bertkit.pretrained", "download one of Google's pretrained BERT checkpoints"),
    "data": ("bertkit.data.cli", "download, format and shard pretraining data; read TFRecords"),
    "pretrain": ("bertkit.tasks.pretrain", "pretrain BERT (masked LM + next sentence) with LAMB"),
    "finetune": ("bertkit.tasks.finetune", "fine-tune on MRPC, a GLUE task, your own CSV/TSV/JSONL files, SQuAD or named entities"),
    "predict": ("bertkit.predict", "label new text with a fine-tuned classifier or tagger (JSON Lines out)"),
    "squad-eval": ("bertkit.tasks.finetune.squad_metric", "score SQuAD predictions with the official definitions"),
    "demo": ("bertkit.launcher", "the seed's demo_bert.py interface: one card to many servers"),
    "plot": ("bertkit.plot", "plot a training log: losses and held-out accuracy against steps and seconds"),
}
