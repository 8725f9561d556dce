"""Terminal output: coloured rich tables when stdout is a terminal, the same plain lines as
always otherwise (scripts and tests read those; keep them stable)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Words that carry a state, and their colour in a terminal.
STATE_STYLES = {
    "fresh": "green", "ok": "green", "active": "green", "succeeded": "green", "HEALTHY": "bold green",
    "stale": "yellow", "pending": "yellow", "queued": "yellow", "running": "cyan", "inactive": "dim",
    "never synced": "yellow", "disabled": "dim", "not configured": "dim",
    "failing": "red", "failed": "red", "DRIFT": "red", "NOT HEALTHY": "bold red", "dead": "red",
}
_STATE_RE = re.compile("|".join(rf"\b{re.escape(w)}\b" for w in sorted(STATE_STYLES, key=len, reverse=True)))


def is_terminal() -> bool:
    return sys.stdout.isatty()


def console() -> Console:
    return Console(highlight=False)


def styled(text: str) -> Text:
    """``text`` with its state words coloured (a report line, a status cell)."""
    out = Text(text)
    for match in _STATE_RE.finditer(text):
        out.stylize(STATE_STYLES[match.group(0)], match.start(), match.end())
    return out


def print_report(text: str) -> None:
    """A multi-line report (status, verify): coloured in a terminal, as is otherwise."""
    if is_terminal():
        console().print(styled(text))
    else:
        print(text)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], plain: Sequence[str],
                title: str | None = None) -> None:
    """``rows`` as a rich table in a terminal; else ``plain`` (the stable line format)."""
    if not is_terminal():
        for line in plain:
            print(line)
        return
    table = Table(*columns, title=title, header_style="bold", show_edge=False, pad_edge=False)
    for row in rows:
        table.add_row(*(styled(str(c)) if isinstance(c, str) else c for c in row))
    console().print(table)
