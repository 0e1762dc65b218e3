"""The `softprompt` command line: one module per verb. User mistakes print one line and exit 2."""

from __future__ import annotations

import os
import sys

import click
import typer

from ..cpu import keep_freed_memory
from ..errors import SoftPromptError, StorageError
from ..progress import quiet_third_party
from ..version import __version__

app = typer.Typer(name="softprompt", add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prompt tuning for frozen Hugging Face models: train, evaluate, compare and sweep prompts; predict "
                       "and serve with them; inspect, explain, export and import them. Add --verbose anywhere to keep "
                       "third-party libraries' progress bars and notices.")


COMPLETE_VAR = "_SOFTPROMPT_COMPLETE"


def _register() -> None:
    from . import (compare, eval as eval_cmd, explain, export, import_peft, info, predict, serve,  # noqa: F401
                   sweep, train)  # (each adds a command)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage-error classes, and those of the click copy that typer vendors (typer._click)."""
    classes: list[type[Exception]] = [click.ClickException]
    vendored = getattr(typer, "_click", None)  # typer >= 0.20 carries its own click
    if vendored is not None:
        classes.append(vendored.exceptions.ClickException)
    return tuple(classes)


def _exits() -> tuple[type[BaseException], ...]:
    """Click's and typer's `Exit` (an exit code) and `Abort` (Ctrl-C at a prompt)."""
    return (click.exceptions.Exit, click.exceptions.Abort, typer.Exit, typer.Abort)


def _one_line_usage_error(exc: Exception) -> str:
    """'No such option: --bogus' -> one line naming what was given and where help is."""
    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    context = getattr(exc, "ctx", None)  # click attaches the command's context when it has one
    command = context.command_path if context is not None else "softprompt"
    return f"softprompt: error: {message} (see `{command} --help`)"


def main(argv: list[str] | None = None) -> int:
    _register()
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(COMPLETE_VAR):  # the shell asks for completions (`softprompt --install-completion`)
        return command.main(args=args, prog_name="softprompt", complete_var=COMPLETE_VAR, standalone_mode=False) or 0
    if args in (["--version"], ["-V"]):
        print(f"softprompt {__version__}")
        return 0
    if not args:
        print(command.get_help(click.Context(command, info_name="softprompt")))
        return 0
    verbose = "--verbose" in args[:args.index("--")] if "--" in args else "--verbose" in args
    if verbose:
        args.remove("--verbose")
    quiet_third_party(verbose)
    usage_errors, exits = _usage_errors(), _exits()
    keep_freed_memory()  # this process runs backbones: reuse freed activations (softprompt.cpu)
    try:
        command.main(args=args, prog_name="softprompt", standalone_mode=False)
    except SoftPromptError as exc:
        message = str(exc).replace("\r", "\\r").replace("\n", "\\n")  # one line whatever a value held
        print(f"softprompt: error: {message}", file=sys.stderr)
        return 1 if isinstance(exc, StorageError) else 2  # the machine failed (exit 1), not the user (exit 2)
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a verb group without its verb: its help, as asked
            exc.show()  # type: ignore[attr-defined]
            return 0
        print(_one_line_usage_error(exc), file=sys.stderr)
        return 2
    except exits as exc:
        if type(exc).__name__ == "Abort":
            print("softprompt: aborted", file=sys.stderr)
            return 130
        return exc.exit_code  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        print("softprompt: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a runtime failure of the machine (disk full, permission denied): one line, exit 1
        where = f": {exc.filename}" if exc.filename else ""
        print(f"softprompt: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return 0
