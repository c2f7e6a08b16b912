"""The `ovprof` command: wiring and error mapping only; each command lives in ovprof/commands/.

    ovprof models
    ovprof run --objective caption --encoder vit-debug --steps 5
    ovprof profile --objective caption --encoder vit-debug
    ovprof export results/quickstart.jsonl --to mlflow
    ovprof env --json

torch and deepspeed are imported inside the commands, so `ovprof --help` stays fast.
Exit codes: 0 ok, 1 error, 2 bad input, 3 out of memory (a finding, not a crash), 4 timeout.
"""

from __future__ import annotations

import sys

import typer

from ovprof.commands import check as check_cmd
from ovprof.commands import env as env_cmd
from ovprof.commands import estimate as estimate_cmd
from ovprof.commands import export as export_cmd
from ovprof.commands import models as models_cmd
from ovprof.commands import profile as profile_cmd
from ovprof.commands import report as report_cmd
from ovprof.commands import run as run_cmd
from ovprof.commands import sweep as sweep_cmd
from ovprof.errors import UsageError

app = typer.Typer(
    name="ovprof",
    help="Efficiency profiling of vision-encoder pretraining: caption-only (OpenVision 2) vs CLIP-style "
         "(OpenVision) under DeepSpeed.\n\nExit codes: 0 ok, 1 error, 2 bad input, 3 out of memory, 4 timeout.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")):
    _state["debug"] = debug


# In the order a user meets them. Command modules import torch/deepspeed/pandas inside their functions.
app.command("models", help=models_cmd.HELP)(models_cmd.models)
app.command("run", help=run_cmd.HELP)(run_cmd.run)
app.command("profile", help=profile_cmd.HELP)(profile_cmd.profile)
app.add_typer(sweep_cmd.app, name="sweep")
app.command("report", help=report_cmd.HELP)(report_cmd.report)
app.command("check", help=check_cmd.HELP)(check_cmd.check)
app.command("export", help=export_cmd.HELP)(export_cmd.export)
app.command("estimate", help=estimate_cmd.HELP)(estimate_cmd.estimate)
app.command("env", help=env_cmd.HELP)(env_cmd.env)


def main() -> None:
    from ovprof.config import ConfigError

    try:
        rc = app(standalone_mode=False)  # returns the code of a typer.Exit
        sys.exit(rc if isinstance(rc, int) else 0)
    except SystemExit:
        raise
    except (ConfigError, UsageError) as e:
        if _state["debug"]:
            raise
        _error_line(str(e))
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - mapped to one line unless --debug
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click's own usage errors (typer vendors click)
            e.show()
            sys.exit(e.exit_code)
        if _state["debug"]:
            raise
        _error_line(f"{type(e).__name__}: {e} (run with --debug for the traceback)")
        sys.exit(1)


def _error_line(msg: str) -> None:
    """One line on stderr; the message is printed as plain text (no rich markup inside user values)."""
    from rich.console import Console
    from rich.text import Text

    from ovprof.errors import printable

    Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("error: ", "bold red"),
                                                                             printable(msg, 2000)))


if __name__ == "__main__":
    main()
