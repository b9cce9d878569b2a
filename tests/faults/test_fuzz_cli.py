"""Fuzzing of `bertkit` command lines, in-process through `bertkit.cli.main`: random flags (each
subcommand's own, read from its --help) with random values, junk tokens and broken spellings. The
command must exit 0 or 2 with at most a one-line error, never raise. No example may start long
work: every path given is missing or an empty folder, the network is cut (urlopen fails at once),
and `bertkit demo` always ends with --dry_run. BERTKIT_FUZZ_SCALE multiplies the example counts."""

import contextlib
import io
import os
import re
import tempfile
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit.commands import COMMANDS
from bertkit.cli import main as bertkit

SCALE = float(os.environ.get("BERTKIT_FUZZ_SCALE", "1"))
# Every command path (subcommands have their own flags), and a start of a command line that parses
# but names only missing inputs: the random flags after it then reach the commands' own checks.
BASES = {
    "convert": ["-i", "missing", "-o", "out"],
    "download-model": ["tiny", "--output", "out"],  # the network is cut
    "pretrain": ["--input_files_dir", "missing", "--output_dir", "out", "--bert_config_file", "tiny"],
    "squad-eval": ["missing.json", "missing-predictions.json"],
    "plot": ["missing.jsonl", "-o", "curve.png"],
    "data create": ["missing.txt", "-o", "out"],
    "data format": ["missing.txt", "-o", "out"],
    "data dump": ["missing.tfrecord"],
    "data verify": ["missing"],
    "data download": ["wiki_only", "-o", "out"],
    "data extract": ["missing.xml", "-o", "out"],
    "data prepare": ["--input", "missing.txt", "--workdir", "out"],
    "finetune mrpc": ["--data_dir", "missing", "--output_dir", "out", "--init_checkpoint", "missing"],
    "finetune squad": ["--train_file", "missing.json", "--output_dir", "out", "--init_checkpoint", "missing"],
    "finetune glue": ["--task_name", "CoLA", "--data_dir", "missing", "--output_dir", "out", "--init_checkpoint",
                      "missing", "--do_eval"],
    "finetune classify": ["--train_file", "missing.csv", "--validation_file", "missing.jsonl", "--output_dir", "out",
                          "--init_checkpoint", "missing"],
    "finetune ner": ["--train_file", "missing.txt", "--validation_file", "missing.jsonl", "--output_dir", "out",
                     "--init_checkpoint", "missing"],
    "predict": ["--model", "missing", "--input", "missing.csv"],
    "demo": ["-c", "pretraining", "-o", "out"],
}
COMMAND_PATHS = [name.split() for name in BASES]
# Flags that would let an example start real work, which the fuzzing must not do.
NEVER = {"--dry_run", "--dry-run", "--nodry_run"}


def available(path: list[str]) -> bool:
    import importlib.util

    return importlib.util.find_spec(COMMANDS[path[0]][0]) is not None


def run(argv: list[str]) -> tuple[int, str, str]:
    """`bertkit ARGV` in an empty scratch folder, without network; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.chdir(scratch)  # (contextlib.chdir is Python 3.11+)
        try:
            code = bertkit(argv)
        except SystemExit as e:  # argparse's --help (and --version) exit 0 by design
            code = e.code
        finally:
            os.chdir(here)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """No network, and downloads cached in a scratch folder, for the whole module."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("the network is cut in this test")

    mp = pytest.MonkeyPatch()
    mp.setattr(urllib.request, "urlopen", refuse)
    mp.setenv("BERTKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def flags() -> dict[str, list[str]]:
    """Each command's option strings, as its --help lists them."""
    found = {}
    for path in COMMAND_PATHS:
        if not available(path):
            continue
        code, out, _ = run([*path, "--help"])
        assert code == 0, path
        found[" ".join(path)] = sorted(set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", out)) - NEVER)
        assert found[" ".join(path)], path
    return found


values = st.one_of(
    st.sampled_from(["", ".", "0", "1", "-1", "2", "8", "128", "512", "0.1", "1e-3", "1e309", "nan", "-inf", "true",
                     "false", "none", "mrpc", "squad", "MRPC", "fp32", "fp16", "bf16", "cpu", "cuda:7", "auto",
                     "tiny", "mini", "overfit", "bookswiki", "wiki_books", "sentences", "regex", "128:20", "128:x",
                     "8,2", "=", "-", "--", "a,b", "missing/file.json", "missing.zip", "http://127.0.0.1:9/x",
                     "../outside", "~", "$HOME"]),
    st.integers(-2**40, 2**40).map(str),
    st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), max_size=8),
)


@st.composite
def command_lines(draw, path: list[str], options: list[str]) -> list[str]:
    tokens = list(BASES[" ".join(path)]) if draw(st.integers(0, 4)) else []  # mostly from a parsing start
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["flag value"] * 4 + ["flag=value", "flag", "value"]))
        flag = draw(st.sampled_from(options))
        value = draw(values)
        if kind == "flag=value" and value == "--":
            kind = "flag value"  # `--flag=--`: see test_flag_equals_double_dash
        tokens += {"flag value": [flag, value], "flag=value": [f"{flag}={value}"], "flag": [flag],
                   "value": [value]}[kind]
    if path == ["demo"]:
        tokens.append("--dry_run")  # the launcher prints its plan and stops
    return [*path, *tokens]


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=" ".join)
def test_command_lines(path, flags):
    if not available(path):
        pytest.skip(f"bertkit {' '.join(path)} is not written yet")
    options = flags[" ".join(path)]

    @settings(max_examples=max(1, int(60 * SCALE)), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(argv=command_lines(path, options))
    def check(argv):
        code, _, err = run(argv)
        assert code in (0, 2), (argv, code, err[-2000:])
        assert "Traceback" not in err, (argv, err[-2000:])
        if code == 2:
            errors = [line for line in err.splitlines() if ": error: " in line]
            assert len(errors) == 1, (argv, err[-2000:])

    check()


@given(argv=st.lists(values, max_size=4))
@settings(max_examples=max(1, int(100 * SCALE)), deadline=None, database=None)
def test_top_level(argv):
    code, _, err = run(argv)
    assert code in (0, 2) and "Traceback" not in err, (argv, code, err)


def test_flag_equals_double_dash():
    """argparse before Python 3.12 reads `--flag=--` as an empty list for a one-value flag."""
    code, _, err = run(["pretrain", *BASES["pretrain"], "--learning_rate=--"])
    assert code == 2 and "Traceback" not in err and "expected one argument" in err
