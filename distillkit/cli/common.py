"""What every `distillkit` command shares: the app, consoles, logging, errors, sizes and tables."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from distillkit.store.arrays import array_table, human  # noqa: F401  (the CLI's tables)

DEBUG_FLAG = "--debug"


class OneLineErrors(TyperGroup):
    """The one error handler of every verb: an exception a command lets escape becomes one line on stderr naming
    what went wrong, and exit status 2. `--debug`, anywhere on the command line, shows the traceback instead."""

    debug = False

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        OneLineErrors.debug = DEBUG_FLAG in args or os.environ.get("DISTILLKIT_DEBUG") == "1"
        return super().parse_args(ctx, [a for a in args if a != DEBUG_FLAG])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # usage errors and exits: typer says them itself
            raise
        except BrokenPipeError:  # `distillkit ... | head`: the reader left; nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0)
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: what was written stays; run the same command again to resume")
            raise typer.Exit(130)
        except Exception as e:
            if OneLineErrors.debug:
                raise
            err.print(f"[bold red]error:[/] {describe_error(e)}", highlight=False, soft_wrap=True)
            err.print(f"[dim](add {DEBUG_FLAG} for the traceback)[/]")
            raise typer.Exit(2)


def describe_error(e: BaseException) -> str:
    """What a user reads: our own errors say everything in their message; a library's error also says its type
    (``FileNotFoundError: [Errno 2] No such file or directory: 'x'``) and, where chained, what caused it."""
    msg = " ".join(str(e).split()) if not isinstance(e, KeyError) else f"missing key {e.args[0]!r}"
    ours = type(e).__module__.startswith("distillkit") or type(e) is ValueError
    text = msg if ours and msg else f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    cause = e.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {' '.join(str(cause).split())})"
    return text


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineErrors,
                  help="Run vision teachers once into Zarr v3 stores, then stream them into students. "
                       f"Errors are one line (exit 2); add {DEBUG_FLAG} to any command for the traceback.")
# wide tables when piped (CI logs, files); the terminal width otherwise
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log lines to stderr. `quiet` (a command's --quiet): the periodic progress lines of long work (the logger
    ``distillkit.progress``: training's step lines) are not shown."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)], force=True)
    logging.getLogger("distillkit.progress").setLevel(logging.WARNING if quiet else logging.NOTSET)
    for noisy in ("matplotlib", "PIL", "fsspec", "s3fs", "botocore", "aiobotocore", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")


def fail(msg: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)
    raise typer.Exit(2)


def print_metrics(res: dict, as_json: bool) -> None:
    """A flat result (benchmarks) as a two-column table, or JSON."""
    if as_json:
        print(json.dumps(res, indent=1, default=float))
        return
    t = Table(title=res.get("bench", "bench"))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in res.items():
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(t)
