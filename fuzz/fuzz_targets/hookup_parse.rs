//! Fuzzes `HookupMessage::parse`, the one door through which an unauthenticated body becomes a
//! tenant's OAuth client. Beyond "never panics", every accepted message must satisfy the rules
//! the rest of the broker relies on, and nothing the broker records or logs may depend on the
//! value of the client secret.
#![no_main]

use std::sync::LazyLock;

use broker_domain::hookup::REQUIRED_FIELDS;
use broker_domain::tenant::MAX_PROVET_ID;
use broker_domain::{
    ClientType, DepartmentChange, GrantType, HookupMessage, HostAllowlist, ParseError,
    SigningAlgorithm, UrlPolicy,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const OPTIONAL_FIELDS: [&str; 3] = ["departments", "added_department", "removed_department"];

/// The production default: Provet Cloud hosts only, https only.
static POLICY: LazyLock<UrlPolicy> = LazyLock::new(|| UrlPolicy {
    allowlist: HostAllowlist::new(["provetcloud.com", "*.provetcloud.com"])
        .expect("the default allowlist is valid"),
    allow_http: false,
});

fuzz_target!(|body: &[u8]| {
    let json = serde_json::from_slice::<Value>(body).ok();
    match HookupMessage::parse(body, &POLICY) {
        Ok(message) => check_message(&message, json.as_ref()),
        Err(ParseError::Invalid(errors)) => {
            assert!(
                json.is_some(),
                "Invalid (not InvalidJson) for a body that is not JSON"
            );
            assert!(!errors.is_empty(), "ParseError::Invalid with no errors");
            for e in &errors {
                assert!(!e.field.is_empty(), "an error names no field: {e:?}");
                assert!(!e.message.is_empty(), "an error has no message: {e:?}");
            }
        }
        Err(ParseError::InvalidJson(_)) => {
            assert!(json.is_none(), "InvalidJson for a body that is valid JSON");
        }
    }
    if let Some(Value::Object(object)) = json {
        check_secret_independence(object);
    }
});

/// The guarantees of an accepted message.
fn check_message(m: &HookupMessage, json: Option<&Value>) {
    let id = m.provet_id.get();
    assert!(
        (1..=MAX_PROVET_ID).contains(&id),
        "provet_id {id} out of 1..=2^53"
    );

    assert!(!m.client_id.trim().is_empty(), "blank client_id accepted");
    assert!(m.client_id.len() <= 255, "client_id longer than 255 bytes");
    assert!(
        !m.client_id.chars().any(char::is_control),
        "client_id with a control character accepted"
    );

    // The secret is exactly the body's non-empty `client_secret` string.
    let body_secret = json
        .and_then(|v| v.get("client_secret"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    assert_eq!(
        m.secret_str(),
        body_secret,
        "secret differs from the body's"
    );
    if let Some(secret) = m.secret_str() {
        assert!(secret.len() <= 1024, "secret longer than 1024 bytes");
        assert!(!secret.contains('\0'), "secret with NUL accepted");
    }
    if m.client_type == ClientType::Confidential {
        assert!(
            m.client_secret.is_some(),
            "confidential client without a secret"
        );
    }
    if m.algorithm == Some(SigningAlgorithm::Hs256) {
        assert!(
            m.client_secret.is_some(),
            "HS256 without a secret (the ID-token key)"
        );
    }
    if m.grant_type == GrantType::ClientCredentials {
        assert_eq!(
            m.client_type,
            ClientType::Confidential,
            "client_credentials with a public client"
        );
    }
    if m.grant_type == GrantType::AuthorizationCode {
        assert!(
            !m.redirect_uris.is_empty(),
            "authorization_code without redirect URIs"
        );
    }

    assert!(m.redirect_uris.len() <= 32, "more than 32 redirect URIs");
    for uri in &m.redirect_uris {
        assert!(
            !uri.cannot_be_a_base(),
            "cannot-be-a-base redirect URI accepted"
        );
        assert!(
            uri.fragment().is_none(),
            "redirect URI with a fragment accepted"
        );
    }

    // Upstream URLs: the normalised form stored by the broker must pass the same policy again
    // and re-parse to itself (it is stored as text and parsed when used).
    let upstream = [
        Some(&m.token_url),
        Some(&m.authorize_url),
        m.openid_autodiscovery_url.as_ref(),
    ];
    for url in upstream.into_iter().flatten() {
        assert_eq!(
            url.scheme(),
            "https",
            "non-https upstream URL with allow_http = false"
        );
        match POLICY.check(url.as_str()) {
            Ok(again) => assert_eq!(
                again.as_str(),
                url.as_str(),
                "an accepted upstream URL does not re-parse to itself"
            ),
            Err(e) => panic!("an accepted upstream URL fails the policy when re-checked: {e}"),
        }
    }

    let department_ok = |d: &i64| (0..=MAX_PROVET_ID).contains(d);
    match &m.departments {
        DepartmentChange::FullSet(set) => {
            assert!(set.len() <= 10_000, "more than 10000 departments");
            assert!(set.iter().all(department_ok), "department out of 0..=2^53");
        }
        DepartmentChange::Delta { added, removed } => {
            assert!(
                added.iter().chain(removed.iter()).all(department_ok),
                "added/removed department out of 0..=2^53"
            );
        }
    }

    for f in &m.ignored_fields {
        assert!(
            !REQUIRED_FIELDS.contains(&f.as_str()) && !OPTIONAL_FIELDS.contains(&f.as_str()),
            "known field `{f}` reported as ignored"
        );
    }
    assert!(
        m.digest.len() == 64
            && m.digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "digest is not 64 lowercase hex digits"
    );

    let redacted = m.redacted_json();
    let Value::Object(fields) = &redacted else {
        panic!("redacted_json is not an object");
    };
    for field in REQUIRED_FIELDS {
        assert!(fields.contains_key(field), "redacted_json lacks `{field}`");
    }
    let expected_secret = if m.client_secret.is_some() {
        Value::from("[redacted]")
    } else {
        Value::Null
    };
    assert_eq!(
        fields["client_secret"], expected_secret,
        "client_secret not redacted"
    );
    assert_eq!(
        fields["provet_id"],
        Value::from(id),
        "redacted provet_id differs"
    );
}

/// Parses the body twice more, once as it is and once with `client_secret` replaced by a stand-in
/// of the same byte length (so every length, emptiness and NUL rule gives the same answer), and
/// requires the same outcome: the same validity, the same errors, the same `redacted_json()` and
/// `Debug`. A literal "the text does not contain the secret" check would be wrong: a secret such
/// as `provetcloud.com` may legitimately occur in another field.
fn check_secret_independence(mut object: Map<String, Value>) {
    let Some(Value::String(secret)) = object.get("client_secret").cloned() else {
        return;
    };
    if secret.is_empty() || secret.contains('\0') {
        return;
    }
    let mut stand_in = "x".repeat(secret.len());
    if stand_in == secret {
        stand_in = "y".repeat(secret.len());
    }
    // Both bodies come from the same `Value`, so everything but the secret is byte-identical.
    let with_secret = Value::Object(object.clone()).to_string();
    object.insert("client_secret".into(), Value::String(stand_in));
    let with_stand_in = Value::Object(object).to_string();

    match (
        HookupMessage::parse(with_secret.as_bytes(), &POLICY),
        HookupMessage::parse(with_stand_in.as_bytes(), &POLICY),
    ) {
        (Ok(a), Ok(b)) => {
            let (ra, rb) = (a.redacted_json(), b.redacted_json());
            if secret.chars().count() >= 8 {
                assert!(
                    !ra.to_string().contains(&secret) || rb.to_string().contains(&secret),
                    "redacted_json contains the client secret"
                );
                assert!(
                    !format!("{a:?}").contains(&secret) || format!("{b:?}").contains(&secret),
                    "Debug of the message contains the client secret"
                );
            }
            assert_eq!(ra, rb, "redacted_json depends on the secret's value");
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "Debug depends on the secret's value"
            );
        }
        (Err(a), Err(b)) => {
            if secret.chars().count() >= 8 {
                assert!(
                    !format!("{a:?}").contains(&secret) || format!("{b:?}").contains(&secret),
                    "a parse error contains the client secret"
                );
            }
            assert_eq!(a, b, "parse errors depend on the secret's value");
        }
        (a, b) => panic!(
            "validity depends on the secret's value: with it {:?}, with a stand-in {:?}",
            a.map(|_| "accepted"),
            b.map(|_| "accepted"),
        ),
    }
}
