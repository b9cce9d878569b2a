"""`bertkit demo` and `demo_bert`: the seed's demo_bert.py command line, on PyTorch's own launcher.

With no -c/--command it runs the demo (bundled corpus -> tiny BERT -> bundled MRPC sample, see
demo.py). With the seed's flags it resolves the seed's defaults and recipes, then runs
`bertkit pretrain` / `bertkit finetune` in this process, under torchrun with one worker per device
(-v N), on every server of MULTI_HLS_IPS over ssh, or, with --kubernetes_run, inside the ranks that
an outside launcher (a PyTorchJob's torchrun, an MPIJob's mpirun) started:

    demo_bert -c pretraining -m large -d bf16 -t bookswiki --dataset_path DATA -v 8
    MULTI_HLS_IPS=10.0.0.1,10.0.0.2 demo_bert -c finetuning -m large -d bf16 -t squad --dataset_path SQUAD -v 8
    mpirun -np 16 ... bertkit demo -c pretraining ... --use_horovod=1 --kubernetes_run=True [--run_phase2=True]

The pure functions here (`settings`, `pretrain_argv`, `finetune_argv`) turn flags into the exact
`bertkit` command lines, so `--dry_run` and the tests see them without running anything.

The package: seed_flags (the flags), recipes (the seed's defaults as arithmetic), argv (the bertkit
command lines), paths (data and models), topology and steps (who runs the workers, and running
them), spawn (torchrun and ssh), plans (the steps of a run), demo (the bundled demo).
"""

from __future__ import annotations

from bertkit import BertkitError
from bertkit.launcher import demo
from bertkit.launcher.steps import check_hosts, execute, show
from bertkit.launcher.plans import finetuning_steps, pretraining_steps
from bertkit.launcher.recipes import settings
from bertkit.launcher.seed_flags import parser, say
from bertkit.launcher.topology import detect


def notes_for_tf_flags(args) -> list[str]:
    notes = []
    if args.enable_scoped_allocator:
        notes.append("--enable_scoped_allocator is a TensorFlow graph optimisation; PyTorch DDP always fuses "
                     "gradients into buckets, so it has no effect here")
    if args.horovod_hierarchical_allreduce:
        notes.append("--horovod_hierarchical_allreduce is a Horovod option; NCCL picks its own algorithms across "
                     "servers and gloo has none, so it has no effect here")
    return notes


def main(argv: list[str], shell=None) -> int:
    """`bertkit demo` / `demo_bert`. `shell(host, command) -> argv` replaces ssh for MULTI_HLS_IPS."""
    args = parser().parse_args(argv)
    if args.dist_timeout is not None and not args.dist_timeout > 0:
        raise BertkitError(f"--dist_timeout must be > 0, got {args.dist_timeout:g}")
    if args.command is None:
        return demo.run(args, shell)
    if args.quick:
        raise BertkitError("--quick is for the demo (no -c/--command)")
    topo = detect(args)
    s = settings(args, topo.world_size)
    if not args.dry_run:
        check_hosts(topo, shell)
    for note in (*notes_for_tf_flags(args), *s.notes):
        if topo.rank == 0:
            say(f"note: {note}")
    if args.run_phase2 and s.command != "pretraining":
        raise BertkitError("--run_phase2 is for pretraining")
    if args.run_phase2 and s.test_set != "bookswiki":
        raise BertkitError("--run_phase2: overfit has one phase")
    steps = pretraining_steps(args, s, topo) if s.command == "pretraining" else finetuning_steps(args, s, topo)
    if args.dry_run:
        show(steps, topo, args, shell)
        return 0
    return execute(steps, topo, args, shell)
