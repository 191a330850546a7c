"""The shop's upstream service as a real web framework routes it (Flask 3 / Werkzeug 3).

Every handler answers which handler ran and what the framework saw: the method, the host, the
path it routed on (Werkzeug's decoded PATH_INFO, the raw target too) and every header. The
soundness test asks Portcullis about exactly that, so it finds any request the upstream served
that Portcullis would have denied.

What Werkzeug does, which the test models: it percent-decodes the path once before routing, does
not remove dot segments (`/static/../orders/admin` is served by the `static` handler with
`rest="../orders/admin"`), redirects repeated slashes to the merged URL instead of serving them,
and never reads X-Forwarded-* or X-Original-* headers (no ProxyFix).

    python3 shop_app.py PORT
"""

import sys

from flask import Flask, jsonify, request

app = Flask(__name__)


def served(handler, **params):
    return jsonify(
        handler=handler,
        params=params,
        method=request.method,
        host=request.host,
        path=request.path,
        raw_uri=request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI"),
        headers={k.lower(): v for k, v in request.headers.items()},
    )


ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@app.route("/__ping")
def ping():
    return "ok"


@app.route("/orders/healthz", methods=ALL)
def health():
    return served("health")


@app.route("/static/<path:rest>", methods=ALL)
def static_files(rest):
    return served("static", rest=rest)


@app.route("/orders/admin", methods=ALL)
@app.route("/orders/admin/<path:rest>", methods=ALL)
def admin(rest=""):
    return served("admin", rest=rest)


@app.route("/orders/<order>", methods=ALL)
def order(order):
    return served("order", order=order)


@app.route("/tenants/<tenant>/orders/<path:rest>", methods=ALL)
def tenant_orders(tenant, rest):
    return served("tenant", tenant=tenant, rest=rest)


@app.route("/billing/<path:rest>", methods=ALL)
def billing(rest):
    return served("billing", rest=rest)


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
