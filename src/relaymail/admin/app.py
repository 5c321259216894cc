"""What the admin listener answers: the token check, then /, /metrics, /message/ID.

Every read of the queue or the history runs on a worker thread: a page over a large
queue must not stall deliveries on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from ..queue.ids import parse_queue_id
from ..queue.sharded import QueueView
from ..suspension_file import SuspendedEntry
from .history import DeliveryHistory
from .http import Request, Response, text_response
from .page import STYLESHEET, message_page, status_page
from .status import gather, gather_message

HTML = "text/html; charset=utf-8"
# Basic is what a browser can answer without a script (its own login prompt; the user
# name is ignored); Bearer is what Prometheus' `authorization` setting sends.
_CHALLENGE = (
    ("WWW-Authenticate", 'Basic realm="relaymail admin", charset="UTF-8"'),
    ("WWW-Authenticate", 'Bearer realm="relaymail admin"'),
)


def authorized(header: str | None, token: str) -> bool:
    """Whether the Authorization header carries `token` (compared in constant time)."""
    if header is None:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    given = credentials.strip().encode("latin-1", "replace")
    if scheme.lower() == "basic":
        try:
            given = base64.b64decode(given, validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given, token.encode())


@dataclass
class AdminApp:
    store: QueueView
    history: DeliveryHistory
    registry: CollectorRegistry
    hostname: Callable[[], str]
    token: Callable[[], str | None]  # read on each request: a reload may change it
    # The scheduler's suspended destinations now (memory, not the store).
    suspended: Callable[[], list[SuspendedEntry]] = list

    async def __call__(self, request: Request) -> Response:
        token = self.token()
        if token is not None and not authorized(request.authorization, token):
            return text_response(401, "a token is required (Authorization: Bearer)", *_CHALLENGE)
        path = request.path
        if path == "/":
            now, suspended = time.time(), self.suspended()
            view = await asyncio.to_thread(gather, self.store, self.history, now, suspended)
            return Response(200, status_page(view, self.hostname()), HTML)
        if path == "/metrics":
            body = await asyncio.to_thread(generate_latest, self.registry)
            return Response(200, body, CONTENT_TYPE_LATEST)
        if path == "/style.css":
            return Response(200, STYLESHEET, "text/css; charset=utf-8")
        if path.startswith("/message/"):
            queue_id = path.removeprefix("/message/").upper()
            if parse_queue_id(queue_id) is not None:
                found = await asyncio.to_thread(gather_message, self.store, self.history, queue_id)
                if found is not None:
                    return Response(200, message_page(found, self.hostname()), HTML)
            return text_response(404, "no such message")
        return text_response(404, "not found")
