"""The optimisation settings a fine-tuning run takes when their flags are not given: Google's for
base-sized models, a measured recipe for small encoders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bertkit.config import BertConfig


@dataclass(frozen=True)
class Recipe:
    """The optimisation settings a run takes when their flags are not given."""
    learning_rate: float
    num_train_epochs: float
    warmup_proportion: float = 0.1
    layerwise_lr_decay: float = 1.0
    group_by_length: bool = False
    train_batch_size: int = 32  # per process


# The sequence classification tasks: GLUE's (and XNLI), and own files (`finetune classify`).
CLASSIFIERS = ("mrpc", "cola", "sst2", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "xnli", "classify")
# Google's run_classifier.py and run_squad.py flag defaults (lr 5e-5, 3 epochs, 10% warmup), the
# same for every classification task. The BERT paper fine-tuned CoNLL-2003 NER too (section 5.3)
# without printing its chosen values; its fine-tuning grid (appendix A.3: batch 16 or 32, lr 5e-5,
# 3e-5 or 2e-5, 2-4 epochs) holds these.
GOOGLE = {"squad": Recipe(5e-5, 3.0), "ner": Recipe(5e-5, 3.0), **{task: Recipe(5e-5, 3.0) for task in CLASSIFIERS}}
# Small encoders (MiniLM-sized): measured with benchmarks/finetune_mrpc.py, see benchmarks/README.md.
SMALL_MRPC = Recipe(2e-4, 5.0, layerwise_lr_decay=0.8, group_by_length=True, train_batch_size=16)
SMALL = {"mrpc": SMALL_MRPC, "squad": Recipe(1e-4, 2.0, group_by_length=True),
         # Not measured on these tasks yet: they borrow MRPC's measured small-model recipe
         # (benchmarks/finetune_glue.py measures CoLA, SST-2, STS-B and RTE against transformers,
         # benchmarks/finetune_ner.py CoNLL-2003 NER).
         "ner": SMALL_MRPC, **{task: SMALL_MRPC for task in CLASSIFIERS if task != "mrpc"}}
SMALL_MODEL_PARAMS = 30_000_000  # encoder parameters (embeddings excluded) below which SMALL applies


def encoder_params(config: BertConfig) -> int:
    """Parameters of the Transformer layers alone (what sets a model's capacity, not its vocabulary)."""
    H, I = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * H * H + 2 * H * I + 9 * H + I)


RECIPE_FIELDS = ("learning_rate", "num_train_epochs", "warmup_proportion", "layerwise_lr_decay", "group_by_length",
                 "train_batch_size")


def choose_recipe(settings, config: BertConfig, log: Callable[[str], None] = print) -> dict:
    """The values of the optimisation settings left unset (None), from the task's recipe for this
    model size (`settings.task`: squad, ner or a name in CLASSIFIERS).

    A learning rate given on the command line keeps Google's meaning, one rate for every layer: the
    small-model recipe's extras that change what that rate does (layer-wise decay, and the batch
    size it was tuned with) then take Google's values unless their own flags ask for them."""
    task = settings.task
    small = encoder_params(config) < SMALL_MODEL_PARAMS
    recipe = (SMALL if small else GOOGLE)[task]
    unset = [k for k in RECIPE_FIELDS if getattr(settings, k) is None]
    rate_given, kept_google, chosen = settings.learning_rate is not None, [], {}
    for k in unset:
        if rate_given and k in ("layerwise_lr_decay", "train_batch_size") and \
                getattr(recipe, k) != getattr(GOOGLE[task], k):
            kept_google.append(f"{k} {getattr(recipe, k)}")
            chosen[k] = getattr(GOOGLE[task], k)
        else:
            chosen[k] = getattr(recipe, k)
    if unset and settings.do_train:
        log(f"recipe ({'small-model' if small else 'Google'} defaults for {task}): "
            + ", ".join(f"{k} {v}" for k, v in chosen.items()))
    if kept_google and settings.do_train:
        log(f"--learning_rate {settings.learning_rate:g} given: one rate for every layer, as in Google's scripts; "
            f"the small-model recipe's {' and '.join(kept_google)} apply only when their own flags ask for them")
    return chosen
