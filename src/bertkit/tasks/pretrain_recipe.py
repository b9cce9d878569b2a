"""The learning rate and warm-up a pretraining run takes when their flags are not given.

    given --learning_rate                  that rate; --num_warmup_steps, else run_pretraining.py's 10000
    --init_checkpoint, no --learning_rate  the continued-pretraining recipe for the optimizer and global batch
    neither                                run_pretraining.py's defaults: 5e-5, 10000 warm-up steps

A rate given on the command line means exactly that rate (the seed's command lines give every rate,
and run as before). The recipe is for the common case of going on pretraining a published
checkpoint on one's own corpus, where run_pretraining.py's 5e-5 with a 10,000-step warm-up barely
moves LAMB in the steps a small batch gets (benchmarks/README.md, "Time to a masked-LM accuracy").
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ContinuedRecipe:
    """Peak rate `lr` at a global batch of `batch`, scaled by sqrt(global batch / batch) up to
    `max_lr`; warm-up over `warmup_share` of the steps, at most `max_warmup` steps."""

    lr: float
    max_lr: float
    warmup_share: float = 0.01
    max_warmup: int = 100
    batch: int = 32

    def learning_rate(self, global_batch: int) -> float:
        return min(self.max_lr, self.lr * math.sqrt(global_batch / self.batch))

    def warmup(self, num_train_steps: int) -> int:
        return min(self.max_warmup, int(self.warmup_share * num_train_steps))


# Continued pretraining, per optimizer, measured with benchmarks/time_to_quality.py (MiniLM on
# WikiText-2, batch 32, one thread; benchmarks/README.md, "Time to a masked-LM accuracy"). Held-out
# accuracy after 80 steps on --no_nsp blocks: LAMB 2e-3 16.9%, AdamW 3e-4 17.5%, AdamW 1e-3 10.0%;
# LAMB 1e-2 (this recipe's first guess) fell to predicting one token (5.8%) and stayed there for 200
# steps of sentence pairs, and AdamW 1e-3 for its first 40.
# The square-root rule carries the rate to larger batches, capped at NVIDIA's phase-1 LAMB rate
# (6e-3, for a batch of 65,536) and at twice the measured AdamW rate: neither cap was measured here.
CONTINUED = {"lamb": ContinuedRecipe(lr=2e-3, max_lr=6e-3), "adamw": ContinuedRecipe(lr=3e-4, max_lr=6e-4)}
GOOGLE_LR, GOOGLE_WARMUP = 5e-5, 10000  # run_pretraining.py's flag defaults


@dataclass(frozen=True)
class Schedule:
    learning_rate: float
    num_warmup_steps: int
    source: str  # "flags", "continued-pretraining recipe" or "run_pretraining.py defaults"
    note: str | None  # the line printed at start, when anything was left to a default


def choose_schedule(learning_rate: float | None, num_warmup_steps: int | None, optimizer: str,
                    global_batch: int, num_train_steps: int, init_checkpoint: str | None) -> Schedule:
    """The rate and warm-up of a run from its flags (None: not given); see the module docstring."""
    if learning_rate is not None:
        # quiet, as before: a warm-up longer than the run has its own note (optim.long_warmup_note)
        return Schedule(learning_rate, GOOGLE_WARMUP if num_warmup_steps is None else num_warmup_steps, "flags", None)
    if init_checkpoint:
        recipe = CONTINUED[optimizer]
        lr = recipe.learning_rate(global_batch)
        warmup = recipe.warmup(num_train_steps) if num_warmup_steps is None else num_warmup_steps
        how = ("given" if num_warmup_steps is not None else
               f"{recipe.warmup_share:.0%} of {num_train_steps} steps, at most {recipe.max_warmup}")
        return Schedule(lr, warmup, "continued-pretraining recipe", (
            f"recipe (continued pretraining from --init_checkpoint, no --learning_rate): {optimizer} learning rate "
            f"{lr:.4g} ({recipe.lr:g} x sqrt(global batch {global_batch} / {recipe.batch}), at most "
            f"{recipe.max_lr:g}), warm-up {warmup} steps ({how}); --learning_rate sets the rate"))
    warmup = GOOGLE_WARMUP if num_warmup_steps is None else num_warmup_steps
    return Schedule(GOOGLE_LR, warmup, "run_pretraining.py defaults", (
        f"no --learning_rate: run_pretraining.py's {GOOGLE_LR:g}, warm-up {warmup} steps (pretraining from "
        "scratch; --init_checkpoint takes the continued-pretraining recipe)"))
