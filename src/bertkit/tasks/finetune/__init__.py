"""`bertkit finetune mrpc|glue|classify|squad|ner`: the dispatch to the task.

Each task module (mrpc.py, glue.py, classify.py, squad.py, ner.py) parses its flags, reads its data
(mrpc_data.py, glue_data.py, tables.py, squad_data.py, ner_data.py) and calls the runner
(runner.py): `setup` (model shape, weights, vocabulary, processes), `train` (AdamW, warmup then
linear decay, gradient clipping, the one training loop) and `infer` (evaluation batches spread over
the ranks and gathered, so scores do not depend on the number of processes). The sequence
classifiers share classification.py (loss, logits, scores, prediction files) and metrics.py; glue
and classify also share their whole run (sequence_runner.py). Under torchrun:

    torchrun --nproc_per_node 8 -m bertkit finetune mrpc --data_dir glue/MRPC \\
        --init_checkpoint uncased_L-12_H-768_A-12 --output_dir out/mrpc --do_eval
"""

from __future__ import annotations

from bertkit import BertkitError
from bertkit.tasks.finetune import classify, glue, mrpc, ner, squad

TASKS = {"mrpc": mrpc.main, "glue": glue.main, "classify": classify.main, "squad": squad.main, "ner": ner.main}
BY_TASK_NAME = ("mrpc", "squad", "ner")  # the tasks --task_name may name without a task word


def main(argv: list[str]) -> int:
    task, rest = split_task(argv)
    if task is None:
        print(USAGE)
        return 0 if argv else 2
    return TASKS[task](rest)


USAGE = """usage: bertkit finetune {mrpc,glue,classify,squad,ner} [flags]

  mrpc      paraphrase classification on GLUE's MRPC (the seed's run_classifier.py flags)
  glue      a GLUE task or XNLI: --task_name CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI, XNLI
  classify  classification or regression on your own CSV, TSV or JSON Lines files
  squad     span question answering on SQuAD v1.1 / v2.0 (the seed's run_squad.py flags)
  ner       named-entity tagging on CoNLL-2003 style or JSON Lines files

`--task_name=MRPC` may stand in for the task word. Run `bertkit finetune glue --help` for a task's flags."""


def split_task(argv: list[str]) -> tuple[str | None, list[str]]:
    """The task (from the first word, or --task_name) and the remaining flags. After the word glue,
    --task_name names the GLUE task and goes to it."""
    named = None
    for i, a in enumerate(argv):
        for prefix in ("--task_name", "--task-name"):
            if a == prefix and i + 1 < len(argv):
                named = argv[i + 1]
            elif a.startswith(prefix + "="):
                named = a.split("=", 1)[1]
    word = argv[0] if argv and not argv[0].startswith("-") else None
    if word is None and named is None:
        if not argv or argv[0] in ("-h", "--help"):
            return None, []
        raise BertkitError("name the task: `bertkit finetune mrpc ...`, `bertkit finetune glue --task_name CoLA ...` "
                           "or --task_name=MRPC")
    if word is not None and word.lower() not in TASKS:
        raise BertkitError(f"task {word!r}: bertkit fine-tunes {', '.join(TASKS)}")
    if word is not None and word.lower() in ("glue", "classify"):
        return word.lower(), argv[1:]
    if named is not None and named.lower() not in BY_TASK_NAME:
        raise BertkitError(f"task {named!r}: bertkit fine-tunes {', '.join(BY_TASK_NAME)} only by --task_name alone; GLUE's "
                           f"tasks take the word glue: `bertkit finetune glue --task_name {named} ...`")
    if word is not None and named is not None and word.lower() != named.lower():
        raise BertkitError(f"the task word {word!r} and --task_name={named} disagree")
    return (word or named).lower(), argv[1:] if word is not None else argv
