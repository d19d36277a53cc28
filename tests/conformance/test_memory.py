"""The conformance suites against the in-memory backend, the reference semantics."""

from __future__ import annotations

from faena.backends.memory import MemoryBroker, MemoryCoordinationStore, MemoryResultStore
from faena.contracts.broker import Broker, BrokerConfig
from faena.contracts.coordination import CoordinationStore
from faena.contracts.results import ResultStore
from faena.foundation.clock import Clock
from faena.testing.conformance import (
    BrokerConformance,
    CoordinationConformance,
    ResultStoreConformance,
)


class TestMemoryBroker(BrokerConformance):
    def make_broker(self, config: BrokerConfig) -> Broker:
        return MemoryBroker("memory://", config)


class TestMemoryResultStore(ResultStoreConformance):
    def make_result_store(self, clock: Clock) -> ResultStore:
        return MemoryResultStore("memory://", clock)


class TestMemoryCoordinationStore(CoordinationConformance):
    shared_between_stores = False

    def make_coordination_store(self, clock: Clock) -> CoordinationStore:
        return MemoryCoordinationStore("memory://", clock)
