"""Django settings of the test provider: django-oauth-toolkit configured the way Provet
Cloud behaves (see /work/shared/DESIGN.md section 1 and ../README.md)."""

import os
import secrets
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import state

BASE_DIR = Path(__file__).resolve().parent

# Fresh per process: nothing secret is ever committed.
SECRET_KEY = secrets.token_urlsafe(50)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "oauth2_provider",
    "provider",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",  # sets Content-Length (keep-alive)
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

APPEND_SLASH = False
ROOT_URLCONF = "provider.urls"
WSGI_APPLICATION = "provider.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    }
]

# One SQLite database per process, in a temporary directory (serve.py removes it).
_db_dir = os.environ.get("PROVIDER_DB_DIR") or tempfile.mkdtemp(prefix="provet-provider-")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_db_dir, "provider.sqlite3"),
        "CONN_MAX_AGE": None,
        "OPTIONS": {
            # BEGIN IMMEDIATE: a transaction that writes takes the lock up front instead
            # of failing with "database is locked" when it upgrades a stale read snapshot.
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;",
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Sessions in signed cookies: no session table, fewer writes.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/accounts/login/"

# Client secrets are hashed like user passwords. Django's default PBKDF2 takes ~0.5 s per
# check, which would dominate every token request; the same algorithm with few iterations
# keeps the stored format (pbkdf2_sha256$...) and the behaviour, but is fast.
PASSWORD_HASHERS = ["provider.hashers.FastPBKDF2PasswordHasher"]

USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False


def _rsa_private_key_pem():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    ).decode("ascii")


def _pkce_required(client_id):
    """PKCE is required for public clients, accepted (verified when sent) for all."""
    from oauth2_provider.models import get_application_model

    Application = get_application_model()
    client_type = (
        Application.objects.filter(client_id=client_id).values_list("client_type", flat=True).first()
    )
    return client_type != Application.CLIENT_CONFIDENTIAL


OAUTH2_PROVIDER = {
    "SCOPES": {
        "restapi": "Access the Provet Cloud REST API",
        "openid": "OpenID Connect",
    },
    "DEFAULT_SCOPES": ["restapi"],
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": _rsa_private_key_pem(),
    "OIDC_JWKS_MAX_AGE_SECONDS": 3600,
    # Access tokens live 10 hours unless PROVIDER_ACCESS_TOKEN_SECONDS or
    # POST /_test/settings says otherwise (a callable: oauthlib calls it per token).
    "ACCESS_TOKEN_EXPIRE_SECONDS": state.access_token_seconds,
    "ID_TOKEN_EXPIRE_SECONDS": 36000,
    # Refresh tokens rotate on every use, with no grace period, and die after 30 days.
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    "REFRESH_TOKEN_EXPIRE_SECONDS": 30 * 24 * 3600,
    # Reusing a rotated refresh token revokes the whole family (the grant is lost).
    "REFRESH_TOKEN_REUSE_PROTECTION": state.runtime["refresh_token_reuse_protection"],
    "PKCE_REQUIRED": _pkce_required,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 600,
    "OAUTH2_VALIDATOR_CLASS": "provider.validators.TenantOAuth2Validator",
    "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {
        # 500s print their traceback on stderr.
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        "provider": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "waitress": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}
