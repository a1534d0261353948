//! Every state the broker stores or shows, as a type: one spelling per value, defined once.
//!
//! Each enum's `as_str` is the value in the database, in JSON and in logs; `FromStr` and
//! `TryFrom<&str>` are its only parsers. With the `sea-orm` feature each maps to a text column
//! (`DeriveActiveEnum`); with `utoipa` each documents its values in the OpenAPI schema.

use std::fmt;
use std::str::FromStr;

/// A string that names no value of a state enum.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}` ({expected})")]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// Defines a state enum: its variants with their one spelling, `as_str`, the parsers,
/// `Display`, serde (the same spelling), and the optional sea-orm and utoipa derives.
macro_rules! state_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[cfg_attr(feature = "sea-orm", derive(sea_orm::DeriveActiveEnum, sea_orm::EnumIter))]
        #[cfg_attr(feature = "sea-orm", sea_orm(rs_type = "String", db_type = "Text"))]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $value)]
                #[cfg_attr(feature = "sea-orm", sea_orm(string_value = $value))]
                $variant,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The one spelling: database, JSON and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }
        }

        // By hand, not derived: the derive does not see a variant's `serde(rename)` when the
        // spelling comes in through this macro, and would document `hs256` for `HS256`.
        #[cfg(feature = "utoipa")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(concat!("A ", $what, ".")))
                    .enum_values(Some([$($value),+]))
                    .into()
            }
        }

        #[cfg(feature = "utoipa")]
        impl utoipa::ToSchema for $name {}

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($value => Ok(Self::$variant),)+
                    other => Err(UnknownState {
                        what: $what,
                        value: other.to_owned(),
                        expected: [$($value),+].join(", "),
                    }),
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = UnknownState;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

state_enum! {
    /// Whether a tenant has the integration installed.
    TenantStatus("tenant status") {
        Active = "active",
        Removed = "removed",
    }
}

state_enum! {
    /// Whether the client can keep a secret.
    ClientType("client type") {
        Confidential = "confidential",
        Public = "public",
    }
}

state_enum! {
    /// The OAuth flow the tenant's client uses.
    GrantType("grant type") {
        AuthorizationCode = "authorization_code",
        ClientCredentials = "client_credentials",
    }
}

state_enum! {
    /// How the provider signs ID tokens; absent means the client does not use OpenID Connect.
    SigningAlgorithm("signing algorithm") {
        Hs256 = "HS256",
        Rs256 = "RS256",
    }
}

state_enum! {
    /// What an API key may do: fetch tokens, or administer the broker (which includes tokens).
    ApiKeyRole("role") {
        Token = "token",
        Admin = "admin",
    }
}

state_enum! {
    /// Whether the provider accepted a client's credentials the last time they were tried.
    CredentialsState("credentials state") {
        /// New credentials, not tried yet.
        Unchecked = "unchecked",
        Ok = "ok",
        Rejected = "rejected",
    }
}

state_enum! {
    /// Where fetching a tenant's OpenID Connect metadata stands. `NotApplicable` (the tenant
    /// has no discovery URL) is never stored: such a tenant has no discovery row.
    DiscoveryState("discovery state") {
        Pending = "pending",
        Ok = "ok",
        Failed = "failed",
        NotApplicable = "not_applicable",
    }
}

state_enum! {
    /// Whether a clinic user's grant can still be refreshed.
    GrantState("grant state") {
        Active = "active",
        /// The provider refused the refresh token (`invalid_grant`): the user must connect again.
        ReauthorizationRequired = "reauthorization_required",
        Revoked = "revoked",
    }
}

state_enum! {
    /// What storing a valid hookup message did.
    HookupOutcome("hookup outcome") {
        Registered = "registered",
        Updated = "updated",
        Unchanged = "unchanged",
    }
}

state_enum! {
    /// What became of one hookup delivery: a stored message's outcome, or its rejection.
    DeliveryOutcome("delivery outcome") {
        Registered = "registered",
        Updated = "updated",
        Unchanged = "unchanged",
        Rejected = "rejected",
    }
}

state_enum! {
    /// Who made a delivery: Provet's hookup POST, an operator through the admin API, or the CLI.
    DeliverySource("delivery source") {
        Hookup = "hookup",
        Admin = "admin",
        Cli = "cli",
    }
}

state_enum! {
    /// A webhook: `active`, or `disabled` after its endpoint answered `410 Gone`.
    WebhookState("webhook state") {
        Active = "active",
        Disabled = "disabled",
    }
}

