"""The `jdna` console script: subcommand registration and the one place errors become exit statuses."""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from jdna import __version__
from jdna.commands import aliases
from jdna.errors import JdnaError, nearest

try:  # newer typer vendors its own click
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

MAX_ERROR_CHARS = 1000
_EXIT = (click.exceptions.Exit, typer.Exit)
_CLICK_ERRORS = (click.exceptions.ClickException, _typer_click.ClickException)
_ABORT = (click.exceptions.Abort, typer.Abort)

# Subcommands by name: (module under jdna.commands, its function or Typer app). A module is imported only when
# its command runs (or its own --help is asked for), so `jdna --help` and `--version` never import torch,
# transformers or matplotlib; the line each command shows in `jdna --help` is read from its function's docstring
# in the module's source (short_help), so it is written once, where the command is.
COMMANDS: dict[str, tuple[str, str]] = {
    "prune": ("prune", "prune"),
    "info": ("info", "info"),
    "export": ("export", "export"),
    "finetune": ("finetune", "finetune"),
    "quantize": ("quantize", "quantize"),
    "lowrank": ("lowrank", "lowrank"),
    "difficulty": ("difficulty", "difficulty"),
    "plot": ("plot", "plot"),
    "eval": ("eval", "eval_command"),
    "tasks": ("tasks", "tasks"),
    "lmc": ("lmc", "lmc"),
    "runs": ("runs", "app"),
}


@functools.cache
def short_help(name: str) -> str:
    """The first line of subcommand `name`'s docstring, read from its source without importing it.

    A command given as a Typer app (jdna runs) is described by its callback, the function named like the command.
    """
    module_name, attribute = COMMANDS[name]
    spec = importlib.util.find_spec(f"jdna.commands.{module_name}")
    source = Path(spec.origin) if spec and spec.origin else None
    if source is None or source.suffix != ".py" or not source.is_file():  # no source shipped: ask the command
        return (load_command(name).help or "").strip().splitlines()[0]
    functions = {
        node.name: node
        for node in ast.parse(source.read_text(encoding="utf-8")).body
        if isinstance(node, ast.FunctionDef)
    }
    function = functions.get(attribute) or functions[name]
    return (ast.get_docstring(function) or "").strip().splitlines()[0]


# Help text is plain text: task specs such as "bigbench:NAME[/SUBTASK]" are not rich markup.
MARKUP_MODE: Any = None


def load_command(name: str) -> click.Command:
    """The click command of subcommand `name`, importing its module now."""
    module_name, attribute = COMMANDS[name]
    module = importlib.import_module(f"jdna.commands.{module_name}")
    target = getattr(module, attribute)
    if isinstance(target, typer.Typer):  # a command with subcommands of its own (jdna runs gc)
        return typer.main.get_command(target)
    single = typer.Typer(rich_markup_mode=MARKUP_MODE, pretty_exceptions_enable=False, add_completion=False)
    single.command(name)(target)
    return typer.main.get_command(single)


