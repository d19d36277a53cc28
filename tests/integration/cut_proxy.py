"""A TCP proxy in front of Redis that lets one command through and then cuts the connection
before its reply (the server ran the command, the client never hears so), or holds the reply
back for a while (a slow network)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class CutProxy:
    """Forwards connections to ``upstream``; after :meth:`arm`, the next command containing
    ``marker`` is delivered and both sides of its connection are closed unanswered, or, with
    ``late_s``, its reply is passed on that much later. ``cut`` is set when the server has
    answered the armed command."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._late_s: float | None = None
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="cut-proxy", daemon=True).start()

    def arm(self, marker: bytes, late_s: float | None = None) -> None:
        with self._lock:
            self._marker, self._late_s = marker, late_s
            self.cut.clear()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            held: list[float | None] = []  # the armed command's fate, once it is sent
            threading.Thread(target=self._up, args=(client, upstream, held), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, held), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, held: list[float | None]) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self._marker is not None and self._marker in data:
                        self._marker = None
                        held.append(self._late_s)  # before the send: the reply follows it
                upstream.sendall(data)

    def _down(
        self, upstream: socket.socket, client: socket.socket, held: list[float | None]
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if held:
                    # The server answered the armed command, so it ran.
                    late_s = held.pop()
                    self.cut.set()
                    if late_s is None:  # the client is cut off without the answer
                        for s in (client, upstream):
                            with contextlib.suppress(OSError):
                                s.shutdown(socket.SHUT_RDWR)
                        return
                    time.sleep(late_s)  # a slow network, not synchronisation
                client.sendall(data)
