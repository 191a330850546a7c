"""An OpenID provider that answers the token request however the test asks: a well-formed ID
token, or one with a wrong nonce, another issuer, another client, an expired one, a forged
signature, `alg: none`, a userinfo about someone else, HS256 keyed with its public key, none at all, or a server error. What a
certified provider never sends, and what the gateway must still refuse.

    python3 rogue_provider.py PORT

The authorization endpoint sends the browser straight back with `code=<scenario>` (the scenario
set by `POST /scenario`) and remembers the request's nonce for the token endpoint.
"""

import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PORT = int(sys.argv[1])
ISSUER = f"http://127.0.0.1:{PORT}"
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_JWK = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
PUBLIC_JWK.update({"kid": "k1", "use": "sig", "alg": "ES256"})
STATE = {"scenario": "good", "nonce": None}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def id_token(scenario, nonce, client_id):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": client_id, "sub": "mallory", "exp": now + 300, "iat": now, "nonce": nonce}
    key, headers = KEY, {"kid": "k1"}
    if scenario == "wrong-nonce":
        claims["nonce"] = "not-the-nonce-of-this-sign-in"
    elif scenario == "other-issuer":
        claims["iss"] = "https://evil.example"
    elif scenario == "other-client":
        claims["aud"] = "another-client"
    elif scenario == "other-azp":
        claims["aud"], claims["azp"] = [client_id, "another-client"], "another-client"
    elif scenario == "expired":
        claims["exp"] = now - 600
    elif scenario == "forged-signature":
        key = OTHER_KEY
    elif scenario == "alg-none":
        header = b64(json.dumps({"alg": "none", "kid": "k1"}).encode())
        return f"{header}.{b64(json.dumps(claims).encode())}."
    elif scenario == "hs256-public-key":
        pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'k1'}).encode())}.{b64(json.dumps(claims).encode())}"
        return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/.well-known/openid-configuration":
            self.reply(200, {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/auth", "token_endpoint": ISSUER + "/token",
                             "jwks_uri": ISSUER + "/jwks", "userinfo_endpoint": ISSUER + "/userinfo",
                             "response_types_supported": ["code"]})
        elif url.path == "/userinfo":
            # The access token is the scenario's name.
            scenario = self.headers.get("Authorization", "").removeprefix("Bearer ")
            sub = "alice" if scenario == "userinfo-other-subject" else "mallory"
            self.reply(200, {"sub": sub, "email": f"{sub}@evil.example"})
        elif url.path == "/jwks":
            self.reply(200, {"keys": [PUBLIC_JWK]})
        elif url.path == "/auth":
            STATE["nonce"] = query.get("nonce")
            back = f"{query['redirect_uri']}?{urllib.parse.urlencode({'code': STATE['scenario'], 'state': query['state']})}"
            self.reply(302, b"", [("Location", back)])
        else:
            self.reply(404, {"error": "not_found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        if self.path == "/scenario":
            STATE["scenario"] = form["scenario"]
            self.reply(200, {"scenario": STATE["scenario"]})
        elif self.path == "/token":
            scenario = form.get("code")
            if scenario == "server-error":
                self.reply(500, {"error": "server_error"})
            elif scenario == "no-id-token":
                self.reply(200, {"access_token": scenario, "token_type": "Bearer"})
            else:
                self.reply(200, {"access_token": scenario, "token_type": "Bearer",
                                 "id_token": id_token(scenario, STATE["nonce"], form.get("client_id"))})
        else:
            self.reply(404, {"error": "not_found"})


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
