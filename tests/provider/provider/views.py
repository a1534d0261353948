"""The protected REST resource, the logged token endpoint and the /_test/ control API."""

import base64
import hashlib
import json
import logging
import time
from urllib.parse import parse_qs, unquote_plus

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider import views as dot_views
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import get_access_token_model, get_application_model, get_refresh_token_model
from oauth2_provider.oauth2_backends import get_oauthlib_core
from oauth2_provider.settings import oauth2_settings

from . import state, tenants

log = logging.getLogger("provider")

Application = get_application_model()
AccessToken = get_access_token_model()
RefreshToken = get_refresh_token_model()

GRANT_TYPES = {
    "client_credentials": Application.GRANT_CLIENT_CREDENTIALS,
    "client-credentials": Application.GRANT_CLIENT_CREDENTIALS,
    "authorization_code": Application.GRANT_AUTHORIZATION_CODE,
    "authorization-code": Application.GRANT_AUTHORIZATION_CODE,
}
CLIENT_TYPES = (Application.CLIENT_CONFIDENTIAL, Application.CLIENT_PUBLIC)
ALGORITHMS = {None: "", "": "", "RS256": "RS256", "HS256": "HS256"}


# --------------------------------------------------------------------------------------
# Token endpoint: DOT's TokenView, logged and serialised.


def _first(params, key):
    values = params.get(key)
    return values[0] if values else None


def _basic_client_id(request):
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, sep, _ = decoded.partition(":")
    return unquote_plus(client_id) if sep else None


class TokenView(dot_views.TokenView):
    """DOT's token endpoint, plus:

    - every request is logged for GET /_test/token-requests;
    - requests are answered one at a time (a process-wide lock), so two concurrent
      refreshes with the same refresh token cannot both win: the second one finds the
      token rotated and gets invalid_grant, as Provet Cloud answers.
    """

    def post(self, request, *args, **kwargs):
        started_at = time.time()
        body = request.body  # read once; DOT reads the cached copy
        params = {}
        if (request.content_type or "") == "application/x-www-form-urlencoded":
            params = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        basic_client_id = _basic_client_id(request)
        refresh_token = _first(params, "refresh_token")
        entry = {
            "provet_id": tenants.request_tenant(request),
            "grant_type": _first(params, "grant_type"),
            "client_id": basic_client_id or _first(params, "client_id"),
            "auth_method": (
                "client_secret_basic"
                if basic_client_id is not None
                else "client_secret_post"
                if _first(params, "client_secret") is not None
                else "none"
            ),
            "content_type": request.content_type,
            "scope": _first(params, "scope"),
            "has_code_verifier": _first(params, "code_verifier") is not None,
            "refresh_token_sha256": (
                hashlib.sha256(refresh_token.encode("utf-8")).hexdigest() if refresh_token else None
            ),
            "started_at": started_at,
            "finished_at": None,
            "status": 500,
            "error": None,
        }
        try:
            with state.token_endpoint_lock:
                response = super().post(request, *args, **kwargs)
            entry["status"] = response.status_code
            if response.status_code >= 400:
                try:
                    entry["error"] = json.loads(response.content).get("error")
                except (ValueError, AttributeError):
                    entry["error"] = None
            return response
        finally:
            entry["finished_at"] = time.time()
            state.log_token_request(entry)


# --------------------------------------------------------------------------------------
# Protected resource: GET /<provet_id>/api/me/


@csrf_exempt
def api_me(request):
    """A Provet REST API stand-in: needs a valid access token with scope restapi that was
    issued to a client of this tenant."""
    valid, oauth_request = get_oauthlib_core().verify_request(request, scopes=["restapi"])
    tenant = tenants.request_tenant(request)
    if valid:
        application = oauth_request.access_token.application
        if tenants.application_tenant(application) != tenant:
            valid = False
            error = "invalid_token"
    if not valid:
        if oauth_request is not None and getattr(oauth_request, "oauth2_error", None):
            error = oauth_request.oauth2_error.get("error", "invalid_token")
        elif "error" not in locals():
            error = "invalid_token"
        status = 403 if error == "insufficient_scope" else 401
        response = JsonResponse({"error": error}, status=status)
        response["WWW-Authenticate"] = f'Bearer realm="provet", error="{error}"'
        return response
    user = oauth_request.user
    return JsonResponse(
        {
            "provet_id": tenant,
            "client_id": application.client_id,
            "user": user.get_username() if user is not None and user.is_authenticated else None,
            "scope": oauth_request.access_token.scope,
        }
    )


