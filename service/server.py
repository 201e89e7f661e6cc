"""The uvicorn server lass runs under, with a shutdown that lets streams finish first."""

from __future__ import annotations

import logging
import socket

import uvicorn

from service.streaming.channel import StreamRegistry

log = logging.getLogger("lass.service")


class LassServer(uvicorn.Server):
    """uvicorn, with open streams given time to finish before it closes WebSockets.

    On SIGTERM uvicorn stops listening, closes every WebSocket with 1012, then waits for
    the HTTP requests in flight. Before that, streams transcribe what they received, send
    their finals and close with 1001 (:meth:`StreamRegistry.drain`), for at most
    ``drain_s`` seconds; HTTP requests go on meanwhile.
    """

    def __init__(self, config: uvicorn.Config, streams: StreamRegistry, drain_s: float) -> None:
        super().__init__(config)
        self.streams = streams
        self.drain_s = drain_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        left = await self.streams.drain(self.drain_s)
        if left:
            log.warning(
                "%d streams still open after %.0f s (LASS_STREAM_DRAIN_S)", left, self.drain_s
            )
        await super().shutdown(sockets)
