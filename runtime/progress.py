"""Progress bars (rich) for long runs; a silent stand-in when progress is off."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class _Silent:
    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        pass

    def update(self, *args, **kwargs) -> None:
        pass

    def remove_task(self, *args, **kwargs) -> None:
        pass


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str = "") -> Iterator:
    """A rich Progress (on stderr, removed when done) or a silent object with its API.

    Off when stderr is not a terminal (logs, pipes, CI): a bar there is noise.
    """
    if not enabled or not sys.stderr.isatty():
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{description}[/] {{task.description}}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                  console=Console(stderr=True)) as bar:
        yield bar
