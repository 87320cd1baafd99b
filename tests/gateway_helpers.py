"""A real uvicorn server on 127.0.0.1 in a background thread, for the gateway tests."""

from __future__ import annotations

from stillwatch.guard.loopback import LoopbackServer


class ServerThread(LoopbackServer):
    """The project's loopback server, with `base` for the base URL as these tests spell it."""

    def __init__(self, app, startup_timeout: float = 60.0):
        super().__init__(app, startup_timeout)
        self.base = self.base_url
