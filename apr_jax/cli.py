"""How every ``python -m apr_jax.*`` command starts and ends. It starts by
keeping compiled XLA programs on disk (``APR_JAX_COMPILE_CACHE``), so running
a command again skips its compiles. It ends with a user's mistake or a failed
run as one line ``error: ...`` on stderr and an exit code, never a traceback
(``APR_JAX_DEBUG=1`` re-raises, for the traceback).

Each command describes its command line once, as a ``Command`` of ``Flag``s;
``read_command_line`` (``apr_jax.config.loading.parse_command_line`` for config
commands) reads argv by it, and ``--help``/``-h`` anywhere in argv raises
``HelpRequested`` with the help generated from that same ``Command``, which
``run_command`` prints to stdout with exit 0. This module imports no JAX, so a
command that imports JAX lazily (``apr_jax.train``) answers ``--help`` fast."""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from apr_jax.config.checks import ConfigError

USAGE_ERROR = 2  # bad flags, config, input files
RUN_FAILED = 1  # the run itself failed (checkpoint, training)

Errors = tuple[type[BaseException], ...]

COMPILE_CACHE_ENV = "APR_JAX_COMPILE_CACHE"
DEFAULT_COMPILE_CACHE = "~/.cache/apr_jax/xla"

HELP_FLAGS = ("-h", "--help")
CONFIG_KEYS_NOTE = (
    "config keys: `python -m apr_jax.train --print_config [--config=FILE]` prints "
    "every key with its value;\neach key's meaning is written beside its default "
    "(configs/default.py says where). Set one with --config.a.b=value."
)


def enable_compile_cache() -> str | None:
    """JAX's persistent compilation cache in ``$APR_JAX_COMPILE_CACHE``
    (default ``~/.cache/apr_jax/xla``; set it empty to turn the cache off).
    A directory already given to JAX (``JAX_COMPILATION_CACHE_DIR``) is kept.
    Must run before the first compile. Returns the directory in use."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = os.environ.get(COMPILE_CACHE_ENV, DEFAULT_COMPILE_CACHE)
    if not path:
        return None
    path = os.path.expanduser(path)
    jax.config.update("jax_compilation_cache_dir", path)
    return path


class UsageError(ValueError):
    """A mistake on the command line (exit ``USAGE_ERROR``)."""


class HelpRequested(Exception):
    """``--help`` or ``-h`` was given; ``text`` is the command's help."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclasses.dataclass(frozen=True)
class Flag:
    """``--name=VALUE`` (``value`` None: a switch, ``--name`` alone), or in
    ``Command.args`` a positional argument shown as ``name``."""

    name: str
    help: str  # one line
    value: str | None = "VALUE"  # the placeholder in the help
    required: bool = False  # read_command_line rejects a command line without it
    example: str = ""  # a value, quoted in the "is required" error

    def __post_init__(self) -> None:
        if not self.name or not self.help or "\n" in self.help:
            raise ValueError(f"flag {self.name!r} needs a one-line help")

    @property
    def form(self) -> str:
        return f"--{self.name}" + (f"={self.value}" if self.value else "")


