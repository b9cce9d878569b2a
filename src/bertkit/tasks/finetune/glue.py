"""`bertkit finetune glue --task_name TASK`: the GLUE tasks (CoLA, SST-2, MRPC, STS-B, QQP, MNLI,
QNLI, RTE, WNLI) and XNLI with the seed's run_classifier.py flags, from the files GLUE's
download_glue_data.py writes (glue_data.py reads them). Each task is scored as GLUE scores it:
Matthews correlation (CoLA), Pearson and Spearman correlation (STS-B, a regression on 0-5), F1 and
accuracy (MRPC, QQP), accuracy on both dev sets (MNLI: matched, and mismatched with the suffix _mm),
accuracy (the others). The outputs are sequence_runner's: eval_results.json/.txt, the leaderboard's
submission file (CoLA.tsv, MNLI-m.tsv and MNLI-mm.tsv, ...) and Google's test_results.tsv.

    bertkit finetune glue --task_name CoLA --data_dir glue_data/CoLA --init_checkpoint uncased_L-12_H-768_A-12 \\
        --output_dir out/cola --do_eval --do_predict
"""

from __future__ import annotations

from bertkit import BertkitError
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.tasks.common import run_command
from bertkit.tasks.finetune import glue_data
from bertkit.tasks.finetune import runner as ft
from bertkit.tasks.finetune import sequence_runner


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="bertkit finetune glue", description=(
        "Fine-tune BERT on a GLUE task (or XNLI). Flags take the seed's run_classifier.py names, in "
        "snake_case or kebab-case."))
    flag(p, "task_name", required=True, help=(
        "CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI or XNLI, in any case, with or without "
        "the hyphen (Google's spellings CoLA, MNLI, MRPC, XNLI; GLUE's folders SST-2, STS-B)."))
    flag(p, "data_dir", required=True, help=(
        "The task's folder as GLUE's download_glue_data.py writes it (train.tsv, dev.tsv, test.tsv; MNLI: "
        "dev_matched/dev_mismatched, test_matched/test_mismatched), or the glue_data folder above it. "
        "XNLI: multinli/multinli.train.LANG.tsv, xnli.dev.tsv and xnli.test.tsv, as Google's XnliProcessor."))
    flag(p, "do_eval", type=parse_bool, default=False, help=(
        "Score the dev file(s): eval_results.json, eval_results.txt, eval_predictions.tsv."))
    flag(p, "do_predict", type=parse_bool, default=False, help=(
        "Label the test file(s): GLUE's submission file (CoLA.tsv, MNLI-m.tsv, ...) and Google's test_results.tsv."))
    flag(p, "eval_every", type=int, default=0, help=(
        "With --do_train and --do_eval, also score the (first) dev file every N steps (into log.jsonl); 0: at the end only."))
    flag(p, "xnli_language", default="zh", help=(
        "XNLI: the language read (multinli.train.LANG.tsv, and LANG's rows of xnli.dev.tsv); Google's "
        "XnliProcessor fixes zh."))
    ft.add_flags(p, "cola", max_seq_length=128, task_name=False)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    task = glue_data.find_task(args.task_name)
    fs = ft.FinetuneSettings.from_args(args, task.name)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise BertkitError("nothing to do: give --do_train, --do_eval or --do_predict")
    if args.eval_every < 0 or (args.eval_every and not (args.do_train and args.do_eval)):
        raise BertkitError("--eval_every needs --do_train and --do_eval, and must be >= 0")
    job = read_job(task, args, fs.max_seq_length)  # bad files fail here, before any work
    return run_command(lambda stop: sequence_runner.run(job, fs, stop), fs.run.output_dir)


def read_job(task: glue_data.GlueTask, args, max_seq_length: int) -> sequence_runner.Job:
    """Every file the flags ask for, read and checked."""
    folder = glue_data.task_folder(task, args.data_dir)
    language = args.xnli_language

    def read(split: str) -> dict:
        files = glue_data.split_files(task, split, language)
        return {suffix: glue_data.read_split(task, folder / name, split, language) for suffix, name in files.items()}

    train = read("train")[""] if args.do_train else None
    dev = read("dev") if args.do_eval else {}
    test = read("test") if args.do_predict else {}
    files = {"train_file": str(folder / glue_data.split_files(task, "train", language)[""])}
    submissions = dict(zip(glue_data.split_files(task, "test", language), task.submissions))
    return sequence_runner.Job(task.record(max_seq_length, language if task.name == "xnli" else None), task.metric,
                               train, dev, test, files, submissions, args.eval_every)
