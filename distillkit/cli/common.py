"""What every `distillkit` command shares: the app, consoles, logging, errors, sizes and tables."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run vision teachers once into Zarr v3 stores, then stream them into students.")
# wide tables when piped (CI logs, files); the terminal width otherwise
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)], force=True)
    for noisy in ("matplotlib", "PIL", "fsspec", "s3fs", "botocore", "aiobotocore", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")


def fail(msg: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def human(n: Optional[float]) -> str:
    """Bytes in decimal units: 512 B, 1.5 KB, 2.0 GB."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


def array_table(rows: list[dict], title: str = "arrays") -> Table:
    """The array table of `inspect` (rows from `distillkit.store.arrays.array_row`, either store kind)."""
    t = Table(title=title)
    for col in ("array", "shape", "dtype", "chunk", "shard", "codec", "stored", "raw", "ratio"):
        t.add_column(col, justify="right" if col in ("stored", "raw", "ratio") else "left")
    for a in rows:
        if a.get("missing"):
            t.add_row(a["path"], "[red]missing[/]", *[""] * 7)
            continue
        t.add_row(a["path"], str(tuple(a["shape"])), "str" if "String" in a["dtype"] else a["dtype"],
                  str(tuple(a["chunks"])), str(tuple(a["shards"])) if a["shards"] else "-", a["codec"],
                  human(a["stored_bytes"]), human(a["raw_bytes"]) if a["raw_bytes"] else "-",
                  f"{a['ratio']:.2f}" if a["ratio"] else "-")
    return t


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
