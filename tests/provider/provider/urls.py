from django.contrib.auth import views as auth_views
from django.urls import include, path
from oauth2_provider import urls as dot_urls

from . import views

# DOT's own URL patterns (names unchanged, so DOT's reverse() works), with the token
# endpoint wrapped to log and serialise token requests. Mounted at /oauth2/ under the
# tenant's SCRIPT_NAME (/<provet_id>), see wsgi.py. The application-management pages and
# dynamic client registration are left out.
_oauth2_patterns = [
    path("token/", views.TokenView.as_view(), name="token") if getattr(p, "name", None) == "token" else p
    for p in dot_urls.base_urlpatterns
] + dot_urls.oidc_urlpatterns + dot_urls.metadata_urlpatterns

urlpatterns = [
    # Tenant routes (only reachable as /<provet_id>/oauth2/... and /<provet_id>/api/...).
    path("oauth2/", include((_oauth2_patterns, "oauth2_provider"))),
    path("api/me/", views.api_me, name="api-me"),
    # Browser login (plain HTML form with CSRF, no JavaScript).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Test control (no authentication: this server exists only for tests).
    path("_test/health", views.test_health),
    path("_test/applications", views.test_applications),
    path("_test/applications/<str:client_id>", views.test_application),
    path("_test/revoke-grants/<str:client_id>", views.test_revoke_grants),
    path("_test/users", views.test_users),
    path("_test/requests", views.test_requests),
    path("_test/token-requests", views.test_token_requests),
    path("_test/reset", views.test_reset),
    path("_test/settings", views.test_settings),
]
