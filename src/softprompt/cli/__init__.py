"""The `softprompt` command line: one module per verb. User mistakes print one line and exit 2."""

from __future__ import annotations

import sys

import click
import typer

from ..errors import SoftPromptError

app = typer.Typer(name="softprompt", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prompt tuning for frozen Hugging Face models: train, evaluate, compare, predict, inspect, explain, sweep, serve.")


def _register() -> None:
    from . import (compare, eval as eval_cmd, explain, export, import_peft, info, predict, serve,  # noqa: F401
                   sweep, train)  # (each adds a command)


def main(argv: list[str] | None = None) -> int:
    _register()
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="softprompt", standalone_mode=False)
    except SoftPromptError as exc:
        print(f"softprompt: error: {exc}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        print("softprompt: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("softprompt: interrupted", file=sys.stderr)
        return 130
    return 0
