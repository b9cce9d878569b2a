"""The `bertkit` command and the `demo_bert` alias: dispatch to the subcommand named in
commands.COMMANDS, and turn a BertkitError into one line on stderr and exit code 2."""

from __future__ import annotations

import importlib
import sys

from bertkit import BertkitError, __version__
from bertkit.commands import COMMANDS


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
    launcher = importlib.import_module(COMMANDS["demo"][0])
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
