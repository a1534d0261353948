"""Which tenant (provet_id) a request or an application belongs to.

Every tenant's endpoints live under /<provet_id>/...: wsgi.py moves that prefix into
SCRIPT_NAME and records the id in the WSGI environ under ENVIRON_KEY (Django copies the
environ into request.META, and DOT copies request.META into oauthlib's request headers).
Applications record their tenant in their name: "provet:<provet_id>".
"""

ENVIRON_KEY = "provider.provet_id"
NAME_PREFIX = "provet:"


def application_name(provet_id):
    return f"{NAME_PREFIX}{provet_id}"


def application_tenant(application):
    name = getattr(application, "name", "") or ""
    if name.startswith(NAME_PREFIX):
        try:
            return int(name[len(NAME_PREFIX):])
        except ValueError:
            return None
    return None


def request_tenant(request):
    """provet_id of a Django request (request.META) or an oauthlib request (headers)."""
    meta = getattr(request, "META", None)
    if meta is None:
        meta = getattr(request, "headers", None) or {}
    value = meta.get(ENVIRON_KEY)
    return int(value) if value is not None else None