state_enum! {
    /// One event's delivery to one webhook: `pending` (due or waiting for a retry),
    /// `delivered` (a 2xx), `failed` (the retries ran out, or the endpoint is gone).
    DeliveryState("webhook delivery state") {
        Pending = "pending",
        Delivered = "delivered",
        Failed = "failed",
    }
}

state_enum! {
    /// Who did an admin action: an API key over HTTP, the command line, or a console session.
    ActorKind("actor kind") {
        ApiKey = "api_key",
        Cli = "cli",
        Console = "console",
    }
}

state_enum! {
    /// Every admin action the audit log records, named `<resource>.<verb>`.
    AuditAction("audit action") {
        TenantRegister = "tenant.register",
        TenantRemove = "tenant.remove",
        TenantVerify = "tenant.verify",
        TenantDiscovery = "tenant.discovery",
        DiscoveryRerun = "discovery.rerun",
        GrantRevoke = "grant.revoke",
        ConnectLink = "tenant.connect_link",
        ApiKeyCreate = "api_key.create",
        ApiKeyRevoke = "api_key.revoke",
        WebhookCreate = "webhook.create",
        WebhookDelete = "webhook.delete",
        WebhookRetry = "webhook.retry",
        ConsoleSignIn = "console.sign_in",
        ConsoleSignOut = "console.sign_out",
        Rekey = "keys.rekey",
        Import = "data.import",
        Export = "data.export",
    }
}

state_enum! {
    /// How an audited action ended: done, refused (bad input, unknown target, no right), or
    /// failed (an error on our side or upstream).
    AuditOutcome("audit outcome") {
        Ok = "ok",
        Refused = "refused",
        Failed = "failed",
    }
}

impl GrantType {
    /// Accepts both the RFC spelling and django-oauth-toolkit's (`authorization-code`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "authorization-code" => Some(Self::AuthorizationCode),
            "client-credentials" => Some(Self::ClientCredentials),
            other => other.parse().ok(),
        }
    }
}

impl ClientType {
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl SigningAlgorithm {
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl GrantState {
    /// Whether the grant's refresh token may still be used.
    pub fn is_active(self) -> bool {
        self == Self::Active
    }
}

impl From<HookupOutcome> for DeliveryOutcome {
    fn from(outcome: HookupOutcome) -> Self {
        match outcome {
            HookupOutcome::Registered => Self::Registered,
            HookupOutcome::Updated => Self::Updated,
            HookupOutcome::Unchanged => Self::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T>(all: &[T])
    where
        T: Copy + fmt::Debug + PartialEq + FromStr + serde::Serialize + fmt::Display,
        T: for<'a> serde::Deserialize<'a>,
        <T as FromStr>::Err: fmt::Debug,
    {
        for value in all {
            let text = value.to_string();
            assert_eq!(text.parse::<T>().ok(), Some(*value), "{text}");
            let json = serde_json::to_string(value).unwrap_or_default();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<T>(&json).ok(), Some(*value));
        }
    }

    #[test]
    fn every_state_round_trips_through_its_one_spelling() {
        round_trips(TenantStatus::ALL);
        round_trips(ClientType::ALL);
        round_trips(GrantType::ALL);
        round_trips(SigningAlgorithm::ALL);
        round_trips(ApiKeyRole::ALL);
        round_trips(CredentialsState::ALL);
        round_trips(DiscoveryState::ALL);
        round_trips(GrantState::ALL);
        round_trips(HookupOutcome::ALL);
        round_trips(DeliveryOutcome::ALL);
        round_trips(DeliverySource::ALL);
        round_trips(ActorKind::ALL);
        round_trips(AuditAction::ALL);
        round_trips(AuditOutcome::ALL);
    }

    #[test]
    fn the_wire_spellings_are_the_established_ones() {
        assert_eq!(SigningAlgorithm::Hs256.as_str(), "HS256");
        assert_eq!(
            GrantState::ReauthorizationRequired.as_str(),
            "reauthorization_required"
        );
        assert_eq!(DiscoveryState::NotApplicable.as_str(), "not_applicable");
        assert_eq!(GrantType::ClientCredentials.as_str(), "client_credentials");
    }

    #[test]
    fn unknown_values_are_refused_with_the_expected_ones() {
        let err = "bogus".parse::<CredentialsState>().err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("unknown credentials state `bogus` (unchecked, ok, rejected)")
        );
        assert!(GrantState::try_from("Active").is_err());
        assert_eq!(
            GrantType::parse("authorization-code"),
            Some(GrantType::AuthorizationCode)
        );
        assert_eq!("authorization-code".parse::<GrantType>().ok(), None);
    }
}
