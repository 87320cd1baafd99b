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
    from stillwatch.cli import accounts, core, detect, distill, elicit, forensics, harvest, quotas, serve

    for module in (core, harvest, distill, serve, accounts, quotas, forensics, elicit, detect):
        module.register(app)


_register_groups()


INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit with status `code` (2: an expected failure)."""
    print(f"stillwatch: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _one_line(exc: BaseException, argv: list[str]) -> str:
    """The first line of an error message, with any secret of the command line masked."""
    from stillwatch.redact import redact_text, secret_values

    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return redact_text(line, secret_values(argv))


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures and usage errors become one line on stderr and exit code 2;
    Ctrl-C says `interrupted` and exits 130, so `harvest && distill` never carries on with a partial run."""
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    # Our own rich bars say what is happening; weight loading needs none. The variable, not transformers'
    # disable_progress_bar(): importing transformers costs a second of CPU that `keys create` never needs
    # (transformers reads it when first imported, by whichever command loads a model). Where it is imported
    # already (the CLI run in process), it is told directly.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        code = app(args=args, standalone_mode=False)
    except StillwatchError as exc:
        fail(_one_line(exc, args))
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # Typer has printed the help already
            raise SystemExit(2) from None
        fail(exc.format_message().splitlines()[0])
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted", INTERRUPTED)
    except OSError as exc:  # an unwritable path, a full disk: the environment's fault, not a bug
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        fail(f"{exc.strerror or _one_line(exc, args)}{where}")
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":  # by name: importing safetensors up front is not free
            fail(f"cannot read the model weights (is model.safetensors truncated or corrupt?): "
                 f"{_one_line(exc, args)}")
        if type(exc).__module__.split(".")[0] != "sqlalchemy":
            raise  # a bug: the traceback is for us
        from stillwatch.guard.db import describe  # a database that went away or refused mid-command

        fail(f"database error: {_one_line(RuntimeError(describe(exc)), args)}")
    else:
        # With standalone_mode=False, Typer turns Ctrl-C into a returned 130 (and typer.Exit(n) into n).
        if code == INTERRUPTED:
            fail("interrupted", INTERRUPTED)
        if isinstance(code, int) and code:
            raise SystemExit(code)
