"""Run the app with uvicorn: in the foreground (``npsam3 serve``) or in a background thread on a
free loopback port (tests, benchmarks, notebooks)."""

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn


def serve(app, host, port, log_level="info"):
    """Serve ``app`` until Ctrl-C."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@contextmanager
def running(app, log_level="warning"):
    """Serve ``app`` on 127.0.0.1 at a free port in a daemon thread; yields its base URL
    ("http://127.0.0.1:PORT") and stops the server on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="npsam3-http")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
