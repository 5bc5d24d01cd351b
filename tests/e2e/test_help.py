"""Every ``python -m apr_jax.*`` command (found by walking the package) and
subcommand answers ``--help`` and ``-h`` with exit 0 and its help on stdout:
usage line, one line per flag the parser accepts, an example, where the config
keys are. The help comes from the ``COMMAND`` its parser reads argv by."""

import importlib
import importlib.util
import os
import re
import subprocess
import sys

import pytest
from helpers.paths import REPO_ROOT

from apr_jax import cli
from apr_jax.cli import parse_command_line
from apr_jax.config.checks import ConfigError

REPO = REPO_ROOT
PACKAGE = os.path.join(REPO, "apr_jax")
MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*["']__main__["']\s*:""", re.MULTILINE)


def entry_points() -> list[str]:
    """What ``python -m`` runs: each module with an ``if __name__ ==
    "__main__"`` guard and each package with a ``__main__.py``."""
    found = []
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
            if name == "__main__.py":
                found.append(module.removesuffix(".__main__"))
            else:
                with open(path, encoding="utf-8") as f:
                    if MAIN_GUARD.search(f.read()):
                        found.append(module)
    return found


ENTRY_POINTS = entry_points()


def load(name: str):
    """The module that ``python -m name`` runs."""
    is_package = os.path.isfile(os.path.join(REPO, *name.split("."), "__main__.py"))
    return importlib.import_module(f"{name}.__main__" if is_package else name)


def walk(command: cli.Command, prefix: tuple[str, ...] = ()):
    """(argv prefix, command) for the command and each subcommand."""
    yield prefix, command
    for sub in command.subcommands:
        yield from walk(sub, (*prefix, sub.name))


def check_help_text(text: str, command: cli.Command) -> None:
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: {command.prog}"), lines[0]
    for flag in command.flags:  # every flag the parser accepts, one line with its help
        rows = [line for line in lines if line.startswith(f"  {flag.form} ")]
        assert len(rows) == 1 and flag.help in rows[0], (flag, rows)
    for arg in command.args:
        assert arg.name in lines[0] and any(line.startswith(f"  {arg.name} ") for line in lines)
    assert any(line.startswith("  -h, --help ") for line in lines)
    assert ("  --config.KEY=VALUE " in text) == bool(command.overrides)
    heading = next(i for i, line in enumerate(lines) if line in ("example:", "examples:"))
    assert lines[heading + 1].startswith(f"  {command.prog}"), lines[heading + 1]
    assert "python -m apr_jax.train --print_config" in text and "--config.a.b=value" in text


def test_discovery_finds_the_commands():
    expected = {
        "apr_jax.train",
        "apr_jax.evaluate",
        "apr_jax.compare",
        "apr_jax.convert",
        "apr_jax.aot",
        "apr_jax.data",
        "apr_jax.rl.curve",
        "apr_jax.failures",
        "apr_jax.tasks.examples.arithmetic",
    }
    assert expected <= set(ENTRY_POINTS), ENTRY_POINTS
    assert "apr_jax.runtime.processes" not in ENTRY_POINTS  # names __main__ in a docstring only


def check_command(main, command: cli.Command, capsys) -> None:
    """``main`` answers help for the command and each subcommand, and reads
    argv by the same ``Command`` its help is made from."""
    for prefix, sub in walk(command):
        for ask in (["--help"], ["-h"], ["--no-such-flag", "-h"]):  # anywhere in argv
            assert main([*prefix, *ask]) == 0, (prefix, ask)
            out, err = capsys.readouterr()
            assert err == "" and out == sub.help_text() + "\n", (prefix, ask, err)
            check_help_text(out, sub)
        if sub.subcommands:
            continue
        # The parser knows each flag the help lists...
        for flag in sub.flags:
            assert main([*prefix, f"--{flag.name}_"]) == cli.USAGE_ERROR
            assert capsys.readouterr().err == (f"error: unknown flag --{flag.name}_; did you mean --{flag.name}?\n"), (
                flag
            )
        # ...and nothing else: an unknown flag is still one line and exit 2.
        assert main([*prefix, "--no-such-flag"]) == cli.USAGE_ERROR
        assert capsys.readouterr().err == "error: unknown flag --no-such-flag\n"
        if not sub.overrides:
            assert main([*prefix, "--config.train.lr=1"]) == cli.USAGE_ERROR
            assert capsys.readouterr().err == "error: unknown flag --config.train.lr\n"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_entry_point_answers_help(name, capsys, monkeypatch):
    monkeypatch.delenv("APR_JAX_DEBUG", raising=False)
    module = load(name)
    command = getattr(module, "COMMAND", None)
    assert isinstance(command, cli.Command), (
        f"{name} runs as a command but has no COMMAND (apr_jax.cli.Command) for --help"
    )
    assert command.prog == f"python -m {name}"
    check_command(module.main, command, capsys)


BENCHMARKS = sorted(
    name
    for name in os.listdir(os.path.join(REPO, "benchmarks"))
    if name.endswith(".py")
    and "parse_command_line" in open(os.path.join(REPO, "benchmarks", name), encoding="utf-8").read()
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmarks_on_the_flag_reader_answer_help(name, capsys, monkeypatch):
    """(The other benchmarks use argparse, which has its own --help.)"""
    monkeypatch.delenv("APR_JAX_DEBUG", raising=False)
    path = os.path.join(REPO, "benchmarks", name)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.COMMAND.prog == f"python benchmarks/{name}"
    check_command(module.main, module.COMMAND, capsys)


def test_train_help_runs_without_jax():
    """A real ``python -m``: stdout, exit 0, and JAX is not imported (fast)."""
    from apr_jax import train

    for ask in ("--help", "-h"):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "apr_jax.train", ask],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and done.stdout == train.COMMAND.help_text() + "\n"
        imported = {
            line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
        }
        assert "apr_jax.cli" in imported and "jax" not in imported and "numpy" not in imported


def test_subcommand_help_through_the_package_entry_point():
    from apr_jax.data.__main__ import TRACES

    done = subprocess.run(
        [sys.executable, "-m", "apr_jax.data", "traces", "-h"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout == TRACES.help_text() + "\n"


COMMAND = cli.Command(
    "python -m demo",
    "A demo.",
    flags=(
        cli.Flag("num", "how many", value="N", required=True, example="3"),
        cli.Flag("dry_run", "do nothing", value=None),
    ),
    args=(cli.Flag("FILE", "input"),),
    overrides="set a key",
    examples=("python -m demo a --num=3",),
)


def test_reader_flags_switches_arguments_and_help():
    line = cli.read_command_line(["a", "--num", "3", "b", "--dry_run", "--config.x.y=1"], COMMAND)
    assert line.flags == {"num": "3", "dry_run": "true"}
    assert line.overrides == ["config.x.y=1"] and line.args == ["a", "b"]
    for argv, message in [
        ([], "--num is required, e.g. --num=3"),
        (["--num"], "flag --num needs a value"),
        (["--num=1", "--dry_run=1"], "flag --dry_run takes no value"),
        (["--num=1", "-x"], "unexpected argument '-x'; flags look like --name=value"),
        (["--nun=1"], "unknown flag --nun; did you mean --num?"),
    ]:
        with pytest.raises(cli.UsageError) as e:
            cli.read_command_line(argv, COMMAND)
        assert str(e.value) == message
    for argv in (["-h"], ["--help"], ["--nun", "--num", "-h"], ["x", "--num=1", "-h"]):
        with pytest.raises(cli.HelpRequested) as e:
            cli.read_command_line(argv, COMMAND)
        assert e.value.text == COMMAND.help_text()
    assert COMMAND.usage() == "usage: python -m demo FILE --num=N [flags] [--config.KEY=VALUE ...]"


def test_subcommands_are_read_by_their_own_flags():
    top = cli.Command(
        "python -m demo",
        "Demo.",
        subcommands=(cli.Command("python -m demo run", "Run.", flags=(cli.Flag("fast", "go fast", value=None),)),),
    )
    assert cli.read_command_line(["run", "--fast"], top).command.name == "run"
    with pytest.raises(cli.UsageError, match="^give a command: run, got 'walk'$"):
        cli.read_command_line(["walk"], top)
    with pytest.raises(cli.HelpRequested) as e:
        cli.read_command_line(["run", "--help"], top)
    assert e.value.text.startswith("usage: python -m demo run [flags]\n")
    with pytest.raises(cli.HelpRequested) as e:
        cli.read_command_line(["-h", "run"], top)
    assert "commands:\n  run  Run." in e.value.text


def test_parse_command_line_takes_descriptions_and_raises_config_errors():
    flags, overrides = parse_command_line(
        ["--out=x", "--fast", "--config.a=1"], allowed={"out": "where it goes"}, switches={"fast": "go fast"}
    )
    assert flags == {"out": "x", "fast": "true"} and overrides == ["config.a=1"]
    with pytest.raises(cli.HelpRequested) as e:
        parse_command_line(["-h"], allowed={"out": "where it goes"}, switches={"fast": "go fast"})
    assert "  --out=VALUE" in e.value.text and "where it goes" in e.value.text
    assert "  --fast " in e.value.text and "go fast" in e.value.text
    with pytest.raises(ConfigError, match="unknown flag --ot; did you mean --out"):
        parse_command_line(["--ot=1"], allowed={"out": "where it goes"})