# --------------------------------------------------------------------------------------
# /_test/ control API (no authentication: this server exists only for tests).


def _json_error(status, message, **extra):
    return JsonResponse({"error": message, **extra}, status=status)


def _json_body(request):
    if not request.body:
        return {}
    data = json.loads(request.body)
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _method_not_allowed(*allowed):
    response = _json_error(405, "method not allowed")
    response["Allow"] = ", ".join(allowed)
    return response


def hookup_message(application, plaintext_secret, departments=(1,)):
    """The JSON message Provet Cloud POSTs to the hookup URL for this application."""
    provet_id = tenants.application_tenant(application)
    mount = state.tenant_issuer(provet_id)
    return {
        "provet_id": provet_id,
        "client_id": application.client_id,
        "client_secret": (
            plaintext_secret if application.client_type == Application.CLIENT_CONFIDENTIAL else None
        ),
        "algorithm": application.algorithm or None,
        "authorization_grant_type": application.authorization_grant_type,
        "client_type": application.client_type,
        "redirect_uris": application.redirect_uris,
        "token_url": f"{mount}/token/",
        "authorize_url": f"{mount}/authorize/",
        "openid_autodiscovery_url": (
            f"{mount}/.well-known/openid-configuration" if application.algorithm else None
        ),
        "departments": list(departments),
    }


def _application_info(application):
    return {
        "provet_id": tenants.application_tenant(application),
        "client_id": application.client_id,
        "client_type": application.client_type,
        "authorization_grant_type": application.authorization_grant_type,
        "algorithm": application.algorithm or None,
        "redirect_uris": application.redirect_uris,
        "hash_client_secret": application.hash_client_secret,
        "skip_authorization": application.skip_authorization,
    }


@csrf_exempt
def test_health(request):
    return JsonResponse({"status": "ok"})


@csrf_exempt
def test_applications(request):
    if request.method == "GET":
        apps = Application.objects.filter(name__startswith=tenants.NAME_PREFIX).order_by("id")
        return JsonResponse([_application_info(a) for a in apps], safe=False)
    if request.method != "POST":
        return _method_not_allowed("GET", "POST")
    try:
        data = _json_body(request)
    except ValueError as exc:
        return _json_error(400, f"invalid JSON: {exc}")

    errors = {}
    provet_id = data.get("provet_id")
    if not isinstance(provet_id, int) or isinstance(provet_id, bool) or not 1 <= provet_id < 2**53:
        errors["provet_id"] = "a positive integer is required"
    grant_type = GRANT_TYPES.get(data.get("grant_type") or data.get("authorization_grant_type"))
    if grant_type is None:
        errors["grant_type"] = f"one of {sorted(GRANT_TYPES)}"
    client_type = data.get("client_type", Application.CLIENT_CONFIDENTIAL)
    if client_type not in CLIENT_TYPES:
        errors["client_type"] = f"one of {list(CLIENT_TYPES)}"
    algorithm = data.get("algorithm")
    if algorithm not in ALGORITHMS:
        errors["algorithm"] = "null, RS256 or HS256"
    redirect_uris = data.get("redirect_uris") or ""
    if not isinstance(redirect_uris, str):
        errors["redirect_uris"] = "a space separated string"
    departments = data.get("departments", [1])
    if not isinstance(departments, list) or not all(isinstance(d, int) for d in departments):
        errors["departments"] = "a list of integers"
    for key in ("client_id", "client_secret"):
        if data.get(key) is not None and not (isinstance(data[key], str) and data[key]):
            errors[key] = "a non-empty string"
    if errors:
        return _json_error(400, "invalid request", fields=errors)

    algorithm = ALGORITHMS[algorithm]
    if client_type == Application.CLIENT_CONFIDENTIAL:
        # Captured before DOT hashes it on save: the hookup message carries the plaintext.
        plaintext_secret = data.get("client_secret") or generate_client_secret()
    else:
        plaintext_secret = ""
    application = Application(
        name=tenants.application_name(provet_id),
        client_type=client_type,
        authorization_grant_type=grant_type,
        redirect_uris=" ".join(redirect_uris.split()),
        algorithm=algorithm,
        skip_authorization=bool(data.get("skip_authorization", True)),
        # HS256 signs ID tokens with the raw secret: it must be stored unhashed.
        hash_client_secret=(algorithm != Application.HS256_ALGORITHM and bool(plaintext_secret)),
        client_secret=plaintext_secret,
    )
    if data.get("client_id"):
        application.client_id = data["client_id"]
    try:
        application.full_clean()
    except ValidationError as exc:
        return _json_error(400, "invalid application", fields=exc.message_dict)
    application.save()
    return JsonResponse(hookup_message(application, plaintext_secret, departments), status=201)


