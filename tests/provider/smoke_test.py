#!/usr/bin/env python3
"""End-to-end check of the test OAuth provider (serve.py), the way provet-broker uses it.

    scripts/provider-setup && tests/.venv/bin/python tests/provider/smoke_test.py

Starts serve.py on a free port, runs every check, prints one line per check and a
closing "N passed, N failed" line; exits non-zero when a check fails.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlparse

import requests
from jwcrypto import jwk, jwt

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
REDIRECT_URI = "http://127.0.0.1:9/oauth/callback"  # never contacted: redirects are not followed
USERNAME, PASSWORD = "clinic-user", "clinic-password"


class Provider:
    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "serve.py"), "--port", str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = [None]
        reader = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        self.startup_seconds = time.monotonic() - started
        expected = f"READY http://127.0.0.1:{self.port}\n"
        if line[0] != expected:
            self.proc.kill()
            raise SystemExit(f"serve.py did not print {expected!r}, got {line[0]!r}")
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, path):
        return self.base + path

    def stop_by_closing_stdin(self, timeout=10):
        self.proc.stdin.close()
        return self.proc.wait(timeout)


P = None  # the running Provider


def create_app(provet_id, grant_type, client_type="confidential", algorithm=None, redirect_uris="", **extra):
    body = {
        "provet_id": provet_id,
        "grant_type": grant_type,
        "client_type": client_type,
        "algorithm": algorithm,
        "redirect_uris": redirect_uris,
        **extra,
    }
    r = requests.post(P.url("/_test/applications"), json=body, timeout=10)
    assert r.status_code == 201, (r.status_code, r.text)
    return r.json()


def basic_auth(client_id, client_secret):
    """RFC 6749 2.3.1: form-urlencode id and secret, then base64 "id:secret"."""
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def token_request(hookup, data, auth="basic", token_url=None):
    headers = {}
    data = dict(data)
    if auth == "basic":
        headers["Authorization"] = basic_auth(hookup["client_id"], hookup["client_secret"])
    elif auth == "post":
        data.update(client_id=hookup["client_id"], client_secret=hookup["client_secret"])
    elif auth == "public":
        data.update(client_id=hookup["client_id"])
    return requests.post(token_url or hookup["token_url"], data=data, headers=headers, timeout=10)


def pkce_pair():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(session, hookup, scope, challenge=None, nonce=None, expect_login=True):
    """Browser flow without JavaScript: authorize -> login form -> authorize -> redirect_uri.
    Returns the query parameters of the final redirect to the redirect_uri."""
    state = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": hookup["client_id"],
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "state": state,
    }
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    if nonce:
        params["nonce"] = nonce
    url = hookup["authorize_url"] + "?" + urlencode(params)

    r = session.get(url, allow_redirects=False, timeout=10)
    if expect_login:
        # 1. Not logged in: 302 to the login page with next=<the authorize path>.
        assert r.status_code == 302, (r.status_code, r.text[:300])
        login_url = urljoin(url, r.headers["Location"])
        assert urlparse(login_url).path == "/accounts/login/", login_url
        next_path = parse_qs(urlparse(login_url).query)["next"][0]
        assert next_path.startswith(f"/{hookup['provet_id']}/oauth2/authorize/?"), next_path
        # 2. The login form: a CSRF token in a hidden field (and the csrftoken cookie).
        r = session.get(login_url, timeout=10)
        assert r.status_code == 200, r.status_code
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.text).group(1)
        # 3. Post the form; 302 back to next.
        r = session.post(
            P.url("/accounts/login/"),
            data={"csrfmiddlewaretoken": csrf, "username": USERNAME, "password": PASSWORD, "next": next_path},
            allow_redirects=False,
            timeout=10,
        )
        assert r.status_code == 302, (r.status_code, r.text[:500])
        assert r.headers["Location"] == next_path, r.headers["Location"]
        # 4. Authorize again, now logged in (skip_authorization: no consent page).
        r = session.get(urljoin(P.base, next_path), allow_redirects=False, timeout=10)
    assert r.status_code == 302, (r.status_code, r.text[:300])
    location = r.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?"), location
    query = {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}
    if "error" not in query:
        assert query["state"] == state, query
    return query


def fetch_jwks(issuer):
    r = requests.get(issuer + "/.well-known/jwks.json", timeout=10)
    return jwk.JWKSet.from_json(r.text)


def verify_id_token(id_token, key, issuer, audience, nonce, algs):
    token = jwt.JWT(
        jwt=id_token,
        key=key,
        algs=algs,
        check_claims={"iss": issuer, "aud": audience, "exp": None, "nonce": nonce},
    )
    return json.loads(token.claims), json.loads(token.header)


def me(provet_id, access_token):
    return requests.get(
        P.url(f"/{provet_id}/api/me/"), headers={"Authorization": f"Bearer {access_token}"}, timeout=10
    )


# ------------------------------------------------------------------------------------------
# Checks


def check_health():
    assert requests.get(P.url("/_test/health"), timeout=10).status_code == 200


def check_discovery():
    issuer = P.url("/7/oauth2")
    r = requests.get(issuer + "/.well-known/openid-configuration", timeout=10)
    assert r.status_code == 200, r.status_code
    doc = r.json()
    assert doc["issuer"] == issuer, doc["issuer"]
    urls = {k: v for k, v in doc.items() if k.endswith("_endpoint") or k == "jwks_uri"}
    assert {"authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"} <= set(urls), urls
    for key, value in urls.items():
        assert value.startswith(issuer + "/"), (key, value)
    assert doc["token_endpoint"] == issuer + "/token/"
    assert doc["authorization_endpoint"] == issuer + "/authorize/"
    assert doc["jwks_uri"] == issuer + "/.well-known/jwks.json"
    assert "S256" in doc["code_challenge_methods_supported"]
    assert set(doc["scopes_supported"]) == {"restapi", "openid"}
    # Another tenant: its own issuer, even with another Host header.
    doc8 = requests.get(
        P.url("/8/oauth2/.well-known/openid-configuration"), headers={"Host": "localhost"}, timeout=10
    ).json()
    assert doc8["issuer"] == P.url("/8/oauth2"), doc8["issuer"]
    assert doc8["token_endpoint"] == P.url("/8/oauth2/token/")
    # No tenant, no OAuth endpoints.
    assert requests.get(P.url("/oauth2/.well-known/openid-configuration"), timeout=10).status_code == 404


def check_jwks():
    r = requests.get(P.url("/7/oauth2/.well-known/jwks.json"), timeout=10)
    assert r.status_code == 200
    assert "max-age=3600" in r.headers["Cache-Control"], r.headers["Cache-Control"]
    keys = r.json()["keys"]
    assert any(k["kty"] == "RSA" and k["alg"] == "RS256" and k.get("kid") for k in keys), keys
    assert all("d" not in k for k in keys), "private key material in the JWKS"


def check_client_credentials():
    # A secret with characters that need form-urlencoding before base64 (RFC 6749 2.3.1).
    secret = "s3cr+t/with%odd:chars& =" + secrets.token_urlsafe(16)
    hookup = create_app(7, "client_credentials", client_secret=secret)
    assert hookup["authorization_grant_type"] == "client-credentials"
    assert hookup["client_secret"] == secret
    assert hookup["algorithm"] is None and hookup["openid_autodiscovery_url"] is None
    assert hookup["token_url"] == P.url("/7/oauth2/token/")
    assert hookup["authorize_url"] == P.url("/7/oauth2/authorize/")
    assert hookup["departments"] == [1]

    r = token_request(hookup, {"grant_type": "client_credentials"}, auth="basic")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 36000, body
    assert body["scope"] == "restapi" and "refresh_token" not in body, body
    r = me(7, body["access_token"])
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json() == {"provet_id": 7, "client_id": hookup["client_id"], "user": None, "scope": "restapi"}

    r = token_request(hookup, {"grant_type": "client_credentials", "scope": "restapi"}, auth="post")
    assert r.status_code == 200, r.text
    assert me(7, r.json()["access_token"]).status_code == 200

    # Basic auth without form-urlencoding: DOT unquotes, so "+" and "%od" break it.
    raw = base64.b64encode(f"{hookup['client_id']}:{secret}".encode()).decode()
    r = requests.post(
        hookup["token_url"],
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic " + raw},
        timeout=10,
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    # Wrong secret.
    r = token_request(dict(hookup, client_secret="wrong"), {"grant_type": "client_credentials"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    # Another tenant does not know this client; its API does not take this token.
    r = token_request(hookup, {"grant_type": "client_credentials"}, token_url=P.url("/8/oauth2/token/"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    assert me(8, body["access_token"]).status_code == 401
    # No token, bad token.
    assert requests.get(P.url("/7/api/me/"), timeout=10).status_code == 401
    r = me(7, "not-a-token")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    # openid needs an ID-token algorithm.
    r = token_request(hookup, {"grant_type": "client_credentials", "scope": "openid restapi"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text


def code_flow(hookup, algorithm_key=None, algs=("RS256",), scope="openid restapi", session=None, expect_login=True):
    """Login + authorize (PKCE S256, nonce) + code exchange; returns the token response."""
    session = session or requests.Session()
    verifier, challenge = pkce_pair()
    nonce = secrets.token_urlsafe(12)
    query = authorize(session, hookup, scope, challenge=challenge, nonce=nonce, expect_login=expect_login)
    assert "code" in query, query
    auth = "public" if hookup["client_type"] == "public" else "basic"
    r = token_request(
        hookup,
        {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=auth,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["refresh_token"] and body["expires_in"] == 36000, body
    if "openid" in scope:
        issuer = P.url(f"/{hookup['provet_id']}/oauth2")
        claims, header = verify_id_token(
            body["id_token"], algorithm_key, issuer, hookup["client_id"], nonce, list(algs)
        )
        assert claims["iss"] == issuer and claims["aud"] == hookup["client_id"], claims
        body["_claims"], body["_header"] = claims, header
    # Reusing the code fails.
    r = token_request(
        hookup,
        {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": REDIRECT_URI,
         "code_verifier": verifier},
        auth=auth,
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    return body


def check_authorization_code_rs256():
    hookup = create_app(7, "authorization_code", algorithm="RS256", redirect_uris=REDIRECT_URI)
    assert hookup["authorization_grant_type"] == "authorization-code"
    assert hookup["openid_autodiscovery_url"] == P.url("/7/oauth2/.well-known/openid-configuration")
    issuer = P.url("/7/oauth2")
    body = code_flow(hookup, algorithm_key=fetch_jwks(issuer))
    assert body["_header"]["alg"] == "RS256" and body["_header"]["kid"], body["_header"]
    assert set(body["scope"].split()) == {"openid", "restapi"}, body["scope"]
    r = me(7, body["access_token"])
    assert r.status_code == 200 and r.json()["user"] == USERNAME, r.text

    # Refresh rotates the refresh token; the new access token works.
    rt1 = body["refresh_token"]
    r = token_request(hookup, {"grant_type": "refresh_token", "refresh_token": rt1})
    assert r.status_code == 200, r.text
    rt2 = r.json()["refresh_token"]
    assert rt2 and rt2 != rt1
    assert me(7, r.json()["access_token"]).status_code == 200
    # The old one is dead (no grace period): invalid_grant ...
    r = token_request(hookup, {"grant_type": "refresh_token", "refresh_token": rt1})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    # ... and replaying it revoked the whole family: the grant is lost.
    r = token_request(hookup, {"grant_type": "refresh_token", "refresh_token": rt2})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text

    # A second flow in a logged-in session goes straight to the redirect_uri.
    session = requests.Session()
    code_flow(hookup, algorithm_key=fetch_jwks(issuer), session=session)
    code_flow(hookup, algorithm_key=fetch_jwks(issuer), session=session, expect_login=False)
    verifier, challenge = pkce_pair()
    query = authorize(session, hookup, "restapi", challenge=challenge, expect_login=False)
    assert "code" in query, query


def check_concurrent_refresh_loses_grant():
    hookup = create_app(7, "authorization_code", redirect_uris=REDIRECT_URI)
    body = code_flow(hookup, scope="restapi")
    rt = body["refresh_token"]
    barrier = threading.Barrier(2)

    def refresh():
        barrier.wait()
        return token_request(hookup, {"grant_type": "refresh_token", "refresh_token": rt})

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: refresh(), range(2)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 400], [(r.status_code, r.text) for r in results]
    loser = next(r for r in results if r.status_code == 400)
    assert loser.json()["error"] == "invalid_grant"
    winner = next(r for r in results if r.status_code == 200).json()
    # The winner's new refresh token died with the family.
    r = token_request(hookup, {"grant_type": "refresh_token", "refresh_token": winner["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    # The log shows both refreshes of that one token (whether they overlapped on the
    # server depends on thread scheduling; a broker's test asserts they never do).
    sha = hashlib.sha256(rt.encode()).hexdigest()
    entries = [e for e in requests.get(P.url("/_test/token-requests"), timeout=10).json()
               if e["refresh_token_sha256"] == sha]
    assert len(entries) == 2, entries
    assert sorted(e["error"] or "" for e in entries) == ["", "invalid_grant"], entries
    assert all(e["started_at"] <= e["finished_at"] for e in entries), entries


def check_hs256():
    hookup = create_app(7, "authorization_code", algorithm="HS256", redirect_uris=REDIRECT_URI)
    assert hookup["client_secret"] and hookup["algorithm"] == "HS256"
    info = requests.get(P.url(f"/_test/applications/{hookup['client_id']}"), timeout=10).json()
    assert info["hash_client_secret"] is False, info
    key = jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(hookup["client_secret"].encode()).rstrip(b"=").decode())
    body = code_flow(hookup, algorithm_key=key, algs=("HS256",))
    assert body["_header"]["alg"] == "HS256", body["_header"]
    # Both auth methods work for an unhashed secret too.
    r = token_request(hookup, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}, auth="post")
    assert r.status_code == 200, r.text
    # A refresh with openid issues a new ID token, signed the same way.
    refreshed = jwt.JWT(
        jwt=r.json()["id_token"],
        key=key,
        algs=["HS256"],
        check_claims={"iss": P.url("/7/oauth2"), "aud": hookup["client_id"], "exp": None},
    )
    assert json.loads(refreshed.claims)["sub"] == body["_claims"]["sub"]


def check_public_client():
    hookup = create_app(9, "authorization_code", client_type="public", algorithm="RS256", redirect_uris=REDIRECT_URI)
    assert hookup["client_secret"] is None and hookup["client_type"] == "public"
    # PKCE is required for public clients.
    session = requests.Session()
    query = authorize(session, hookup, "openid restapi")
    assert query.get("error") == "invalid_request", query
    body = code_flow(hookup, algorithm_key=fetch_jwks(P.url("/9/oauth2")), session=session, expect_login=False)
    assert me(9, body["access_token"]).json()["user"] == USERNAME
    r = token_request(hookup, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}, auth="public")
    assert r.status_code == 200, r.text


def consent_form(session, hookup, challenge):
    """With skip_authorization=false the logged-in user sees DOT's consent form."""
    params = {"response_type": "code", "client_id": hookup["client_id"], "redirect_uri": REDIRECT_URI,
              "scope": "restapi", "state": "st", "code_challenge": challenge, "code_challenge_method": "S256"}
    url = hookup["authorize_url"] + "?" + urlencode(params)
    r = session.get(url, allow_redirects=False, timeout=10)
    assert r.status_code == 200 and 'id="authorizationForm"' in r.text, (r.status_code, r.text[:300])
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)"(?: value="([^"]*)")?', r.text))
    return url, fields


def check_consent_page():
    hookup = create_app(7, "authorization_code", redirect_uris=REDIRECT_URI, skip_authorization=False)
    session = requests.Session()
    verifier, challenge = pkce_pair()
    # Log in first (through a skip_authorization app of the same tenant).
    other = create_app(7, "authorization_code", redirect_uris=REDIRECT_URI)
    authorize(session, other, "restapi", challenge=challenge)
    # Deny: the form posted without "allow".
    url, fields = consent_form(session, hookup, challenge)
    r = session.post(url, data=fields, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.status_code
    query = parse_qs(urlparse(r.headers["Location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["st"], query
    # Allow.
    url, fields = consent_form(session, hookup, challenge)
    r = session.post(url, data={**fields, "allow": "Authorize"}, allow_redirects=False, timeout=10)
    query = parse_qs(urlparse(r.headers["Location"]).query)
    assert "code" in query and query["state"] == ["st"], query
    r = token_request(hookup, {"grant_type": "authorization_code", "code": query["code"][0],
                               "redirect_uri": REDIRECT_URI, "code_verifier": verifier})
    assert r.status_code == 200, r.text


def check_revoke_grants():
    hookup = create_app(7, "authorization_code", redirect_uris=REDIRECT_URI)
    body = code_flow(hookup, scope="restapi")
    r = requests.post(P.url(f"/_test/revoke-grants/{hookup['client_id']}"), timeout=10)
    assert r.status_code == 200 and r.json()["deleted_refresh_tokens"] == 1, r.text
    r = token_request(hookup, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert me(7, body["access_token"]).status_code == 200  # access tokens live on unless asked
    r = requests.post(P.url(f"/_test/revoke-grants/{hookup['client_id']}"), json={"access_tokens": True}, timeout=10)
    assert r.json()["deleted_access_tokens"] == 1, r.text
    assert me(7, body["access_token"]).status_code == 401


def check_short_lived_tokens():
    hookup = create_app(7, "client_credentials")
    r = requests.post(P.url("/_test/settings"), json={"access_token_seconds": 1}, timeout=10)
    assert r.status_code == 200 and r.json()["access_token_seconds"] == 1, r.text
    try:
        body = token_request(hookup, {"grant_type": "client_credentials"}).json()
        assert body["expires_in"] == 1, body
        time.sleep(1.5)
        r = me(7, body["access_token"])
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"], r.text
    finally:
        requests.post(P.url("/_test/settings"), json={"access_token_seconds": 36000}, timeout=10)


def check_delete_application():
    hookup = create_app(7, "client_credentials")
    token = token_request(hookup, {"grant_type": "client_credentials"}).json()["access_token"]
    r = requests.delete(P.url(f"/_test/applications/{hookup['client_id']}"), timeout=10)
    assert r.status_code == 204, r.status_code
    r = token_request(hookup, {"grant_type": "client_credentials"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    assert me(7, token).status_code == 401
    assert requests.delete(P.url(f"/_test/applications/{hookup['client_id']}"), timeout=10).status_code == 404


def check_bad_test_requests():
    r = requests.post(P.url("/_test/applications"), json={"provet_id": 1.5, "grant_type": "x"}, timeout=10)
    assert r.status_code == 400 and {"provet_id", "grant_type"} <= set(r.json()["fields"]), r.text
    r = requests.post(P.url("/_test/applications"), json={"provet_id": 7, "grant_type": "authorization_code"}, timeout=10)
    assert r.status_code == 400 and "redirect_uris" in r.json()["fields"], r.text


def check_counters_and_log():
    assert requests.post(P.url("/_test/reset"), timeout=10).status_code == 204
    assert requests.get(P.url("/_test/requests"), timeout=10).json() == {}
    assert requests.get(P.url("/_test/token-requests"), timeout=10).json() == []
    hookup = create_app(11, "client_credentials")
    for _ in range(3):
        assert token_request(hookup, {"grant_type": "client_credentials"}, auth="basic").status_code == 200
    assert token_request(hookup, {"grant_type": "client_credentials"}, auth="post").status_code == 200
    requests.get(P.url("/11/oauth2/.well-known/openid-configuration"), timeout=10)
    counts = requests.get(P.url("/_test/requests"), timeout=10).json()
    assert counts == {"/11/oauth2/token/": 4, "/11/oauth2/.well-known/openid-configuration": 1}, counts
    log = requests.get(P.url("/_test/token-requests"), timeout=10).json()
    assert len(log) == 4, log
    assert [e["auth_method"] for e in log] == ["client_secret_basic"] * 3 + ["client_secret_post"], log
    for e in log:
        assert e["provet_id"] == 11 and e["grant_type"] == "client_credentials", e
        assert e["client_id"] == hookup["client_id"] and e["status"] == 200 and e["error"] is None, e
        assert e["started_at"] <= e["finished_at"], e


def check_concurrency():
    hookups = [create_app(100 + i, "client_credentials") for i in range(10)]

    def one(i):
        return token_request(hookups[i % 10], {"grant_type": "client_credentials"}).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(200)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 200, statuses
    print(f"     (200 token requests over 50 connections in {elapsed:.2f} s)")


CHECKS = [
    check_health,
    check_discovery,
    check_jwks,
    check_client_credentials,
    check_authorization_code_rs256,
    check_concurrent_refresh_loses_grant,
    check_hs256,
    check_public_client,
    check_consent_page,
    check_revoke_grants,
    check_short_lived_tokens,
    check_delete_application,
    check_bad_test_requests,
    check_counters_and_log,
    check_concurrency,
]


def main():
    global P
    P = Provider()
    print(f"provider ready at {P.base} in {P.startup_seconds:.2f} s")
    passed = failed = 0
    try:
        for check in CHECKS:
            name = check.__name__.removeprefix("check_")
            try:
                check()
            except Exception:  # noqa: BLE001
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()
            else:
                passed += 1
                print(f"ok   {name}")
        # The stdin watchdog: closing stdin stops the server.
        name = "exits_when_stdin_closes"
        try:
            code = P.stop_by_closing_stdin()
            assert code == 0, code
            try:
                requests.get(P.url("/_test/health"), timeout=2)
                raise AssertionError("still answering after exit")
            except requests.ConnectionError:
                pass
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {name}")
    finally:
        if P.proc.poll() is None:
            P.proc.kill()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
