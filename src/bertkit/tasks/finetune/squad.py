"""`bertkit finetune squad`: span question answering on SQuAD v1.1 or v2.0 with the seed's
run_squad.py flags. Writes, in --output_dir:

- `ckpt-<step>/`: the fine-tuned model (a bertkit checkpoint with its span head);
- `predictions.json` (question id -> answer text), `nbest_predictions.json` and, with
  --version_2_with_negative, `null_odds.json` (--do_predict);
- `eval_results.json`: exact_match and f1 (percentages, the official definitions, as
  `bertkit squad-eval` computes them) when the predict file has answers (--do_eval, the seed's
  flag, asks for them and says so when there are none);
- `train_results.json`: steps, seconds of training, the last logged losses.

Training questions whose answer text is not found at its `answer_start` are skipped and counted
(as Google's run_squad.py drops them); questions longer than --max_query_length tokens are cut.

    bertkit finetune squad --train_file train-v1.1.json --predict_file dev-v1.1.json \\
        --init_checkpoint uncased_L-12_H-768_A-12 --output_dir out/squad --do_predict
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
import torch.nn.functional as F

from bertkit import BertkitError
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.io import write_json
from bertkit.model import BertForQuestionAnswering
from bertkit.tasks.finetune import runner as ft
from bertkit.tasks.finetune import squad_data as squad
from bertkit.tasks.finetune.squad_metric import evaluate
from bertkit.tasks.finetune.squad_predict import postprocess, write_predictions
from bertkit.tasks.common import run_command
from bertkit.train import StopFlag, infer


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="bertkit finetune squad", description=(
        "Fine-tune BERT on SQuAD (v1.1, or v2.0 with unanswerable questions). Flags take the seed's "
        "run_squad.py names, in snake_case or kebab-case."))
    flag(p, "train_file", default=None, help="SQuAD JSON to train on (train-v1.1.json); needed by --do_train.")
    flag(p, "predict_file", default=None, help="SQuAD JSON to answer (dev-v1.1.json); needed by --do_predict.")
    flag(p, "do_predict", type=parse_bool, default=False, help=(
        "Answer --predict_file: predictions.json, nbest_predictions.json, and eval_results.json when it has answers."))
    flag(p, "do_eval", type=parse_bool, default=False, help=(
        "Score the predictions of --predict_file against its answers (eval_results.json; implies --do_predict, "
        "the seed's run_squad.py flag); a predict file without answers is said so."))
    flag(p, "doc_stride", type=int, default=squad.DOC_STRIDE,
         help="Tokens between the starts of a long context's windows.")
    flag(p, "max_query_length", type=int, default=squad.MAX_QUERY_LENGTH,
         help="Questions are cut to this many tokens.")
    flag(p, "n_best_size", type=int, default=squad.N_BEST_SIZE,
         help="Start and end candidates per window, and answers kept in nbest_predictions.json.")
    flag(p, "max_answer_length", type=int, default=squad.MAX_ANSWER_LENGTH, help="Longest answer, in tokens.")
    flag(p, "version_2_with_negative", type=parse_bool, default=False,
         help="SQuAD v2.0: questions may have no answer (is_impossible); predict \"\" when the null score wins.")
    flag(p, "null_score_diff_threshold", type=float, default=0.0,
         help="v2.0: predict no answer when null score - best span score exceeds this.")
    ft.add_flags(p, "squad", max_seq_length=squad.MAX_SEQ_LENGTH)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    fs = ft.FinetuneSettings.from_args(args, "SQuAD")
    args.do_predict = args.do_predict or args.do_eval  # nothing to score without predictions
    if not (args.do_train or args.do_predict):
        raise BertkitError("nothing to do: give --do_train, --do_predict or --do_eval")
    if args.do_train and not args.train_file:
        raise BertkitError("--do_train needs --train_file (or pass --do_train=false)")
    if args.do_predict and not args.predict_file:
        raise BertkitError(f"--{'do_eval' if args.do_eval else 'do_predict'} needs --predict_file")
    for name in ("doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
        if getattr(args, name) < 1:
            raise BertkitError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_seq_length < args.max_query_length + 4:
        raise BertkitError(f"--max_seq_length ({args.max_seq_length}) must exceed --max_query_length "
                           f"({args.max_query_length}) + 3, to leave room for the context")
    return run_command(lambda stop: run(args, fs, stop), fs.run.output_dir)


def span_loss(model, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean of the start and end cross-entropies (Google's run_squad.py)."""
    start, end = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])  # (B, T) each
    loss = (F.cross_entropy(start.float(), b["start_positions"]) + F.cross_entropy(end.float(), b["end_positions"])) / 2
    return loss, {}


def span_rows(model, b: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each window's start and end logits over its own tokens (T_i,)."""
    start, end = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])  # (B, T) each
    lengths = b["attention_mask"].sum(1).tolist()
    s, e = start.float().cpu().numpy(), end.float().cpu().numpy()
    return [(s[i, :n], e[i, :n]) for i, n in enumerate(lengths)]


