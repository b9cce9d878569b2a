"""The `bertkit` command. Each subcommand is a `main(argv)` function in its own module, imported only
when called so that `bertkit --help` stays fast and a broken optional dependency breaks one command."""

from __future__ import annotations

import argparse
import importlib
import sys

from bertkit import BertkitError, __version__

# name -> (module holding `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("bertkit.convert", "convert a checkpoint between Google, Hugging Face and bertkit formats"),
    "download-model": ("bertkit.download", "download one of Google's pretrained BERT checkpoints"),
    "data": ("bertkit.data.cli", "download, format and shard pretraining data; read TFRecords"),
    "pretrain": ("bertkit.tasks.pretrain", "pretrain BERT (masked LM + next sentence) with LAMB"),
    "finetune": ("bertkit.tasks.finetune", "fine-tune on MRPC or SQuAD"),
    "squad-eval": ("bertkit.data.squad_metric", "score SQuAD predictions with the official definitions"),
    "demo": ("bertkit.launcher", "the seed's demo_bert.py interface: one card to many servers"),
    "plot": ("bertkit.plot", "plot the loss curve of a training log"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"bertkit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bertkit: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run(module.main, rest, prog=f"bertkit {name}")


def demo_bert(argv: list[str] | None = None) -> int:
    """The `demo_bert` console alias: the seed's launcher command line, unchanged."""
    from bertkit import launcher

    return run(launcher.main, sys.argv[1:] if argv is None else argv, prog="demo_bert")


def run(fn, argv: list[str], prog: str) -> int:
    """Call a subcommand; a BertkitError becomes one line on stderr and exit code 2."""
    try:
        return fn(argv) or 0
    except BertkitError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: bertkit <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `bertkit <command> --help` for a command's options."]
    return "\n".join(lines)


# ---- flag helpers shared by the subcommands ----------------------------------------------------

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
