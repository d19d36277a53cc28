"""The ``faena`` command: one click group shared by every entry point.

Commands are registered here; each lives in its own module. A faena error raised by a command
is printed as one line on stderr (configuration errors exit 2, others 1), never a traceback.
"""

from __future__ import annotations

from typing import Any

import click

from faena import __version__
from faena.cli.admin import purge, status
from faena.cli.common import translate_error
from faena.cli.control import control
from faena.cli.demo import demo
from faena.cli.dlq import dlq
from faena.cli.worker import worker
from faena.foundation.exceptions import FaenaError


class FaenaGroup(click.Group):
    """A group that turns faena errors into one-line command errors."""

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


cli.add_command(worker)
cli.add_command(status)
cli.add_command(purge)
cli.add_command(dlq)
cli.add_command(control)
cli.add_command(demo)


def main() -> None:
    """Console-script entry point (``faena``)."""
    cli.main(prog_name="faena")
