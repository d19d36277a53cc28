"""The child side of the ``processes`` pool, and the frames parent and child exchange.

What it owns: the wire (an 8-byte big-endian length, then a msgpack body; the tagged structs
below), and a child's whole life: import the app, report ready, run one job at a time with
its soft time limit, stream progress, report the outcome, and retire when
``max_tasks_per_child`` or ``max_memory_per_child`` says so.

This module is what ``spawn`` imports in a child, so it imports only what a child needs; the
app itself comes from :func:`faena.worker.loader.load_app`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import resource
import signal
import socket
import struct
import sys
import threading
import traceback
from types import FrameType

import msgspec

from faena.app.core import Faena
from faena.features.execution import run_sync
from faena.features.intake import resolve_task
from faena.foundation.exceptions import SoftTimeLimitExceeded, UnknownTaskError
from faena.model.message import decode_message, unpack_arguments, unpack_headers
from faena.model.outcome import ErrorInfo, Outcome
from faena.model.task import Request
from faena.worker.loader import load_app

FRAME_HEADER = struct.Struct("!Q")


class Work(msgspec.Struct, frozen=True, tag="work"):
    body: bytes
    request: Request
    serializer: str
    soft_time_limit: float | None


class Stop(msgspec.Struct, frozen=True, tag="stop"):
    pass


class Ready(msgspec.Struct, frozen=True, tag="ready"):
    pass


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    error: str


class Progress(msgspec.Struct, frozen=True, tag="progress"):
    fraction: float
    message: str | None


class Done(msgspec.Struct, frozen=True, tag="done"):
    outcome: Outcome
    retiring: bool


_encoder = msgspec.msgpack.Encoder()
to_child = msgspec.msgpack.Decoder(Work | Stop)
to_parent = msgspec.msgpack.Decoder(Ready | Failed | Progress | Done)


def frame(message: msgspec.Struct) -> bytes:
    data = _encoder.encode(message)
    return FRAME_HEADER.pack(len(data)) + data


class _SoftLimit:
    """The soft time limit of the job running in this child: ``SIGALRM`` raises in the task.

    While the main thread writes a frame the exception is held back and raised once the write
    is complete: raised half-way through, it would leave a torn frame on the socket.
    """

    def __init__(self) -> None:
        self.limit = 0.0
        self.armed = False
        self.holding = 0
        self.pending = False

    def arm(self, limit: float | None) -> None:
        self.pending = False
        if limit is not None and limit > 0:
            # Installed for every job: a task that set a SIGALRM handler of its own (an
            # alarm-based timeout helper) turns off soft limits for that job only.
            signal.signal(signal.SIGALRM, self.on_alarm)
            self.limit, self.armed = limit, True
            signal.setitimer(signal.ITIMER_REAL, limit)

    def disarm(self) -> None:
        self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.pending = False

    def on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if not self.armed:
            return  # the job ended before the signal was handled
        if self.holding:
            self.pending = True
            return
        self.fire()

    def fire(self) -> None:
        self.armed = False
        raise SoftTimeLimitExceeded(f"soft time limit ({self.limit:g} s) exceeded")

    def release(self) -> None:
        self.holding -= 1
        if not self.holding and self.pending and self.armed:
            self.pending = False
            self.fire()


class _Channel:
    """The child's end of the socket. Tasks may report progress from their own threads."""

    def __init__(self, sock: socket.socket, soft_limit: _SoftLimit) -> None:
        self.sock = sock
        self.soft_limit = soft_limit
        self.lock = threading.Lock()

    def send(self, message: msgspec.Struct) -> None:
        data = frame(message)
        # Only the main thread runs signal handlers, so only its writes need holding.
        main = threading.current_thread() is threading.main_thread()
        if main:
            self.soft_limit.holding += 1
        try:
            with self.lock:
                self.sock.sendall(data)
        finally:
            if main:
                self.soft_limit.release()

    def progress(self, fraction: float, message: str | None) -> None:
        self.send(Progress(fraction=fraction, message=message))

    def receive(self) -> Work | Stop:
        (length,) = FRAME_HEADER.unpack(self._exactly(FRAME_HEADER.size))
        message: Work | Stop = to_child.decode(self._exactly(length))
        return message

    def _exactly(self, n: int) -> bytes:
        buffer = bytearray(n)
        view = memoryview(buffer)
        got = 0
        while got < n:
            count = self.sock.recv_into(view[got:])
            if count == 0:
                raise EOFError("the worker closed the pool socket")
            got += count
        return bytes(buffer)


