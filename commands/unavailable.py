"""Subcommands that are part of jdna's design but not built yet: they say so and exit 2, never pretend."""

from __future__ import annotations

import typer

from jdna.errors import JdnaError

PLANNED = {
    "quantize": "RTN and GPTQ quantization on the bits-per-weight axis",
    "finetune": "dense / sparse / freeze / regrow transfer fine-tuning",
    "eval": "evaluation on tasks with difficulty knobs",
    "difficulty": "difficulty metrics and monotonicity statistics",
    "lmc": "linear mode connectivity between fine-tuned models",
    "plot": "figures of the study",
}


def make_unavailable(name: str, what: str):  # noqa: ANN201 - returns a typer callback
    def command(ctx: typer.Context) -> None:
        raise JdnaError(f"'jdna {name}' ({what}) is not available yet in this version of jdna")

    command.__doc__ = f"NOT AVAILABLE YET: {what}. Exits with status 2."
    return command


def register(app: typer.Typer, names: list[str]) -> None:
    for name in names:
        app.command(
            name,
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            help=f"NOT AVAILABLE YET: {PLANNED[name]}. Exits with status 2.",
        )(make_unavailable(name, PLANNED[name]))
