"""Two services that know nothing of Portcullis but its issuer URL, JWKS and token endpoint.

A (ServiceAccount shop/checkout) takes the internal token the gateway gave it, exchanges it at
the gateway for a token addressed to B, presenting its own ServiceAccount token as the actor,
and calls B with it. B (shop/orders) accepts only tokens of the gateway, addressed to itself,
whose actor is A.

    python3 exchange_services.py a PORT GATEWAY_URL SA_TOKEN_FILE B_URL
    python3 exchange_services.py b PORT GATEWAY_URL
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

ROLE, PORT, GATEWAY = sys.argv[1], int(sys.argv[2]), sys.argv[3]
A = "system:serviceaccount:shop:checkout"
B = "system:serviceaccount:shop:orders"
jwks = jwt.PyJWKClient(GATEWAY + "/.well-known/jwks.json", cache_keys=False)


def verify(token, audience):
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["EdDSA", "ES256", "RS256"], audience=audience, issuer=GATEWAY,
                      options={"require": ["exp", "iat", "sub", "aud", "iss"]})


def call(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def bearer(self):
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def do_GET(self):
        token = self.bearer()
        try:
            claims = verify(token, A if ROLE == "a" else B)
        except Exception as e:  # noqa: BLE001 - any failure is a 401
            return self.reply(401, {"error": type(e).__name__})
        if ROLE == "b":
            if claims.get("act", {}).get("sub") != A:
                return self.reply(403, {"error": "not called by checkout", "act": claims.get("act")})
            return self.reply(200, {"service": "orders", "sub": claims["sub"], "email": claims.get("email"),
                                    "act": claims["act"], "scope": claims.get("scope")})
        actor = open(sys.argv[4]).read().strip()
        form = urllib.parse.urlencode({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "actor_token": actor,
            "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "audience": B,
        }).encode()
        status, body = call(GATEWAY + "/oauth2/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            return self.reply(502, {"exchange": status, "error": body})
        status, body = call(sys.argv[5] + "/orders", None, {"Authorization": "Bearer " + body["access_token"]})
        self.reply(status, {"service": "checkout", "user": claims["sub"], "orders": body})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
