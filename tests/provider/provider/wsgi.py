"""WSGI entry point: the per-tenant mounts, the canonical host and the request counters.

A request for /<provet_id>/oauth2/... or /<provet_id>/api/... is handed to Django with
SCRIPT_NAME=/<provet_id> and PATH_INFO=/oauth2/... . Django then sets its script prefix
per request, so DOT's own reverse("oauth2_provider:token") and build_absolute_uri() give
http://127.0.0.1:PORT/<provet_id>/oauth2/token/: the discovery document, the issuer and
every redirect stay under the tenant's mount, with no change to DOT's URL patterns.
"""

import os
import re

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "provider.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

from . import state, tenants  # noqa: E402

_TENANT_PATH = re.compile(r"^/([1-9][0-9]{0,15})(/(?:oauth2|api)(?:/.*)?)$")
_TENANT_ONLY = re.compile(r"^/(?:oauth2|api)(?:/|$)")


def _not_found(start_response):
    body = b'{"error": "not_found"}'
    start_response(
        "404 Not Found",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


class ProviderApp:
    def __init__(self, django_app):
        self.django_app = django_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "") or "/"
        if not path.startswith("/_test/"):
            state.count_request(path)

        # One issuer per tenant whatever Host the client sent: http://127.0.0.1:PORT.
        host = state.base_url.split("://", 1)[1]
        environ["HTTP_HOST"] = host
        environ.pop("HTTP_X_FORWARDED_HOST", None)

        match = _TENANT_PATH.match(path)
        if match:
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "").rstrip("/") + "/" + match.group(1)
            environ["PATH_INFO"] = match.group(2)
            environ[tenants.ENVIRON_KEY] = int(match.group(1))
        elif _TENANT_ONLY.match(path):
            # OAuth endpoints exist only under a tenant's mount.
            return _not_found(start_response)
        return self.django_app(environ, start_response)


application = ProviderApp(get_wsgi_application())
