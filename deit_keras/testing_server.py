"""A file server on 127.0.0.1 for download tests: real HTTP, real faults, no internet.

Routes, for each file name registered in `files`:
  /files/NAME      the file
  /truncated/NAME  announces the full length, sends half, closes
  /stall/NAME      sends half, then waits until the server stops (a download to kill)
anything else is a 404.
"""

import contextlib
import http.server
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    stop: threading.Event

    def do_GET(self):  # noqa: N802 (the http.server API)
        route, _, name = self.path.lstrip("/").partition("/")
        body = self.files.get(name)
        if body is None or route not in ("files", "truncated", "stall"):
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if route == "files":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if route == "stall":
            self.stop.wait()
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_files(files: dict[str, bytes]):
    """Serves `files` on 127.0.0.1 for the block; yields the base URL (no trailing slash)."""
    stop = threading.Event()
    handler = type("Handler", (_Handler,), {"files": dict(files), "stop": stop})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A 127.0.0.1 URL on which nothing listens (connection refused)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
