#!/usr/bin/env python3
"""Token and JWK factory for the identity tests: an implementation independent of the Rust code under test.

Reads one JSON request per stdin line, writes one JSON answer per stdout line:
  {"op": "sign", "alg": "RS256", "key_file": "rsa.pem", "claims": {...}, "headers": {...}}  -> {"token": "..."}
  {"op": "sign", "alg": "HS256", "secret": "...", "claims": {...}}                         -> {"token": "..."}
  {"op": "none", "claims": {...}, "alg": "none"}  unsigned token (alg "none" or a spelling of it) -> {"token": "..."}
  {"op": "hmac_with_public_key", "alg": "HS256", "key_file": "rsa.pub.pem", "claims": {...}, "headers": {...}}
      the HS/RS confusion attack: HMAC keyed with the PEM bytes of a public key              -> {"token": "..."}
  {"op": "jwk", "alg": "RS256", "key_file": "rsa.pub.pem", "kid": "k1"}  public JWK           -> {"jwk": {...}}
Keys come from the openssl CLI; PyJWT and cryptography do the JOSE work.
"""
import base64
import hashlib
import hmac
import json
import sys

try:
    import jwt
    from jwt.algorithms import get_default_algorithms
except ImportError:
    sys.stderr.write("PyJWT is missing: pip install pyjwt cryptography\n")
    sys.exit(3)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def part(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def handle(req):
    op = req["op"]
    claims = req.get("claims", {})
    headers = req.get("headers") or None
    if op == "sign":
        key = req["secret"] if "secret" in req else open(req["key_file"], "rb").read()
        return {"token": jwt.encode(claims, key, algorithm=req["alg"], headers=headers)}
    if op == "none":
        return {"token": part({"alg": req.get("alg", "none"), "typ": "JWT"}) + "." + part(claims) + "."}
    if op == "hmac_with_public_key":
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[req["alg"]]
        header = {"alg": req["alg"], "typ": "JWT", **(headers or {})}
        signing_input = (part(header) + "." + part(claims)).encode()
        secret = open(req["key_file"], "rb").read()
        return {"token": signing_input.decode() + "." + b64(hmac.new(secret, signing_input, digest).digest())}
    if op == "jwk":
        algorithm = get_default_algorithms()[req["alg"]]
        key = algorithm.prepare_key(open(req["key_file"], "rb").read())
        jwk = json.loads(algorithm.to_jwk(key))
        jwk.update({"kid": req["kid"], "use": "sig", "alg": req["alg"]})
        return {"jwk": jwk}
    raise ValueError(f"unknown op {op!r}")


for line in sys.stdin:
    if line.strip():
        print(json.dumps(handle(json.loads(line))), flush=True)
