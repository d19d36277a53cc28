"""The embedded default backend: a broker, a result store and a coordination store in one
SQLite file.

``sqlite:///relative/path.sqlite3`` or ``sqlite:////absolute/path.sqlite3``. Several processes
on one machine may share the file (WAL mode; busy errors are retried, never raised). The three
stores keep separate tables and may point at the same file. Only the stdlib ``sqlite3`` driver
is used.

Example:
    >>> from faena.contracts.broker import BrokerConfig
    >>> broker = SQLiteBroker("sqlite:///faena.sqlite3", BrokerConfig())  # doctest: +SKIP
    >>> results = SQLiteResultStore("sqlite:///faena.sqlite3")  # doctest: +SKIP
    >>> coordination = SQLiteCoordinationStore("sqlite:///faena.sqlite3")  # doctest: +SKIP
"""

from faena.backends.sqlite.broker import SQLiteBroker
from faena.backends.sqlite.coordination import SQLiteCoordinationStore
from faena.backends.sqlite.results import SQLiteResultStore

__all__ = ["SQLiteBroker", "SQLiteCoordinationStore", "SQLiteResultStore"]