@csrf_exempt
def test_application(request, client_id):
    application = Application.objects.filter(client_id=client_id).first()
    if application is None:
        return _json_error(404, "no such application")
    if request.method == "GET":
        return JsonResponse(_application_info(application))
    if request.method != "DELETE":
        return _method_not_allowed("GET", "DELETE")
    # Its grants and tokens go with it. A token issued for it while the delete collects them
    # (the broker may be checking its credentials right then) fails the foreign key: try again.
    for attempt in range(10):
        try:
            with transaction.atomic():
                application.delete()
            break
        except IntegrityError:
            if attempt == 9:
                raise
            time.sleep(0.05)
    return HttpResponse(status=204)


@csrf_exempt
def test_revoke_grants(request, client_id):
    if request.method != "POST":
        return _method_not_allowed("POST")
    application = Application.objects.filter(client_id=client_id).first()
    if application is None:
        return _json_error(404, "no such application")
    try:
        data = _json_body(request)
    except ValueError as exc:
        return _json_error(400, f"invalid JSON: {exc}")
    with transaction.atomic():
        refresh_deleted, _ = RefreshToken.objects.filter(application=application).delete()
        access_deleted = 0
        if data.get("access_tokens"):
            access_deleted, _ = AccessToken.objects.filter(application=application).delete()
    return JsonResponse(
        {"client_id": client_id, "deleted_refresh_tokens": refresh_deleted, "deleted_access_tokens": access_deleted}
    )


@csrf_exempt
def test_users(request):
    if request.method != "POST":
        return _method_not_allowed("POST")
    try:
        data = _json_body(request)
    except ValueError as exc:
        return _json_error(400, f"invalid JSON: {exc}")
    username, password = data.get("username"), data.get("password")
    if not (isinstance(username, str) and username and isinstance(password, str) and password):
        return _json_error(400, "username and password are required strings")
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        return _json_error(409, "user exists")
    user = User.objects.create_user(username=username, password=password)
    return JsonResponse({"id": user.pk, "sub": str(user.pk), "username": username}, status=201)


@csrf_exempt
def test_requests(request):
    if request.method != "GET":
        return _method_not_allowed("GET")
    return JsonResponse(state.request_counts())


@csrf_exempt
def test_token_requests(request):
    if request.method != "GET":
        return _method_not_allowed("GET")
    return JsonResponse(state.token_requests(), safe=False)


@csrf_exempt
def test_reset(request):
    if request.method != "POST":
        return _method_not_allowed("POST")
    state.reset()
    return HttpResponse(status=204)


@csrf_exempt
def test_settings(request):
    if request.method == "POST":
        try:
            data = _json_body(request)
        except ValueError as exc:
            return _json_error(400, f"invalid JSON: {exc}")
        seconds = data.get("access_token_seconds")
        if seconds is not None:
            if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
                return _json_error(400, "access_token_seconds must be a positive integer")
            state.runtime["access_token_seconds"] = seconds
        reuse = data.get("refresh_token_reuse_protection")
        if reuse is not None:
            if not isinstance(reuse, bool):
                return _json_error(400, "refresh_token_reuse_protection must be a boolean")
            state.runtime["refresh_token_reuse_protection"] = reuse
            oauth2_settings.REFRESH_TOKEN_REUSE_PROTECTION = reuse
    elif request.method != "GET":
        return _method_not_allowed("GET", "POST")
    return JsonResponse(dict(state.runtime))