@dataclasses.dataclass(frozen=True)
class Command:
    """What a command line may hold, and its help. ``overrides`` describes
    what ``--config.a.b=value`` does for this command ("" = not accepted).
    With ``subcommands`` the first argument names one (its ``prog`` ends
    with that name), which reads the rest."""

    prog: str  # how it is run: "python -m apr_jax.train"
    summary: str  # one line
    flags: tuple[Flag, ...] = ()
    examples: tuple[str, ...] = ()
    overrides: str = ""
    args: tuple[Flag, ...] = ()  # positional arguments, in order
    subcommands: tuple[Command, ...] = ()

    @property
    def name(self) -> str:
        return self.prog.split()[-1]

    def subcommand(self, name: str) -> Command | None:
        return next((c for c in self.subcommands if c.name == name), None)

    def for_argv(self, argv: Sequence[str]) -> Command:
        """The (sub)command that ``argv`` runs: its help answers ``--help``."""
        sub = self.subcommand(argv[0]) if argv else None
        return sub.for_argv(argv[1:]) if sub is not None else self

    def usage(self) -> str:
        words = [self.prog]
        if self.subcommands:
            words.append("COMMAND")
        words += [a.name for a in self.args]
        words += [f.form for f in self.flags if f.required]
        if any(not f.required for f in self.flags):
            words.append("[flags]")
        if self.overrides:
            words.append("[--config.KEY=VALUE ...]")
        if self.subcommands:
            words.append("[flags]")
        return "usage: " + " ".join(words)

    def help_text(self) -> str:
        """Usage line, summary, one line per flag, examples, where config keys are."""
        lines = [self.usage(), "", self.summary]

        def table(title: str, rows: list[tuple[str, str]]) -> None:
            width = max(len(left) for left, _ in rows) + 2
            lines.extend(["", title, *(f"  {left:<{width}}{right}" for left, right in rows)])

        if self.subcommands:
            table("commands:", [(c.name, c.summary) for c in self.subcommands])
        if self.args:
            table("arguments:", [(a.name, a.help) for a in self.args])
        rows = [(f.form, f.help + (" (required)" if f.required else "")) for f in self.flags]
        if self.overrides:
            rows.append(("--config.KEY=VALUE", self.overrides + " (repeatable)"))
        rows.append(("-h, --help", "print this help and exit"))
        table("flags:", rows)
        if self.subcommands:
            lines += ["", f"`{self.prog} COMMAND --help` lists the flags of one command."]
        lines += ["", "example:" if len(self.examples) == 1 else "examples:"]
        lines += [f"  {e}" for e in self.examples]
        lines += ["", CONFIG_KEYS_NOTE]
        return "\n".join(lines)


def flags_command(
    prog: str,
    flags: Sequence[str] | Mapping[str, str],
    switches: Sequence[str] | Mapping[str, str] = (),
    *,
    overrides: str = "",
    summary: str = "",
    examples: Sequence[str] = (),
) -> Command:
    """A ``Command`` from flag names or name -> one-line description mappings."""

    def described(names: Sequence[str] | Mapping[str, str]) -> list[tuple[str, str]]:
        if isinstance(names, Mapping):
            return list(names.items())
        return [(n, "(undocumented)") for n in names]

    return Command(
        prog,
        summary or prog,
        examples=tuple(examples),
        overrides=overrides,
        flags=(*(Flag(n, h) for n, h in described(flags)), *(Flag(n, h, value=None) for n, h in described(switches))),
    )


def wants_help(argv: Sequence[str]) -> bool:
    """``--help`` or ``-h`` anywhere in ``argv``."""
    return any(arg in HELP_FLAGS for arg in argv)


class CommandLine(NamedTuple):
    flags: dict[str, str]  # name -> value ("true" for a switch)
    overrides: list[str]  # "config.a.b=value", in order
    args: list[str]  # positional arguments
    command: Command  # the (sub)command that read them


def read_command_line(argv: Sequence[str], command: Command, *, error: type[Exception] = UsageError) -> CommandLine:
    """Read ``argv`` by ``command``: ``--flag=value`` or ``--flag value``, a
    switch alone, ``--config.a.b=value`` overrides where the command takes
    them, its positional arguments, or a subcommand first. ``--help``/``-h``
    anywhere raises ``HelpRequested``; mistakes raise ``error`` (one line)."""
    if wants_help(argv):
        raise HelpRequested(command.for_argv(argv).help_text())
    if command.subcommands:
        sub = command.subcommand(argv[0]) if argv else None
        if sub is None:
            got = f", got {argv[0]!r}" if argv else ""
            raise error(f"give a command: {', '.join(c.name for c in command.subcommands)}{got}")
        return read_command_line(argv[1:], sub, error=error)
    known = {f.name: f for f in command.flags}
    flags: dict[str, str] = {}
    overrides: list[str] = []
    positional: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            if command.args and not arg.startswith("-"):
                positional.append(arg)
                i += 1
                continue
            raise error(f"unexpected argument {arg!r}; flags look like --name=value")
        name, eq, value = arg[2:].partition("=")
        override = name.startswith("config.")
        if (override and not command.overrides) or (not override and name not in known):
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            raise error(f"unknown flag --{name}{hint}")
        if not override and known[name].value is None:
            if eq:
                raise error(f"flag --{name} takes no value")
            value = "true"
        elif not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise error(f"flag --{name} needs a value")
            value = args[i + 1]
            i += 1
        if override:
            overrides.append(f"{name}={value}")
        else:
            flags[name] = value
        i += 1
    for flag in command.flags:
        if flag.required and flag.name not in flags:
            example = f", e.g. --{flag.name}={flag.example}" if flag.example else ""
            raise error(f"--{flag.name} is required{example}")
    return CommandLine(flags, overrides, positional, command)