def report_cut_questions(examples, tokenizer, max_query_length: int, path: str) -> int:
    lengths = [len(ids) for ids in tokenizer.encode_batch([ex.question for ex in examples])]
    cut = [ex.qid for ex, n in zip(examples, lengths) if n > max_query_length]
    if cut:
        ft.say(f"{path}: {len(cut)} question(s) longer than --max_query_length {max_query_length} tokens were "
               f"cut to fit (first: {cut[0]})")
    return len(cut)


def run(args, fs: ft.FinetuneSettings, stop: StopFlag) -> int:
    """The SQuAD command's work: `args` for its own flags (files, windows), `fs` for the shared ones."""
    v2 = args.version_2_with_negative
    train_examples = predict_examples = None
    if args.do_train:
        train_examples = squad.read_squad(args.train_file, is_training=True, version_2=v2)
        if train_examples.skipped:
            qid, why = train_examples.skipped[0]
            ft.say(f"{args.train_file}: skipped {len(train_examples.skipped)} training question(s) whose answer "
                   f"could not be placed in its context (first: question {qid}: {why})")
        if not train_examples:
            raise BertkitError(f"{args.train_file}: no question to train on")
    if args.do_predict:
        predict_examples = squad.read_squad(args.predict_file, is_training=False, version_2=v2)
        if not predict_examples:
            raise BertkitError(f"{args.predict_file}: no question to answer")

    s = ft.setup(fs)
    d, fs = s.d, s.settings
    out = fs.run.output_dir
    torch.manual_seed(fs.run.seed)  # the span head's initialisation, the same on every rank
    model = ft.build(BertForQuestionAnswering(s.config), s)
    multiple = 8 if d.device.type != "cpu" else None  # see tasks/mrpc.py
    collate = functools.partial(squad.collate, pad_id=s.tokenizer.pad_id, pad_to_multiple_of=multiple)
    windows = dict(max_seq_length=fs.max_seq_length, doc_stride=args.doc_stride,
                   max_query_length=args.max_query_length)
    results: dict = {}
    net = model
    if args.do_train:
        report_cut_questions(train_examples, s.tokenizer, args.max_query_length, args.train_file)
        features = squad.make_features(train_examples, s.tokenizer, is_training=True, **windows)
        run_id = ft.run_id(s, {"train_file": args.train_file, "doc_stride": args.doc_stride,
                               "max_query_length": args.max_query_length, "version_2": v2})
        # Steps count examples, not windows, as Google's run_squad.py does.
        net, summary = ft.train(model, features, collate, span_loss, len(train_examples), s, run_id, stop)
        summary["skipped_training_questions"] = len(train_examples.skipped)
        if d.is_main:
            write_json(out / "train_results.json", summary)
    else:
        net = model.to(d.device)
    if args.do_predict:
        report_cut_questions(predict_examples, s.tokenizer, args.max_query_length, args.predict_file)
        features = squad.make_features(predict_examples, s.tokenizer, is_training=False, **windows)
        rows = infer(net, features, collate, span_rows, fs.eval_batch_size, d, fs.run.precision)
        if d.is_main:
            predictions, nbest, null_odds = postprocess(
                predict_examples, features, [r[0] for r in rows], [r[1] for r in rows],
                n_best_size=args.n_best_size, max_answer_length=args.max_answer_length, lowercase=s.lowercase,
                version_2=v2, null_score_diff_threshold=args.null_score_diff_threshold)
            out.mkdir(parents=True, exist_ok=True)
            write_predictions(out, predictions, nbest, null_odds if v2 else None)
            results = score(args.predict_file, predictions, null_odds if v2 else None)
            if results:
                write_json(out / "eval_results.json", results)
                if args.do_eval:
                    ft.say("eval: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()
                                                if k in ("exact_match", "exact", "f1")))
            elif args.do_eval:
                ft.say(f"--do_eval: {args.predict_file} has no answers to score against; predictions written, "
                       "no eval_results.json")
            else:
                ft.say(f"{args.predict_file} has no answers: predictions written, nothing to score")
    if d.is_main:
        print(json.dumps(results))
    return 0


def score(path: str, predictions: dict[str, str], null_odds: dict[str, float] | None) -> dict:
    """exact_match and f1 as `bertkit squad-eval` gives them; {} when the file holds no answers.
    For v2.0 also the best no-answer thresholds over the null odds (which leave the scores as
    they are: the threshold there is infinite)."""
    data = squad.load_json(path)
    has_gold = any(qa.get("answers") or qa.get("is_impossible") for _, qa in squad.iter_questions(data, path))
    if not has_gold:
        return {}
    result = evaluate(data, predictions, null_odds, na_prob_thresh=float("inf"), source=path) \
        if null_odds is not None else evaluate(data, predictions, source=path)
    result.pop("missing", None)
    return result
