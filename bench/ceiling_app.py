"""The ceiling: a do-nothing Segment endpoint on the same server stack as Headwater.

Uvicorn with uvloop and httptools, one process, no access log. It reads the whole body,
parses nothing, stores nothing, and answers what Headwater answers on success: 200
`{"success": true}` (and `/health` answers 200 too, so the benches can wait for it the
same way). Whatever Headwater achieves is measured against this.

Started by the benches as
`python -m uvicorn bench.ceiling_app:app --loop uvloop --http httptools --workers 1`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SUCCESS = b'{"success":true}'
RESPONSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(SUCCESS)).encode()),
    ],
}
RESPONSE_BODY = {"type": "http.response.body", "body": SUCCESS}


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    # Read the whole body, as a real collector must before it can answer.
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(RESPONSE_START)
    await send(RESPONSE_BODY)