def answer_help(command: Command, argv: Sequence[str]) -> bool:
    """Print the help of the (sub)command ``argv`` runs when it asks for it
    (before anything heavy is imported); True when it did."""
    if not wants_help(argv):
        return False
    print(command.for_argv(argv).help_text())
    return True


def one_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when empty)."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def run_command(
    body: Callable[[], int | None], *, usage: Errors, failures: Errors = (), compile_cache: bool = True
) -> int:
    """Run a command's ``body`` and return its exit code (0 when it returns
    None). ``HelpRequested`` prints its help to stdout and exits 0;
    ``usage`` errors (and ``UsageError``) exit ``USAGE_ERROR``, ``failures``
    ``RUN_FAILED``. ``compile_cache=False``: a command that compiles nothing
    (or times its compiles) leaves JAX alone."""
    if compile_cache:
        enable_compile_cache()
    usage = (*usage, UsageError)
    try:
        code = body()
    except HelpRequested as e:
        print(e.text)
        return 0
    except usage + failures as e:
        if os.environ.get("APR_JAX_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return USAGE_ERROR if isinstance(e, usage) else RUN_FAILED
    return 0 if code is None else code


def parse_command_line(
    argv: Sequence[str],
    command: Any = None,
    *,
    allowed: Sequence[str] | dict[str, str] = ("workdir", "config"),
    switches: Sequence[str] | dict[str, str] = (),
) -> tuple[dict[str, str], list[str]]:
    """Split ``--flag=value`` / ``--flag value`` arguments into plain flags and
    ``config.*`` overrides; a switch (``--name`` alone) reads as ``"true"``.
    ``command`` (a ``Command``) names the flags with their help;
    without one, ``allowed`` and ``switches`` do (names, or name -> one-line
    description) and ``--config.*`` overrides are accepted. ``--help``/``-h``
    raises ``HelpRequested`` with the help made from the same
    flags; unknown flags and other mistakes raise ``ConfigError``."""
    if command is None:
        command = flags_command(
            f"python {os.path.basename(sys.argv[0])}",
            allowed,
            switches,
            overrides="set one config key, e.g. --config.train.lr=1e-3",
        )
    if command.args or command.subcommands:
        raise TypeError(f"{command.prog} takes arguments or subcommands: read it with apr_jax.cli.read_command_line")
    line = read_command_line(argv, command, error=ConfigError)
    return line.flags, line.overrides


def int_flag(flags: dict[str, str], name: str, default: int, *, zero_ok: bool = True) -> int:
    """The integer flag ``--name`` (``default`` when absent); one-line errors."""
    try:
        value = int(flags.get(name, default))
    except ValueError:
        raise ConfigError(f"--{name} must be an integer, got {flags[name]!r}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"--{name} must be positive, got {value}")
    return value


def float_flag(flags: dict[str, str], name: str) -> float | None:
    """The number flag ``--name``, or None when absent; one-line errors."""
    if name not in flags:
        return None
    try:
        return float(flags[name])
    except ValueError:
        raise ConfigError(f"--{name} must be a number, got {flags[name]!r}") from None
