"""In-memory broker, result store and coordination store: complete backends for one process.

Everything lives in dicts under one lock; waiters are woken through their event loop, so a
producer thread and a worker loop in the same process meet without polling. Used by tests,
eager mode, benchmarks of the engine itself, and anyone who wants a queue inside one process.
Nothing survives the process.
"""

from faena.backends.memory.broker import MemoryBroker
from faena.backends.memory.coordination import MemoryCoordinationStore
from faena.backends.memory.results import MemoryResultStore

__all__ = ["MemoryBroker", "MemoryCoordinationStore", "MemoryResultStore"]
