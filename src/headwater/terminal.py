"""Where the CLI writes: results to stdout, errors to stderr, one way of failing."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    """Print `message` as an error and return the exit (code 2) for the caller to raise."""
    errors.print(f"[bold red]Error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def progress_bar(label: str) -> Progress:
    """The bar long CLI work shows: label, bar, done/total, time left."""
    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )
