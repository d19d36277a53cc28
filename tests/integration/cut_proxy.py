"""A TCP proxy in front of Redis that lets one command through and then cuts the connection
before its reply: the server ran the command, the client never hears so."""

from __future__ import annotations

import contextlib
import socket
import threading


class CutProxy:
    """Forwards connections to ``upstream``; after :meth:`arm`, the next command containing
    ``marker`` is delivered and both sides of its connection are closed unanswered."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="cut-proxy", daemon=True).start()

    def arm(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker
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
            gone = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, gone), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, gone), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, gone: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    hit = self._marker is not None and self._marker in data
                    if hit:
                        self._marker = None
                if not hit:
                    upstream.sendall(data)
                    continue
                gone.set()  # the reply to this command is not passed on
                upstream.sendall(data)
                return

    def _down(self, upstream: socket.socket, client: socket.socket, gone: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if gone.is_set():
                    # The server answered the armed command, so it ran; the client is cut off
                    # without the answer.
                    self.cut.set()
                    for s in (client, upstream):
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)
                    return
                client.sendall(data)
