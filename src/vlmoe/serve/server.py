"""Running a `vlmoe serve` app on a background thread (notebooks, tests, benchmarks).

with serve_in_background(build_app("runs/cap")) as url:   # http://127.0.0.1:PORT
    ...
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serve_in_background(
    app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 60.0
) -> Iterator[str]:
    """Serve `app` with uvicorn on a thread; yields its base URL (port 0 = a free port) and
    stops the server on exit."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="vlmoe-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn could not start on {host}:{port}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {start_timeout_s:g} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
