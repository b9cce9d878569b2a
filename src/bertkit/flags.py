"""Command-line flags as every bertkit command spells them: both `--snake_case` and `--kebab-case`,
absl-style booleans (`--do_train`, `--nodo_train`, `--do_train=false`), and parse errors raised as
BertkitError so that a bad flag is one line and exit code 2."""

from __future__ import annotations

import argparse

from bertkit import BertkitError

PRECISIONS = ("fp32", "bf16", "fp16")

def parse_bool(text: str) -> bool:
    """TensorFlow-style boolean flag values: true/false, 1/0, yes/no, any case."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y", "t"):
        return True
    if value in ("false", "0", "no", "n", "f", "none", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def flag(parser: argparse.ArgumentParser, name: str, *short: str, **kwargs) -> None:
    """Add `--name` in both spellings (`--train_batch_size` and `--train-batch-size`).

    A flag with `type=parse_bool` also takes the bare forms of absl flags: `--do_train` means true and
    `--nodo_train` means false, so the seed's command lines (`--horovod`, `--noamp`) parse unchanged.
    """
    snake = name.replace("-", "_")
    spellings = list(short) + [f"--{snake}"]
    if "_" in snake:
        spellings.append(f"--{snake.replace('_', '-')}")
    kwargs.setdefault("dest", snake)
    if kwargs.get("type") is parse_bool:
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
        parser.add_argument(*spellings, **kwargs)
        parser.add_argument(f"--no{snake}", dest=snake, action="store_false", help=argparse.SUPPRESS)
    else:
        parser.add_argument(*spellings, **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors raised as BertkitError, so a bad flag is one line and exit code 2
    whether the parser runs under the CLI or inside a test."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BertkitError(message)

    def _get_values(self, action, arg_strings):
        # Python 3.11's argparse reads `--flag=--` as an empty list instead of refusing it.
        if action.nargs in (None, "?") and action.option_strings and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return super()._get_values(action, arg_strings)
