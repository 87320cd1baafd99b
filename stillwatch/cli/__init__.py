"""The `stillwatch` command: thin Typer commands, one module per group, over library functions."""

from __future__ import annotations

import sys

import typer

from stillwatch.errors import StillwatchError

# Typer vendors its own click; its usage errors share this base with click's own.
UsageError = type(typer.BadParameter("")).__mro__[1]

app = typer.Typer(
    name="stillwatch",
    help="Distil large language models into small ones, and catch anyone distilling yours.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_groups() -> None:
    # Each module adds its own commands; imports stay light so `--help` is quick.
    from stillwatch.cli import accounts, core, distill, forensics, harvest, serve

    for module in (core, harvest, distill, serve, accounts, forensics):
        module.register(app)


_register_groups()


def fail(message: str) -> None:
    """Print one line on stderr and exit with status 2."""
    print(f"stillwatch: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures and usage errors become one line on stderr and exit code 2."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own rich bars say what is happening; weight loading needs none
    try:
        app(args=argv, standalone_mode=False)
    except StillwatchError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # Typer has printed the help already
            raise SystemExit(2) from None
        fail(exc.format_message().splitlines()[0])
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted")
