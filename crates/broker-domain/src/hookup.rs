//! The message Provet POSTs to the hookup URL, and its one parser.
//!
//! `HookupMessage::parse` takes the raw body and returns either a message whose every field
//! is valid, or every problem at once, each naming its field (`hookup/parser.rs` holds the
//! rules). Error messages never repeat a field's value: the body carries a client secret.

use std::collections::BTreeSet;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

use crate::hosts::UrlPolicy;
pub use crate::states::{ClientType, GrantType, SigningAlgorithm};
use crate::tenant::ProvetId;

mod parser;

/// The fields the schema requires, in schema order.
pub const REQUIRED_FIELDS: [&str; 10] = [
    "provet_id",
    "client_id",
    "client_secret",
    "algorithm",
    "authorization_grant_type",
    "client_type",
    "redirect_uris",
    "token_url",
    "authorize_url",
    "openid_autodiscovery_url",
];
const OPTIONAL_FIELDS: [&str; 3] = ["departments", "added_department", "removed_department"];

/// How a message changes the tenant's departments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DepartmentChange {
    /// `departments` was present: this is the whole set.
    FullSet(BTreeSet<i64>),
    /// Only `added_department` / `removed_department` (either may be absent).
    Delta {
        added: Option<i64>,
        removed: Option<i64>,
    },
}

impl DepartmentChange {
    /// The set of departments after applying this change to `current`.
    pub fn apply(&self, current: &BTreeSet<i64>) -> BTreeSet<i64> {
        match self {
            Self::FullSet(set) => set.clone(),
            Self::Delta { added, removed } => {
                let mut next = current.clone();
                if let Some(d) = added {
                    next.insert(*d);
                }
                if let Some(d) = removed {
                    next.remove(d);
                }
                next
            }
        }
    }
}

/// A hookup message whose every field passed validation.
#[derive(Clone)]
pub struct HookupMessage {
    pub provet_id: ProvetId,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub algorithm: Option<SigningAlgorithm>,
    pub grant_type: GrantType,
    pub client_type: ClientType,
    pub redirect_uris: Vec<Url>,
    pub token_url: Url,
    pub authorize_url: Url,
    pub openid_autodiscovery_url: Option<Url>,
    pub departments: DepartmentChange,
    /// Top-level fields the schema does not know; ignored, named in the delivery record.
    pub ignored_fields: Vec<String>,
    /// SHA-256 of the raw body, hex: identifies a delivery without storing it.
    pub digest: String,
}

impl fmt::Debug for HookupMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookupMessage")
            .field("provet_id", &self.provet_id)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("grant_type", &self.grant_type)
            .field("client_type", &self.client_type)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// One problem with one field of the message. `field` is a JSON path (`departments[2]`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A rejected body: why, and the tenant it names if it names one validly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub provet_id: Option<ProvetId>,
    pub error: ParseError,
}

/// Why a body is not a valid hookup message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the message does not follow the hookup schema ({} problems)", .0.len())]
    Invalid(Vec<FieldError>),
}

impl HookupMessage {
    /// Validates a raw body against the hookup schema and the broker's rules, returning the
    /// message or every problem found.
    pub fn parse(body: &[u8], policy: &UrlPolicy) -> Result<Self, ParseError> {
        Self::parse_naming_tenant(body, policy).map_err(|r| r.error)
    }

    /// As `parse`; a rejection also carries the tenant the body names, when it names one
    /// validly (so that the rejection is recorded under it without parsing the body again).
    pub fn parse_naming_tenant(body: &[u8], policy: &UrlPolicy) -> Result<Self, Rejected> {
        let value: Value = serde_json::from_slice(body).map_err(|e| Rejected {
            provet_id: None,
            // serde_json's messages name a position and a category, never the input.
            error: ParseError::InvalidJson(e.to_string()),
        })?;
        let Value::Object(object) = value else {
            return Err(Rejected {
                provet_id: None,
                error: ParseError::Invalid(vec![FieldError::new("$", "must be a JSON object")]),
            });
        };
        let digest = hex::encode(Sha256::digest(body));
        parser::parse(&object, policy, digest).map_err(|error| Rejected {
            provet_id: object
                .get("provet_id")
                .and_then(|v| parser::integer(v).ok())
                .and_then(|n| ProvetId::new(n).ok()),
            error,
        })
    }

    /// The message as stored in the delivery record: every field, the secret replaced.
    pub fn redacted_json(&self) -> Value {
        let departments = match &self.departments {
            DepartmentChange::FullSet(set) => serde_json::json!({ "departments": set }),
            DepartmentChange::Delta { added, removed } => serde_json::json!({
                "added_department": added,
                "removed_department": removed,
            }),
        };
        let mut v = serde_json::json!({
            "provet_id": self.provet_id.get(),
            "client_id": self.client_id,
            "client_secret": self.client_secret.as_ref().map(|_| "[redacted]"),
            "algorithm": self.algorithm.map(SigningAlgorithm::as_str),
            "authorization_grant_type": self.grant_type.as_str(),
            "client_type": self.client_type.as_str(),
            "redirect_uris": self.redirect_uris.iter().map(Url::as_str).collect::<Vec<_>>().join(" "),
            "token_url": self.token_url.as_str(),
            "authorize_url": self.authorize_url.as_str(),
            "openid_autodiscovery_url": self.openid_autodiscovery_url.as_ref().map(Url::as_str),
        });
        if let (Value::Object(target), Value::Object(extra)) = (&mut v, departments) {
            target.extend(extra);
            if !self.ignored_fields.is_empty() {
                target.insert("ignored_fields".into(), self.ignored_fields.clone().into());
            }
        }
        v
    }

    /// The secret's bytes, for comparing with a stored one.
    pub fn secret_str(&self) -> Option<&str> {
        self.client_secret.as_ref().map(|s| s.expose_secret())
    }
}
