"""What the commands share: the ``-A``/``--broker``/``-Q`` options, loading an app, errors.

Every option reads a ``FAENA_*`` environment variable when it is not given on the command line
(shown in ``--help``); the command line wins over the environment.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from faena.app.core import Faena
from faena.cli import exits
from faena.foundation.exceptions import ConfigurationError, FaenaError
from faena.foundation.util import redacted
from faena.model.options import validate_queue
from faena.worker.loader import load_app

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

CLI_APP_NAME = "faena-cli"
"""The name of the bare app built for admin commands run without ``-A``."""


class CommandFailed(click.ClickException):
    """One line on stderr (``Error: ...``), no traceback, exit code ``FAILURE``."""

    exit_code = exits.FAILURE


class BadUsage(CommandFailed):
    """Like :class:`CommandFailed`, for bad flags or configuration: exit code ``USAGE``."""

    exit_code = exits.USAGE


def translate_error(error: FaenaError) -> CommandFailed:
    """The command-line form of a faena error: configuration problems are usage errors."""
    if isinstance(error, ConfigurationError):
        return BadUsage(str(error))
    return CommandFailed(str(error))


# -- options --------------------------------------------------------------------------------------
def app_option(*, required: bool) -> Callable[[F], F]:
    """``-A/--app module[:attribute]``, with ``FAENA_APP``."""
    help_text = "The app: 'module' (its 'app', or its only Faena app) or 'module:attribute'."
    if not required:
        help_text += " Optional: without it, --broker (or the default SQLite file) is used."
    return click.option(
        "-A",
        "--app",
        "app_spec",
        envvar="FAENA_APP",
        show_envvar=True,
        required=required,
        metavar="MODULE[:ATTR]",
        help=help_text,
    )


def broker_option(fn: F) -> F:
    """``--broker URL``, with ``FAENA_BROKER_URL``; for admin commands run without an app."""
    return click.option(
        "--broker",
        "broker_url",
        envvar="FAENA_BROKER_URL",
        show_envvar=True,
        metavar="URL",
        help="Broker URL when no app is given, e.g. sqlite:///faena.sqlite3 (the default) "
        "or redis://localhost:6379/0. With -A, the app's own broker is used.",
    )(fn)


def results_option(fn: F) -> F:
    """``--results URL``, with ``FAENA_RESULTS_URL``; for admin commands that write records."""
    return click.option(
        "--results",
        "results_url",
        envvar="FAENA_RESULTS_URL",
        show_envvar=True,
        metavar="URL",
        help="Result store URL when no app is given and results are kept apart from the "
        "broker (default: the broker's URL). With -A, the app's own store is used.",
    )(fn)


def queues_option(*, required: bool, help_text: str) -> Callable[[F], F]:
    """``-Q/--queues a,b`` (repeatable), with ``FAENA_QUEUES``."""
    return click.option(
        "-Q",
        "--queues",
        "queues",
        envvar="FAENA_QUEUES",
        show_envvar=True,
        multiple=True,
        required=required,
        metavar="Q1,Q2",
        callback=_queues_callback,
        help=help_text + " Comma-separated or repeated.",
    )


def _queues_callback(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        names = split_queues(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    if value and not names:
        raise click.BadParameter(
            f"{value!r} names no queue; give queue names, or leave the option out",
            ctx=ctx,
            param=param,
        )
    return names


def split_queues(values: Iterable[str]) -> tuple[str, ...]:
    """``("high,default", "low")`` -> ``("high", "default", "low")``, validated, no repeats."""
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if name and name not in names:
                names.append(validate_queue(name))
    return tuple(names)


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="FAENA_JSON",
    show_envvar=True,
    help="Print JSON instead of tables, for scripts.",
)
yes_option = click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Do not ask for confirmation. (Deliberately no environment variable.)",
)


# -- apps -----------------------------------------------------------------------------------------
def load(spec: str) -> Faena:
    """The app named by ``spec``; an error while importing it becomes one readable line.

    Raises:
        ConfigurationError: the module cannot be imported, fails while importing, or holds no
            single app.
    """
    try:
        return load_app(spec)
    except FaenaError:
        raise
    except Exception as exc:
        # The user's module raised while importing: say where, without a wall of traceback.
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise ConfigurationError(
            f"importing the app {spec!r} failed: {type(exc).__name__}: {exc}{where}"
        ) from exc


def open_app(
    ctx: click.Context, spec: str | None, broker_url: str | None, results_url: str | None = None
) -> Faena:
    """The app of ``-A``, or a bare app on ``--broker`` (and ``--results``) for admin commands.

    With ``-A``, the app's broker and result store are used; an explicit ``--broker`` or
    ``--results`` on the command line that names another one is an error rather than silently
    ignored. (``FAENA_BROKER_URL`` and ``FAENA_RESULTS_URL`` are already honoured by the app
    itself, unless the app names its own.) A SQLite file that does not exist is an error, not
    a new empty database.
    """
    if not spec:
        app = Faena(CLI_APP_NAME, broker=broker_url, results=results_url)
    else:
        app = load(spec)
        for param, given, own, flag in (
            ("broker_url", broker_url, app.broker_url, "--broker"),
            ("results_url", results_url, app.results_url, "--results"),
        ):
            from_command_line = (
                ctx.get_parameter_source(param) is click.core.ParameterSource.COMMANDLINE
            )
            if given and from_command_line and given != own:
                raise BadUsage(
                    f"{flag} {redacted(given)} conflicts with the app {spec!r}, which uses "
                    f"{redacted(own)}; give one of -A or {flag}"
                )
    _require_database(app)
    return app


def _require_database(app: Faena) -> None:
    """An admin command must not create an empty SQLite file where the user mistyped a path."""
    url = app.broker_url
    prefix = "sqlite:///"  # the SQLite backend's URL form: sqlite:///relative or ////absolute
    if not url.startswith(prefix):
        return
    path = os.path.abspath(url[len(prefix) :].partition("?")[0])
    if not os.path.exists(path):
        raise CommandFailed(
            f"no faena database at {path}: nothing has been sent through {url} yet, or the "
            "broker is elsewhere (give -A, --broker or FAENA_BROKER_URL)"
        )


def known_queues(app: Faena) -> list[str]:
    """The app's default queue, the queues its tasks are declared on and its routes name."""
    names = [app.settings.default_queue]
    for name in app.registry:
        queue = app.registry.get(name).defaults.queue
        if queue and queue not in names:
            names.append(queue)
    names += [q for q in app.settings.routes.queues() if q not in names]
    return names


# -- output ---------------------------------------------------------------------------------------
def stdout() -> Console:
    """The console for results. Piped output is not cut to 80 columns (unless COLUMNS says)."""
    # Imported here: a worker process, which prints no tables, does not carry rich.
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200
    return console


def age(seconds_ago: float) -> str:
    """``4s ago``, ``3m ago``, ``2h ago``, ``5d ago``."""
    s = max(0.0, seconds_ago)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    if s < 86400:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def when(timestamp: float, now: float) -> str:
    """Local time of a Unix timestamp, with its age: ``2025-01-31 14:02:11 (3m ago)``."""
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    return f"{local} ({age(now - timestamp)})"
