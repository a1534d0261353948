"""Process-wide, thread-safe state of the test provider: request counters, the
token-endpoint log and the knobs that /_test/settings can change at run time."""

import os
import threading
from collections import Counter

_lock = threading.Lock()

# Set by serve.py once the socket is bound: "http://127.0.0.1:PORT" (no trailing slash).
base_url = os.environ.get("PROVIDER_BASE_URL", "http://127.0.0.1:8000")

# Every request received since start or the last reset, by path (excluding /_test/).
_requests = Counter()

# One entry per token-endpoint request, in arrival order.
_token_requests = []

# Serialises the token endpoint: concurrent refreshes of one grant are answered one
# after the other, so the second one sees a rotated (revoked) token: invalid_grant.
token_endpoint_lock = threading.Lock()


def _env_int(name, default):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _env_bool(name, default):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


# Run-time settings (see settings.py for how DOT reads them).
runtime = {
    "access_token_seconds": _env_int("PROVIDER_ACCESS_TOKEN_SECONDS", 36000),
    "refresh_token_reuse_protection": _env_bool("PROVIDER_REUSE_PROTECTION", True),
}


def count_request(path):
    with _lock:
        _requests[path] += 1


def request_counts():
    with _lock:
        return dict(_requests)


def log_token_request(entry):
    with _lock:
        _token_requests.append(entry)


def token_requests():
    with _lock:
        return [dict(e) for e in _token_requests]


def reset():
    with _lock:
        _requests.clear()
        _token_requests.clear()


def access_token_seconds(request=None):
    """oauthlib calls this (token_expires_in may be a callable) for every token."""
    return runtime["access_token_seconds"]


def tenant_issuer(provet_id):
    return f"{base_url}/{provet_id}/oauth2"