def child_main(
    sock: socket.socket,
    app_spec: str,
    max_tasks: int | None,
    max_memory_kib: int | None,
    worker_pid: int | None = None,
) -> None:
    """A child's whole life: import the app, then run jobs until told to stop or retiring."""
    if worker_pid is not None:
        _die_with(worker_pid)
    # Ctrl-C, or a stop sent to the whole process group (systemd's control-group mode), must
    # not kill running jobs behind the worker's back: the worker decides when children stop.
    # A handler that does nothing rather than SIG_IGN, because an ignored signal stays ignored
    # across exec, and a task's own subprocesses must still answer to SIGTERM.
    signal.signal(signal.SIGINT, _ignore_signal)
    signal.signal(signal.SIGTERM, _ignore_signal)
    soft_limit = _SoftLimit()
    channel = _Channel(sock, soft_limit)
    with sock:
        try:
            app = load_app(app_spec)
        except BaseException as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            error = f"cannot load app {app_spec!r} in a pool child: {detail}"
            with contextlib.suppress(OSError):
                channel.send(Failed(error=error))
            return
        signal.signal(signal.SIGALRM, soft_limit.on_alarm)
        with contextlib.suppress(EOFError, OSError):  # the worker went away: nobody to report to
            _serve(app, channel, soft_limit, max_tasks, max_memory_kib)


def _die_with(worker_pid: int) -> None:
    """On Linux, have the kernel kill this child when its worker dies (``PR_SET_PDEATHSIG``):
    only the worker enforces the hard time limit, and a worker killed outright (the OOM killer,
    a supervisor's last SIGKILL) would otherwise leave a job running on, unbounded, beside its
    redelivery. Elsewhere the child notices when it next reads from the worker."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # here: a child on another system does without

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != worker_pid:  # the worker died before the request took effect
        os._exit(1)


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """Installed for SIGINT and SIGTERM in a child; see :func:`child_main`."""


def _serve(
    app: Faena,
    channel: _Channel,
    soft_limit: _SoftLimit,
    max_tasks: int | None,
    max_memory_kib: int | None,
) -> None:
    channel.send(Ready())
    done = 0
    base = contextvars.copy_context()  # what every job starts from: no job has run yet
    while True:
        work = channel.receive()
        if isinstance(work, Stop):
            return
        outcome = _run_one(app, work, channel, soft_limit, base)
        done += 1
        retiring = (max_tasks is not None and done >= max_tasks) or (
            max_memory_kib is not None and _rss_kib() > max_memory_kib
        )
        channel.send(Done(outcome=outcome, retiring=retiring))
        if retiring:
            return


def _run_one(
    app: Faena, work: Work, channel: _Channel, soft_limit: _SoftLimit, base: contextvars.Context
) -> Outcome:
    try:
        message = decode_message(work.body)
        args, kwargs = unpack_arguments(message)
        # The headers as the task would see them in any other pool, with their types (the
        # request crossed over as msgpack, which has no Decimal, tuple or naive datetime).
        request = msgspec.structs.replace(work.request, headers=unpack_headers(message))
        task = resolve_task(app.registry, message.task, app.function_modules)
    except Exception as exc:  # the worker admitted it, so this is a bug; report, do not die
        return Outcome(status="failure", error=ErrorInfo.from_exception(exc))
    if isinstance(task, str):
        error = UnknownTaskError(
            f"no task named {message.task!r} in the app this pool child imported{task} (do the "
            "worker and its children run the same code?)"
        )
        return Outcome(status="failure", error=ErrorInfo.from_exception(error))
    soft_limit.arm(work.soft_time_limit)
    try:
        try:
            # Each job starts from the child's context as it was before any job ran.
            return base.copy().run(
                run_sync,
                task,
                request,
                args,
                kwargs,
                work.serializer,
                channel.progress,
                in_worker=True,
            )
        finally:
            soft_limit.disarm()
    except SoftTimeLimitExceeded as exc:
        # Fired after the task returned, in run_sync's own bookkeeping: the limit did pass.
        return Outcome(status="failure", error=ErrorInfo.from_exception(exc))


def _rss_kib() -> int:
    """This process's resident size in KiB (current on Linux; peak elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes
