"""The `jdna` console script: subcommand registration and the one place errors become exit statuses."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import click
import typer

from jdna import __version__
from jdna.commands import difficulty, export, finetune, info, lmc, lowrank, plot, prune, quantize
from jdna.commands import eval as eval_cmd
from jdna.commands import tasks as tasks_cmd
from jdna.errors import JdnaError

try:  # newer typer vendors its own click
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

MAX_ERROR_CHARS = 1000
_EXIT = (click.exceptions.Exit, typer.Exit)
_CLICK_ERRORS = (click.exceptions.ClickException, _typer_click.ClickException)
_ABORT = (click.exceptions.Abort, typer.Abort)

app = typer.Typer(
    name="jdna",
    help="Study what compression does to pretrained transformers as downstream tasks get harder.\n\n"
    "Each command prints one JSON line on stdout, so steps pipe: jdna prune M -s 0.5 | jdna info",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

app.command("prune")(prune.prune)
app.command("info")(info.info)
app.command("export")(export.export)
app.command("finetune")(finetune.finetune)
app.command("quantize")(quantize.quantize)
app.command("lowrank")(lowrank.lowrank)
app.command("difficulty")(difficulty.difficulty)
app.command("plot")(plot.plot)
app.command("eval")(eval_cmd.eval_command)
app.command("tasks")(tasks_cmd.tasks)
app.command("lmc")(lmc.lmc)


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
) -> None:
    pass


def _subcommand(argv: list[str]) -> str:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return ""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Bad input exits 2 with one line on stderr; --debug (or JDNA_DEBUG=1) shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Library progress bars would interleave with jdna's own stderr lines; jdna reports progress itself.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    debug = "--debug" in args or os.environ.get("JDNA_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    name = _subcommand(args)
    prefix = f"jdna {name}" if name else "jdna"
    try:
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
        message = " ".join(error.format_message().split())
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