class LazyGroup(TyperGroup):
    """The root group: lists subcommands from COMMANDS and imports one only when it is resolved to run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[str, click.Command] = {}
        self._resolving = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        # Commands registered the eager way (app.command) still work; COMMANDS is the lazy, preferred way.
        return [*COMMANDS, *(name for name in super().list_commands(ctx) if name not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        if self._resolving or cmd_name in self._loaded:
            if cmd_name not in self._loaded:
                self._loaded[cmd_name] = load_command(cmd_name)
            return self._loaded[cmd_name]
        # Listing (the root --help, completing a subcommand name): the name and its line of help suffice.
        short = short_help(cmd_name)
        return TyperCommand(cmd_name, help=short, short_help=short)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        known = self.list_commands(ctx)
        if name and not name.startswith("-") and name not in known:
            suggestion = nearest(name, known)
            hint = f"did you mean '{suggestion}'? " if suggestion else ""
            raise JdnaError(f"unknown command '{name}': {hint}valid: {', '.join(known)}")
        self._resolving = True
        try:
            return super().resolve_command(ctx, args)
        finally:
            self._resolving = False


app = typer.Typer(
    name="jdna",
    help="Study what compression does to pretrained transformers as downstream tasks get harder.\n\n"
    "Each command prints one JSON line on stdout, so steps pipe: jdna prune M -s 0.5 | jdna info",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=MARKUP_MODE,
)


def _eager_names() -> set[str]:
    return {info.name or "" for info in app.registered_commands}


def _print_version(value: bool) -> None:
    # Eager: runs while options are parsed, before click insists on a subcommand ("Missing command").
    if value:
        typer.echo(f"jdna {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
    ),
    progress: bool = typer.Option(
        None,
        "--progress/--no-progress",
        help="Draw progress (rate, ETA) on stderr; default: only when stderr is a terminal. Also accepted after "
        "the subcommand, or as JDNA_PROGRESS=1/0.",
        show_default=False,
    ),
) -> None:
    pass


def _take_progress_flags(args: list[str]) -> tuple[list[str], bool | None]:
    """Remove --progress/--no-progress from anywhere on the command line (they apply to every command)."""
    forced: bool | None = None
    kept: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":  # everything after it is an argument, not an option
            kept.extend(args[index:])
            break
        if arg in ("--progress", "--no-progress"):
            forced = arg == "--progress"
        else:
            kept.append(arg)
    return kept, forced


def _subcommand(argv: list[str]) -> str:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return ""


def _click_message(command: str, error: Exception) -> str:
    """click's message, with an unknown option's suggestion taken from jdna's flags and the alias table."""
    option = getattr(error, "option_name", None)
    ctx = getattr(error, "ctx", None)
    if option and ctx is not None and type(error).__name__ == "NoSuchOption":
        valid = [name for param in ctx.command.params for name in [*param.opts, *param.secondary_opts]]
        suggestion = aliases.suggest_option(command, option, valid)
        hint = f": did you mean {suggestion}?" if suggestion else ""
        return f"no such option {option}{hint}"
    return error.format_message()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Bad input exits 2 with one line on stderr; --debug (or JDNA_DEBUG=1) shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Library progress bars would interleave with jdna's own stderr lines; jdna reports progress itself.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    debug = "--debug" in args or os.environ.get("JDNA_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    args, forced = _take_progress_flags(args)
    from jdna.commands import common

    common.progress_forced = forced
    name = _subcommand(args)
    args = aliases.rewrite(name, args)
    prefix = f"jdna {name}" if name in COMMANDS or name in _eager_names() else "jdna"
    try:
        if name in COMMANDS and not {"--help", "-h"} & set(args):
            from jdna.paths import jdna_home, runs_dir

            jdna_home(), runs_dir()  # a $JDNA_HOME or $JDNA_RUNS that is a file fails now, in one line, not mid-run
        result = app(args=args, prog_name="jdna", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except JdnaError as error:
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).splitlines())  # one line, whatever a path or value in it holds
        if len(message) > MAX_ERROR_CHARS:  # a value echoed back (a huge path, a list) must not flood stderr
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        sys.stderr.write(f"{prefix}: error: {message}\n")
        code = 2
    except _EXIT as exit_:
        code = exit_.exit_code
    except _CLICK_ERRORS as error:
        if debug:
            traceback.print_exc()
        if type(error).__name__ == "NoArgsIsHelpError":  # `jdna` alone: the help, on stdout
            sys.stdout.write(error.ctx.get_help() + "\n")
            sys.stdout.flush()
            return _finish(argv, 2)
        message = " ".join(_click_message(name, error).split())
        if message:  # empty when click has just printed the help (no arguments at all)
            sys.stderr.write(f"{prefix}: error: {message} (see '{prefix} --help')\n")
        code = error.exit_code if error.exit_code else 2
    except (KeyboardInterrupt, *_ABORT):
        sys.stderr.write(f"{prefix}: interrupted\n")
        code = 130
    except BrokenPipeError:
        code = 141
    except Exception as error:  # a bug: say so in one line unless debugging
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).splitlines())
        sys.stderr.write(f"{prefix}: internal error: {type(error).__name__}: {message} (rerun with --debug)\n")
        code = 1
    return _finish(argv, code)


def _finish(argv: list[str] | None, code: int) -> int:
    try:
        sys.stdout.flush()
    except OSError:  # stdout is gone or full; the error (if any) is already on stderr
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        code = code or 2
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
