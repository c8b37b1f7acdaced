"""Running the application under uvicorn: in the main thread with graceful SIGTERM handling (the
command), or in a background thread (tests and the benchmark), always on a socket bound first.

Binding before uvicorn starts makes a port in use one clear line, lets ``--port 0`` pick a free
port that is known before anything else happens, and opens the port at once: the engine loads
while ``/health`` answers 503.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time

from ..errors import WsdmError
from .app import create_app
from .service import JudgeService

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise WsdmError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host"
        ) from exc
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class JudgeServer:
    """One uvicorn server for a service, on a socket that is already listening."""

    def __init__(self, service: JudgeService, sock: socket.socket, *, access_log: bool = False) -> None:
        import uvicorn

        self.service = service
        self.socket = sock
        self.url = socket_url(sock)
        self.engine_failed = False
        self.app = create_app(service, self._on_engine_failure)
        if access_log:
            logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                lifespan="on",
                loop="asyncio",
                http="h11",
                ws="none",
                access_log=access_log,
                log_config=None,  # the command's logging setup stays in charge
                timeout_keep_alive=5,
                server_header=False,
            )
        )
        self._thread: threading.Thread | None = None

    def _on_engine_failure(self) -> None:
        self.engine_failed = True
        self.server.should_exit = True

    def run(self) -> int:
        """Serve in this (the main) thread until SIGTERM or SIGINT; 0 after a graceful stop, 2 when
        the engine could not start.

        On a signal uvicorn stops accepting connections, lets every request in flight finish, runs
        the shutdown (the engine is closed) and then raises the captured signal again under the
        handler that was there before it started: the handlers installed here make that a no-op,
        so a graceful stop exits 0 instead of dying of the signal.
        """
        previous = {sig: signal.signal(sig, _note_signal) for sig in STOP_SIGNALS}
        try:
            self.server.run(sockets=[self.socket])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 2 if self.engine_failed else 0

    # ---------------------------------------------------------------- background thread
    def start(self, timeout: float = 60.0) -> JudgeServer:
        """Serve in a background thread; returns once the port answers (the engine may still load)."""
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="wsdm-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread ended before it started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def wait_ready(self, timeout: float = 120.0) -> JudgeServer:
        """Block until the engine is ready (or raise if it failed or took too long)."""
        deadline = time.monotonic() + timeout
        while self.service.state == "loading":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine did not load within {timeout} s")
            time.sleep(0.01)
        if self.service.state != "ready":
            raise RuntimeError(f"the engine failed to start: {self.service.error}")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop of a background server: requests in flight finish, the engine closes."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(10)
        with contextlib.suppress(OSError):
            self.socket.close()

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _note_signal(signum: int, frame) -> None:
    log.info("serve: signal %d received again after the graceful stop", signum)
