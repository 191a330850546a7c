"""A downstream service that knows nothing of Portcullis but the gateway's JWKS URL.

It verifies the internal token of every request with PyJWT, caching the JWKS for exactly the
`Cache-Control: max-age` the gateway sends and never refetching early (not even on an unknown
kid): the strictest verifier, so a key used before it was pre-published long enough fails here.

    python3 verify_upstream.py PORT JWKS_URL ISSUER AUDIENCE

GET /__stats answers the counts as JSON.
"""

import json
import re
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

PORT, JWKS_URL, ISSUER, AUDIENCE = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

lock = threading.Lock()
cache = {"keys": None, "fetched": 0.0, "max_age": 0.0}
stats = {"verified": 0, "failed": 0, "fetches": 0, "kids": [], "errors": {}}


def jwks():
    with lock:
        now = time.monotonic()
        if cache["keys"] is None or now - cache["fetched"] >= cache["max_age"]:
            with urllib.request.urlopen(JWKS_URL, timeout=5) as resp:
                body = json.load(resp)
                m = re.search(r"max-age=(\d+)", resp.headers.get("Cache-Control", ""))
            cache.update(keys=jwt.PyJWKSet.from_dict(body), fetched=now, max_age=float(m.group(1)) if m else 0.0)
            stats["fetches"] += 1
        return cache["keys"]


def verify(token):
    kid = jwt.get_unverified_header(token).get("kid")
    matching = [k for k in jwks().keys if k.key_id == kid]
    if not matching:
        raise ValueError("unknown kid")
    claims = jwt.decode(token, matching[0].key, algorithms=["EdDSA", "ES256", "RS256"], audience=AUDIENCE, issuer=ISSUER)
    return kid, claims


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/__stats":
            with lock:
                return self.reply(200, stats)
        auth = self.headers.get("Authorization", "")
        try:
            if not auth.startswith("Bearer "):
                raise ValueError("no internal token")
            kid, claims = verify(auth[len("Bearer "):])
        except Exception as e:  # noqa: BLE001 - any failure is a rejected request
            reason = f"{type(e).__name__}: {e}"
            with lock:
                stats["failed"] += 1
                stats["errors"][reason] = stats["errors"].get(reason, 0) + 1
            return self.reply(401, {"error": reason})
        with lock:
            stats["verified"] += 1
            if kid not in stats["kids"]:
                stats["kids"].append(kid)
        return self.reply(200, {"sub": claims.get("sub"), "kid": kid})

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
