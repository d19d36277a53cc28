"""Testing helpers: eager apps, a fake clock, draining the queues, the backend conformance
suites (:mod:`faena.testing.conformance`) and a pytest plugin (:mod:`faena.testing.plugin`).

Example:
    >>> from faena.testing import drain, memory_app
    >>> app = memory_app()
    >>> @app.task
    ... def add(x, y):
    ...     return x + y
    >>> r = add.delay(2, 3)
    >>> drain(app)            # a worker runs until the queues are empty
    1
    >>> r.get()
    5
"""

from faena.foundation.clock import FakeClock
from faena.testing.drain import adrain, drain, memory_app

__all__ = ["FakeClock", "adrain", "drain", "memory_app"]
