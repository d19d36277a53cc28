"""The ``faena`` command: one click group shared by every entry point.

Commands are registered here; each lives in its own module, imported only when its command
runs (or help lists it), so a worker process does not carry the table and demo code (and
rich) of the other commands. A faena error raised by a command is printed as one line on
stderr (configuration errors exit 2, others 1), never a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

import click

from faena import __version__
from faena.cli.common import translate_error
from faena.foundation.exceptions import FaenaError

COMMANDS: Final = {
    "worker": "faena.cli.worker:worker",
    "status": "faena.cli.admin:status",
    "purge": "faena.cli.admin:purge",
    "dlq": "faena.cli.dlq:dlq",
    "control": "faena.cli.control:control",
    "demo": "faena.cli.demo:demo",
}
"""Each command's ``module:attribute``."""


class FaenaGroup(click.Group):
    """A group that imports a command's module when the command is asked for, and turns
    faena errors into one-line command errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = spec.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FaenaError as error:
            raise translate_error(error) from error


@click.group(
    cls=FaenaGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="faena")
def cli() -> None:
    """faena: a distributed task queue for Python.

    Every option can also be set with the FAENA_* environment variable shown in each
    command's --help; the command line wins over the environment.

    \b
    Try it:   faena demo
    Run:      faena worker -A shop.tasks -Q high,default
    Inspect:  faena status -A shop.tasks
    """


def main() -> None:
    """Console-script entry point (``faena``)."""
    cli.main(prog_name="faena")
