from oauth2_provider.oauth2_validators import OAuth2Validator

from . import state, tenants


class TenantOAuth2Validator(OAuth2Validator):
    """DOT's validator, made multi-tenant like Provet Cloud (one database per tenant there,
    one shared database here):

    - a client exists only at its own tenant's endpoints: another tenant's client_id is
      unknown (invalid_client), as it would be in another tenant's database;
    - the OIDC issuer is the tenant's mount URL, http://127.0.0.1:PORT/<provet_id>/oauth2;
    - the openid scope is refused (invalid_scope) to clients without an ID-token algorithm.
    """

    def _load_application(self, client_id, request):
        client = super()._load_application(client_id, request)
        if client is None:
            return None
        tenant = tenants.request_tenant(request)
        if tenant is None or tenants.application_tenant(client) != tenant:
            request.client = None
            return None
        return client

    def get_oidc_issuer_endpoint(self, request):
        tenant = tenants.request_tenant(request)
        if tenant is None:
            return super().get_oidc_issuer_endpoint(request)
        return state.tenant_issuer(tenant)

    def validate_scopes(self, client_id, scopes, client, request, *args, **kwargs):
        if "openid" in scopes and not getattr(client, "algorithm", ""):
            return False
        return super().validate_scopes(client_id, scopes, client, request, *args, **kwargs)
