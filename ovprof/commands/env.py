"""`ovprof env`: the environment block every record carries.

    ovprof env --json
"""

from __future__ import annotations

import typer

from ovprof.commands.common import console, print_json

HELP = "Show the machine and software a record would carry (torch, DeepSpeed, CUDA, GPU, CPU, git SHA).\n\n" \
       "Example: ovprof env --json"


def env(json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    from ovprof.measure.env import collect_env

    e = collect_env()
    if json_out:
        print_json(e)
        return
    from rich.table import Table

    t = Table(show_header=False, box=None)
    for k, v in e.items():
        t.add_row(f"[bold]{k}[/]", "-" if v is None else str(v))
    console().print(t)
