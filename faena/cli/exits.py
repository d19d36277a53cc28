"""Exit codes of the ``faena`` command, named in one place.

``faena worker`` exits with the worker's own code (see :mod:`faena.worker.worker`), which uses
the same numbers: a clean stop is ``OK``, a configuration problem ``USAGE``, and a stop that had
to interrupt running jobs ``COLD_SHUTDOWN``.
"""

from __future__ import annotations

from typing import Final

from faena.worker.worker import EXIT_COLD, EXIT_CONFIG, EXIT_OK

OK: Final = EXIT_OK
"""Everything asked for was done."""

FAILURE: Final = 1
"""The command ran but did not succeed: a job failed, an id was not found, the user declined;
for ``faena worker``, its broker went away for good (``EXIT_GONE``)."""

USAGE: Final = EXIT_CONFIG
"""Bad flags, a bad ``-A``, or a configuration error: nothing was done. (Click uses 2 too.)"""

CONFIG: Final = USAGE

COLD_SHUTDOWN: Final = EXIT_COLD
"""``faena worker`` had to stop running jobs (grace period over, or a second signal)."""
