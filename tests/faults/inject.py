"""Run `bertkit` with one fault injected, for the fault tests (not a test itself).

    BERTKIT_FAULT=KIND:ARG python tests/faults/inject.py pretrain --output_dir ...

The process dies with os._exit(9), as a SIGKILL or a power cut leaves it: no cleanup, no flush,
no `finally`. KIND:ARG is one of

    before_rename:NAME   the finished folder NAME is still under its temporary name
    after_rename:NAME    NAME has just been renamed into place (the temporary folder is not yet removed)
    half_weights:N       the Nth model.safetensors written is cut to half its bytes
    half_optimizer:N     the Nth optimizer.pt written is cut to half its bytes
    during_prune:NAME    the first file of the old checkpoint NAME has been deleted, the rest not
    kill_rank:R:N        rank R SIGKILLs itself at its Nth training micro-step, on the first attempt of
                         a torchrun job only (TORCHELASTIC_RESTART_COUNT=0); touches $BERTKIT_FAULT_MARKER
    nan_batch:N          the Nth micro-batch's masked-LM weights are NaN (a NaN in the data path)
    inf_grad:N           the Nth micro-step's gradients are infinite while its loss is finite

Runs with $BERTKIT_THREADS torch threads (default 1): compare it bit for bit only with runs on as many.
"""

import os
import signal
import sys
from pathlib import Path

import torch



def die() -> None:
    sys.stderr.flush()
    os._exit(9)


def counter(n: int):
    """A function that is true on its nth call only."""
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == n
    return hit


class InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (an fp16 overflow, on demand)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def fault_loss(kind: str, arg: str, real_loss):
    """`real_loss` (the pretraining loss) with the loss-level faults: kill_rank, nan_batch, inf_grad."""
    if kind == "kill_rank":
        rank, n = (int(x) for x in arg.split(":"))
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        hit = counter(n) if int(os.environ.get("RANK", "0")) == rank and first_attempt else (lambda: False)
    else:
        hit = counter(int(arg))

    def loss(model, batch):
        fire = hit()
        if fire and kind == "kill_rank":
            Path(os.environ["BERTKIT_FAULT_MARKER"]).write_text(f"rank {rank} killed at micro-step {n}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        if fire and kind == "nan_batch":
            batch = {**batch, "masked_lm_weights": torch.full_like(batch["masked_lm_weights"], float("nan"))}
        value, metrics = real_loss(model, batch)
        if fire and kind == "inf_grad":
            value = InfGrad.apply(value)
        return value, metrics
    return loss



def install(kind: str, arg: str) -> None:
    """Patch this process for the process-level faults (see the module docstring)."""
    if kind in ("before_rename", "after_rename"):
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if os.path.basename(os.fspath(dst)) == arg and kind == "before_rename":
                die()
            real_replace(src, dst, *a, **k)
            if os.path.basename(os.fspath(dst)) == arg:
                die()
        os.replace = replace

    elif kind == "half_weights":
        import bertkit.checkpoint as ckpt

        real_save_file, hit = ckpt.save_file, counter(int(arg))

        def save_file(tensors, path, *a, **k):
            real_save_file(tensors, path, *a, **k)
            if hit():
                os.truncate(path, os.path.getsize(path) // 2)
                die()
        ckpt.save_file = save_file

    elif kind == "half_optimizer":
        real_save, hit = torch.save, counter(int(arg))

        def save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            if hit():
                if not isinstance(f, (str, os.PathLike)):  # an open file
                    f.flush()
                path = f if isinstance(f, (str, os.PathLike)) else f.name
                os.truncate(path, os.path.getsize(path) // 2)
                die()
        torch.save = save

    elif kind == "during_prune":
        real_unlink = os.unlink

        def unlink(path, *a, dir_fd=None, **k):
            real_unlink(path, *a, dir_fd=dir_fd, **k)
            if dir_fd is not None and os.path.basename(os.readlink(f"/proc/self/fd/{dir_fd}")) == arg:
                die()
            if dir_fd is None and os.path.basename(os.path.dirname(os.fspath(path))) == arg:
                die()
        os.unlink = unlink

    elif kind in ("kill_rank", "nan_batch", "inf_grad"):
        import bertkit.tasks.pretrain as pretrain

        pretrain.pretraining_loss = fault_loss(kind, arg, pretrain.pretraining_loss)


if __name__ == "__main__":
    from bertkit.cli import main

    torch.set_num_threads(int(os.environ.get("BERTKIT_THREADS", "1")))
    install(*os.environ.get("BERTKIT_FAULT", "none:").partition(":")[::2])

    sys.exit(main(sys.argv[1:]))
