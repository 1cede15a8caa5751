"""ASGI upstream for tests/upgrade.rs, served by a real hypercorn (h2c on, as
hypercorn has by default). Every HTTP request it sees, on any protocol, is
appended as one JSON line to the file named by HYPERCORN_APP_LOG, so the test
can tell exactly what reached the upstream (path, HTTP version, headers)."""

import json
import os

LOG = os.environ["HYPERCORN_APP_LOG"]


async def app(scope, receive, send):
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
    seen = {
        "path": scope["path"],
        "http_version": scope["http_version"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
    }
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(seen) + "\n")
    body = ("reached " + scope["path"]).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
