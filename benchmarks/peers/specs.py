"""How each system's workers are started for each metric: command lines and environment only.

Every worker is started through its system's own CLI, as a separate process. Where a system
has settings that change its speed, the driver tries several for the drain and the round trip
and keeps the best (the report says which); each choice is explained next to it. For the idle
footprint, the lightest of a system's plain single-worker commands counts. The "2 worker
processes" of the drain are two processes that run jobs: for Celery's prefork pool and Dramatiq
that is one command with two children, for the others two commands.

This module imports no system, so the driver can run under any interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

QUIET_CELERY = ("--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "WARNING")


@dataclass(frozen=True)
class WorkerSpec:
    """One way of starting a system's workers.

    Attributes:
        label: what the report shows.
        commands: one argv per process the driver starts; the first word is a program of the
            system's virtualenv (``python`` is the interpreter itself); ``{redis}`` is replaced
            by the private server's URL and ``{n}`` by the command's index.
        env: extra environment for those processes and for the producer.
    """

    label: str
    commands: tuple[tuple[str, ...], ...]
    env: dict[str, str] = field(default_factory=dict)


def _twice(*argv: str) -> tuple[tuple[str, ...], ...]:
    return (argv, argv)


# -- faena --------------------------------------------------------------------------------------
# The default pool is `async`: sync tasks run in its threads, async tasks on its event loop.
_FAENA = ("python", "-m", "faena", "worker", "-A", "benchmarks.peers.faena_redis")
_FAENA_QUIET = ("--log-level", "WARNING")
FAENA_DRAIN = [
    WorkerSpec("2 x faena worker (defaults: async pool, -c 10)", _twice(*_FAENA, *_FAENA_QUIET)),
    WorkerSpec(
        "2 x faena worker -c 32 --prefetch 256",
        _twice(*_FAENA, "-c", "32", "--prefetch", "256", *_FAENA_QUIET),
    ),
    # A sync task body that waits on the network (the benchmark's INCR) overlaps better with
    # more threads; 64 stays under redis-py's default pool of 100 connections per process.
    WorkerSpec(
        "2 x faena worker -c 64 --prefetch 512",
        _twice(*_FAENA, "-c", "64", "--prefetch", "512", *_FAENA_QUIET),
    ),
]
FAENA_ONE = [WorkerSpec("faena worker (defaults)", ((*_FAENA, *_FAENA_QUIET),))]
FAENA_RT = FAENA_ONE

# -- Celery -------------------------------------------------------------------------------------
# Heartbeats, gossip and mingle are worker-to-worker chatter a throughput run does not need;
# every Celery configuration here turns them off. Task events are off by default. The grid
# covers the pool (prefork with two children, two solo workers, two threaded workers), the
# prefetch multiplier (4 is Celery's default; 64 and 256 keep the pipe full for tiny tasks)
# and late acks (at-least-once, faena's default; Celery's default acks on receipt). `-O fair`
# is not in the grid: since Celery 4 it is the default, and the CLI offers no other profile
# (`-O default` maps to fair as well).
_CELERY = ("celery", "-A", "benchmarks.peers.celery_app", "worker")


def _celery_prefork(pm: int, late: bool = False) -> WorkerSpec:
    label = f"celery prefork -c 2 --prefetch-multiplier {pm}"
    return WorkerSpec(
        label + (" acks_late" if late else ""),
        (
            (
                *_CELERY,
                "-P",
                "prefork",
                "-c",
                "2",
                "--prefetch-multiplier",
                str(pm),
                *QUIET_CELERY,
                "-n",
                "bench{n}@%h",
            ),
        ),
        {"BENCH_CELERY_ACKS_LATE": "1"} if late else {},
    )


def _celery_two(pool: str, pm: int, threads: int = 1, late: bool = False) -> WorkerSpec:
    conc = ("-c", str(threads)) if pool == "threads" else ()
    label = f"2 x celery -P {pool}{f' -c {threads}' if conc else ''} --prefetch-multiplier {pm}"
    argv = (
        *_CELERY,
        "-P",
        pool,
        *conc,
        "--prefetch-multiplier",
        str(pm),
        *QUIET_CELERY,
        "-n",
        "bench{n}@%h",
    )
    return WorkerSpec(
        label + (" acks_late" if late else ""),
        _twice(*argv),
        {"BENCH_CELERY_ACKS_LATE": "1"} if late else {},
    )


CELERY_DRAIN = [
    _celery_prefork(4),
    _celery_prefork(64),
    _celery_prefork(256),
    _celery_two("solo", 4),
    _celery_two("solo", 64),
    _celery_two("threads", 64, threads=4),
    _celery_prefork(64, late=True),
    _celery_two("solo", 64, late=True),
]
# One idle worker: solo runs the job in the consuming process (the lowest latency and the
# smallest footprint); prefork -c 1 is Celery's default pool with one child.
CELERY_RT = CELERY_ONE = [
    WorkerSpec("celery -P solo", ((*_CELERY, "-P", "solo", *QUIET_CELERY, "-n", "bench0@%h"),)),
    WorkerSpec(
        "celery -P prefork -c 1",
        ((*_CELERY, "-P", "prefork", "-c", "1", *QUIET_CELERY, "-n", "bench0@%h"),),
    ),
]

# -- RQ -----------------------------------------------------------------------------------------
# RQ's default Worker forks a work horse for every job (isolation, at a price); SimpleWorker
# runs jobs in the worker process. Per-job INFO logs are turned off.
_RQ = ("rq", "worker", "-u", "{redis}", "--logging_level", "WARNING", "-n", "bench{n}")
_RQ_SIMPLE = ("-w", "rq.worker.SimpleWorker")
RQ_DRAIN = [
    WorkerSpec("2 x rq worker (forks a work horse per job)", _twice(*_RQ, "bench")),
    WorkerSpec("2 x rq worker -w SimpleWorker", _twice(*_RQ, *_RQ_SIMPLE, "bench")),
]
RQ_RT = RQ_ONE = [
    WorkerSpec("rq worker -w SimpleWorker", ((*_RQ, *_RQ_SIMPLE, "bench"),)),
    WorkerSpec("rq worker (fork per job)", ((*_RQ, "bench"),)),
]

# -- Dramatiq -----------------------------------------------------------------------------------
# One `dramatiq` command with --processes 2 (a supervisor and two worker processes). Threads
# per process: 8 is the default; 1 avoids GIL hand-offs for tiny jobs; 64 overlaps bodies that
# wait on the network. dramatiq_queue_prefetch defaults to 2 x threads; 100 lets one fetch
# bring many messages.
_DRAMATIQ = ("dramatiq", "benchmarks.peers.dramatiq_app", "--processes")
DRAMATIQ_DRAIN = [
    WorkerSpec("dramatiq -p 2 -t 8 (defaults)", ((*_DRAMATIQ, "2", "--threads", "8"),)),
    WorkerSpec("dramatiq -p 2 -t 1", ((*_DRAMATIQ, "2", "--threads", "1"),)),
    WorkerSpec(
        "dramatiq -p 2 -t 8, queue prefetch 100",
        ((*_DRAMATIQ, "2", "--threads", "8"),),
        {"dramatiq_queue_prefetch": "100"},
    ),
    WorkerSpec(
        "dramatiq -p 2 -t 1, queue prefetch 100",
        ((*_DRAMATIQ, "2", "--threads", "1"),),
        {"dramatiq_queue_prefetch": "100"},
    ),
    # As many threads as faena's largest configuration, for a body that waits on the network.
    WorkerSpec(
        "dramatiq -p 2 -t 64, queue prefetch 512",
        ((*_DRAMATIQ, "2", "--threads", "64"),),
        {"dramatiq_queue_prefetch": "512"},
    ),
]
DRAMATIQ_ONE = [
    WorkerSpec("dramatiq -p 1 -t 8", ((*_DRAMATIQ, "1", "--threads", "8"),)),
    WorkerSpec("dramatiq -p 1 -t 1", ((*_DRAMATIQ, "1", "--threads", "1"),)),
]
# An idle Dramatiq consumer sleeps between fetches: 5-10 ms after the first miss, doubling up to
# dramatiq_worker_timeout (1 s by default). A user after latency lowers that cap; 2 ms keeps
# each sleep at 1-2 ms (the same order as arq's 1 ms poll below).
DRAMATIQ_RT = [
    *DRAMATIQ_ONE,
    WorkerSpec(
        "dramatiq -p 1 -t 8, worker timeout 2 ms",
        ((*_DRAMATIQ, "1", "--threads", "8"),),
        {"dramatiq_worker_timeout": "2"},
    ),
]

# -- arq ----------------------------------------------------------------------------------------
# arq polls its queue (a sorted set) every poll_delay (0.5 s by default), reading at most
# queue_read_limit ids per poll (max(5 x max_jobs, 100)), and polls for results the same way.
# A user after throughput or latency shortens the poll; the grid shows what that buys.
# Logging goes through arq's --custom-log-dict at WARNING (its default logs every job).
_ARQ = ("arq", "benchmarks.peers.arq_app.WorkerSettings")
_ARQ_QUIET = ("--custom-log-dict", "benchmarks.peers.arq_app.LOG_CONFIG")


def _arq(label: str, processes: int, **settings: str) -> WorkerSpec:
    env = {f"BENCH_ARQ_{k.upper()}": v for k, v in settings.items()}
    return WorkerSpec(label, tuple((*_ARQ, *_ARQ_QUIET) for _ in range(processes)), env)


ARQ_DRAIN = [
    _arq("2 x arq (defaults: max_jobs 10, poll_delay 0.5 s)", 2),
    _arq("2 x arq max_jobs 100", 2, max_jobs="100"),
    _arq("2 x arq poll_delay 0.01 s", 2, poll_delay="0.01"),
    _arq("2 x arq max_jobs 100, poll_delay 0.01 s", 2, max_jobs="100", poll_delay="0.01"),
]
ARQ_RT = [
    _arq("arq, poll_delay 0.001 s (worker and result)", 1, poll_delay="0.001"),
    _arq("arq (defaults: poll_delay 0.5 s)", 1),
]
ARQ_ONE = [_arq("arq (defaults)", 1)]

# -- plain redis-py -----------------------------------------------------------------------------
# Not a queue: the floor under every system's single enqueue and round trip (bare_redis.py).
BARE_RT = [
    WorkerSpec(
        "echo: BLPOP, the task body, LPUSH", (("python", "-m", "benchmarks.peers.bare_redis"),)
    )
]

SYSTEMS = ("faena", "faena-async", "celery", "rq", "dramatiq", "arq", "redis")
PEERS = ("celery", "rq", "dramatiq", "arq")
ONLY: dict[str, tuple[str, ...]] = {"redis": ("single", "rt")}
"""Systems that take part in some metrics only; the others show ``n/a`` for them."""
MODULES = {
    "faena": "faena_redis",
    "faena-async": "faena_redis",
    "celery": "celery_app",
    "rq": "rq_app",
    "dramatiq": "dramatiq_app",
    "arq": "arq_app",
    "redis": "bare_redis",
}

# metric -> system -> the worker configurations tried (the first is the reference one).
SPECS: dict[str, dict[str, list[WorkerSpec]]] = {
    "drain": {
        "faena": FAENA_DRAIN,
        "faena-async": FAENA_DRAIN,
        "celery": CELERY_DRAIN,
        "rq": RQ_DRAIN,
        "dramatiq": DRAMATIQ_DRAIN,
        "arq": ARQ_DRAIN,
    },
    "rt": {
        "faena": FAENA_RT,
        "faena-async": FAENA_RT,
        "celery": CELERY_RT,
        "rq": RQ_RT,
        "dramatiq": DRAMATIQ_RT,
        "arq": ARQ_RT,
        "redis": BARE_RT,
    },
    # the idle footprint: each system's plain single-worker commands, the lightest one counts.
    "pss": {
        "faena": FAENA_ONE,
        "faena-async": FAENA_ONE,
        "celery": CELERY_ONE,
        "rq": RQ_ONE,
        "dramatiq": DRAMATIQ_ONE,
        "arq": ARQ_ONE,
    },
}


def find(system: str, label: str) -> WorkerSpec:
    for group in SPECS.values():
        for spec in group.get(system, ()):
            if spec.label == label:
                return spec
    raise KeyError(f"no worker configuration {label!r} for {system}")
