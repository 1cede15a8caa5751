"""A real Flask/Werkzeug upstream for tests/route_games.rs.

Started by the test on 127.0.0.1 with a free port (printed on the first line of
stdout). It exists for what Werkzeug itself does with a request: it upper-cases
the method (`delete` runs the DELETE view) and runs a GET view for HEAD.

Every view records that it ran, with the `Via` the request carried (tokengate
adds `Via: 1.1 tokengate`), so the test can tell "reached the view through the
gate" from its own direct control requests. GET /_views lists them.
"""

import json
import sys
import threading

from flask import Flask, request
from werkzeug.serving import make_server

app = Flask(__name__)
views = []
lock = threading.Lock()


def ran(view):
    with lock:
        views.append(
            {
                "view": view,
                "method": request.method,
                "path": request.path,
                "via": request.headers.get("Via", ""),
            }
        )


@app.route("/admin/users/<uid>", methods=["DELETE"])
def delete_user(uid):
    ran("delete_user")
    return "deleted " + uid


@app.route("/reports/<name>", methods=["GET"])
def report(name):
    # Flask adds HEAD to every GET rule and runs this view for it.
    ran("report")
    return "report " + name


@app.route("/_views")
def list_views():
    with lock:
        return app.response_class(json.dumps(views), mimetype="application/json")


if __name__ == "__main__":
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    sys.stdout.close()
    server.serve_forever()
