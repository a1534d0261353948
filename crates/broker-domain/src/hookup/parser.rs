//! The hookup message's one parser: reads every field of the JSON object, records each
//! problem under its field's JSON path, then applies the rules across fields. Messages never
//! repeat a field's value: the body carries a client secret.

use std::collections::BTreeSet;

use secrecy::SecretString;
use serde_json::{Map, Value};
use url::Url;

use super::{
    ClientType, DepartmentChange, FieldError, GrantType, HookupMessage, OPTIONAL_FIELDS,
    ParseError, REQUIRED_FIELDS, SigningAlgorithm,
};
use crate::hosts::UrlPolicy;
use crate::tenant::{MAX_PROVET_ID, ProvetId};

const MAX_CLIENT_ID_LEN: usize = 255;
const MAX_SECRET_LEN: usize = 1024;
const MAX_URL_LEN: usize = 2048;
const MAX_REDIRECT_URIS: usize = 32;
const MAX_DEPARTMENTS: usize = 10_000;

/// Validates a JSON object as a hookup message: the message, or every problem found.
pub(super) fn parse(
    object: &Map<String, Value>,
    policy: &UrlPolicy,
    digest: String,
) -> Result<HookupMessage, ParseError> {
    let mut parser = Parser {
        object,
        errors: Vec::new(),
        policy,
    };
    for field in REQUIRED_FIELDS {
        if !object.contains_key(field) {
            parser.error(field, "is required");
        }
    }
    let fields = parser.fields();
    parser.rules_across_fields(&fields);
    let ignored_fields = parser.ignored_fields();
    match fields.into_message(ignored_fields, digest) {
        Some(message) if parser.errors.is_empty() => Ok(message),
        _ => Err(ParseError::Invalid(parser.errors)),
    }
}

/// Every field as read: `None` where it is missing or invalid (the problem is recorded).
struct Fields {
    provet_id: Option<ProvetId>,
    client_id: Option<String>,
    client_secret: Option<Option<String>>,
    algorithm: Option<Option<SigningAlgorithm>>,
    grant_type: Option<GrantType>,
    client_type: Option<ClientType>,
    redirect_uris: Option<Vec<Url>>,
    token_url: Option<Url>,
    authorize_url: Option<Url>,
    openid_autodiscovery_url: Option<Option<Url>>,
    departments: Option<DepartmentChange>,
}

impl Fields {
    /// The message, when every field was read.
    fn into_message(self, ignored_fields: Vec<String>, digest: String) -> Option<HookupMessage> {
        Some(HookupMessage {
            provet_id: self.provet_id?,
            client_id: self.client_id?,
            client_secret: self
                .client_secret?
                .filter(|s| !s.is_empty())
                .map(SecretString::from),
            algorithm: self.algorithm?,
            grant_type: self.grant_type?,
            client_type: self.client_type?,
            redirect_uris: self.redirect_uris?,
            token_url: self.token_url?,
            authorize_url: self.authorize_url?,
            openid_autodiscovery_url: self.openid_autodiscovery_url?,
            departments: self.departments?,
            ignored_fields,
            digest,
        })
    }
}

struct Parser<'a> {
    object: &'a Map<String, Value>,
    errors: Vec<FieldError>,
    policy: &'a UrlPolicy,
}

impl Parser<'_> {
    /// Reads each field in schema order, so that problems are listed in that order.
    fn fields(&mut self) -> Fields {
        Fields {
            provet_id: self.provet_id(),
            client_id: self.client_id(),
            client_secret: self.optional_string("client_secret", MAX_SECRET_LEN),
            algorithm: self.algorithm(),
            grant_type: self.enumeration(
                "authorization_grant_type",
                GrantType::parse,
                "must be `authorization_code` or `client_credentials` (`authorization-code`, `client-credentials` also accepted)",
            ),
            client_type: self.enumeration(
                "client_type",
                ClientType::parse,
                "must be `confidential` or `public`",
            ),
            redirect_uris: self.redirect_uris(),
            token_url: self.upstream_url("token_url"),
            authorize_url: self.upstream_url("authorize_url"),
            openid_autodiscovery_url: match self
                .optional_string("openid_autodiscovery_url", MAX_URL_LEN)
            {
                Some(Some(raw)) if !raw.is_empty() => {
                    self.check_url("openid_autodiscovery_url", &raw)
                }
                Some(_) => Some(None),
                None => None,
            },
            departments: self.departments(),
        }
    }

    /// Top-level fields the schema does not know.
    fn ignored_fields(&self) -> Vec<String> {
        self.object
            .keys()
            .filter(|k| {
                !REQUIRED_FIELDS.contains(&k.as_str()) && !OPTIONAL_FIELDS.contains(&k.as_str())
            })
            .cloned()
            .collect()
    }

    /// The rules that tie one field to another (each checked only when both were readable).
    fn rules_across_fields(&mut self, f: &Fields) {
        let secret_present = matches!(&f.client_secret, Some(Some(s)) if !s.is_empty());
        let secret_empty = f.client_secret.is_some() && !secret_present;
        if f.client_type == Some(ClientType::Confidential) && secret_empty {
            self.error("client_secret", "is required for a confidential client");
        }
        if f.algorithm == Some(Some(SigningAlgorithm::Hs256)) && secret_empty {
            self.error(
                "client_secret",
                "is required for HS256: it is the ID-token key",
            );
        }
        if f.grant_type == Some(GrantType::ClientCredentials)
            && f.client_type == Some(ClientType::Public)
        {
            self.error(
                "client_type",
                "must be `confidential` for the client_credentials grant",
            );
        }
        if f.grant_type == Some(GrantType::AuthorizationCode)
            && matches!(&f.redirect_uris, Some(v) if v.is_empty())
        {
            self.error(
                "redirect_uris",
                "must name at least one URI for the authorization_code grant",
            );
        }
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    fn provet_id(&mut self) -> Option<ProvetId> {
        let value = self.object.get("provet_id")?;
        match integer(value) {
            Ok(n) => match ProvetId::new(n) {
                Ok(id) => Some(id),
                Err(message) => {
                    self.error("provet_id", message);
                    None
                }
            },
            Err(message) => {
                self.error("provet_id", message);
                None
            }
        }
    }

    fn client_id(&mut self) -> Option<String> {
        let value = self.object.get("client_id")?;
        let Value::String(s) = value else {
            self.error(
                "client_id",
                format!("must be a string, not {}", kind(value)),
            );
            return None;
        };
        if s.trim().is_empty() {
            self.error("client_id", "must not be empty");
            None
        } else if s.chars().count() > MAX_CLIENT_ID_LEN {
            self.error(
                "client_id",
                format!("must be at most {MAX_CLIENT_ID_LEN} characters"),
            );
            None
        } else if let Some(c) = s.chars().find(|c| is_invisible(*c)) {
            self.error("client_id", invisible_message(c));
            None
        } else {
            Some(s.clone())
        }
    }

    /// A required field typed `null|string`: `Some(None)` for null, `None` when missing or bad.
    fn optional_string(&mut self, field: &str, max_len: usize) -> Option<Option<String>> {
        match self.object.get(field)? {
            Value::Null => Some(None),
            Value::String(s) if s.chars().count() > max_len => {
                self.error(field, format!("must be at most {max_len} characters"));
                None
            }
            Value::String(s) if s.contains('\0') => {
                self.error(field, "must not contain NUL characters");
                None
            }
            Value::String(s) => Some(Some(s.clone())),
            other => {
                self.error(
                    field,
                    format!("must be a string or null, not {}", kind(other)),
                );
                None
            }
        }
    }

    fn algorithm(&mut self) -> Option<Option<SigningAlgorithm>> {
        match self.optional_string("algorithm", 16)? {
            // django-oauth-toolkit spells "no OpenID Connect" as the empty string.
            None => Some(None),
            Some(s) if s.is_empty() => Some(None),
            Some(s) => match SigningAlgorithm::parse(&s) {
                Some(a) => Some(Some(a)),
                None => {
                    self.error("algorithm", "must be `HS256`, `RS256` or null");
                    None
                }
            },
        }
    }

    fn enumeration<T>(
        &mut self,
        field: &str,
        parse: fn(&str) -> Option<T>,
        expected: &str,
    ) -> Option<T> {
        let value = self.object.get(field)?;
        let Value::String(s) = value else {
            self.error(field, format!("must be a string, not {}", kind(value)));
            return None;
        };
        let parsed = parse(s);
        if parsed.is_none() {
            self.error(field, expected);
        }
        parsed
    }

    fn redirect_uris(&mut self) -> Option<Vec<Url>> {
        let value = self.object.get("redirect_uris")?;
        let Value::String(s) = value else {
            self.error(
                "redirect_uris",
                format!("must be a space-separated string, not {}", kind(value)),
            );
            return None;
        };
        if let Some(c) = s.chars().find(|c| is_invisible(*c)) {
            self.error("redirect_uris", invisible_message(c));
            return None;
        }
        let mut uris = Vec::new();
        let mut ok = true;
        for (i, raw) in s.split_whitespace().enumerate() {
            match Url::parse(raw) {
                Ok(url) if url.cannot_be_a_base() => {
                    self.error(
                        format!("redirect_uris[{i}]"),
                        "must be an absolute URL with a host or path",
                    );
                    ok = false;
                }
                Ok(url) if url.fragment().is_some() => {
                    self.error(format!("redirect_uris[{i}]"), "must not carry a fragment");
                    ok = false;
                }
                Ok(url) => uris.push(url),
                Err(e) => {
                    self.error(
                        format!("redirect_uris[{i}]"),
                        format!("must be an absolute URL ({e})"),
                    );
                    ok = false;
                }
            }
        }
        if uris.len() > MAX_REDIRECT_URIS {
            self.error(
                "redirect_uris",
                format!("must list at most {MAX_REDIRECT_URIS} URIs"),
            );
            ok = false;
        }
        ok.then_some(uris)
    }

    fn upstream_url(&mut self, field: &str) -> Option<Url> {
        let value = self.object.get(field)?;
        let Value::String(raw) = value else {
            self.error(field, format!("must be a string, not {}", kind(value)));
            return None;
        };
        self.check_url(field, raw).flatten()
    }

    /// `Some(Some(url))` when valid; `None` after recording the problem.
    fn check_url(&mut self, field: &str, raw: &str) -> Option<Option<Url>> {
        if raw.chars().count() > MAX_URL_LEN {
            self.error(field, format!("must be at most {MAX_URL_LEN} characters"));
            return None;
        }
        if let Some(c) = raw.chars().find(|c| is_invisible(*c)) {
            self.error(field, invisible_message(c));
            return None;
        }
        match self.policy.check(raw) {
            Ok(url) => Some(Some(url)),
            Err(message) => {
                self.error(field, message);
                None
            }
        }
    }

    fn department_id(&mut self, field: &str, value: &Value) -> Option<i64> {
        match integer(value) {
            Ok(n) if (0..=MAX_PROVET_ID).contains(&n) => Some(n),
            Ok(_) => {
                self.error(
                    field,
                    format!("must be an integer from 0 to {MAX_PROVET_ID}"),
                );
                None
            }
            Err(message) => {
                self.error(field, message);
                None
            }
        }
    }

    fn departments(&mut self) -> Option<DepartmentChange> {
        let single = |this: &mut Self, field: &str| -> Result<Option<i64>, ()> {
            match this.object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => this.department_id(field, v).map(Some).ok_or(()),
            }
        };
        let added = single(self, "added_department");
        let removed = single(self, "removed_department");
        let full = match self.object.get("departments") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) if items.len() > MAX_DEPARTMENTS => {
                self.error(
                    "departments",
                    format!("must list at most {MAX_DEPARTMENTS} departments"),
                );
                Err(())
            }
            Some(Value::Array(items)) => {
                let mut set = BTreeSet::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.department_id(&format!("departments[{i}]"), item) {
                        Some(d) => {
                            set.insert(d);
                        }
                        None => ok = false,
                    }
                }
                if ok { Ok(Some(set)) } else { Err(()) }
            }
            Some(other) => {
                self.error(
                    "departments",
                    format!("must be an array of integers or null, not {}", kind(other)),
                );
                Err(())
            }
        };
        match (full, added, removed) {
            (Ok(Some(set)), Ok(_), Ok(_)) => Some(DepartmentChange::FullSet(set)),
            (Ok(None), Ok(added), Ok(removed)) => Some(DepartmentChange::Delta { added, removed }),
            _ => None,
        }
    }
}

/// Unicode format characters (general category Cf: U+200B zero width space, U+202E
/// right-to-left override, U+2066 isolates, U+FEFF ...), as of Unicode 16.
const FORMAT_CHARACTERS: [(char, char); 21] = [
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// Characters an identifier must not hide: controls (Cc), format characters (Cf: invisible
/// and bidirectional controls, which make one id look like another), and the line and
/// paragraph separators (Zl, Zp).
fn is_invisible(c: char) -> bool {
    c.is_control()
        || c == '\u{2028}'
        || c == '\u{2029}'
        || FORMAT_CHARACTERS
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&c))
}

fn invisible_message(c: char) -> String {
    format!(
        "must not contain control, invisible or bidirectional formatting characters (found U+{:04X})",
        u32::from(c)
    )
}

/// An integral JSON number (1.0 counts, 1.5 does not) that fits an i64.
pub(super) fn integer(value: &Value) -> Result<i64, String> {
    let Value::Number(n) = value else {
        return Err(format!("must be an integer, not {}", kind(value)));
    };
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.as_u64().is_some() {
        return Err(format!("must be at most {MAX_PROVET_ID}"));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() <= MAX_PROVET_ID as f64 => Ok(f as i64),
        Some(f) if f.fract() == 0.0 => Err(format!("must be at most {MAX_PROVET_ID}")),
        _ => Err("must be an integer, not a fraction".into()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::HostAllowlist;
    use proptest::prelude::*;
    use serde_json::json;

    fn policy() -> UrlPolicy {
        UrlPolicy {
            allowlist: HostAllowlist::new(["provetcloud.com", "*.provetcloud.com"]).unwrap(),
            allow_http: false,
        }
    }

    fn valid() -> Value {
        json!({
            "provet_id": 7,
            "client_id": "abc",
            "client_secret": "s3cret-value",
            "algorithm": null,
            "authorization_grant_type": "client_credentials",
            "client_type": "confidential",
            "redirect_uris": "",
            "token_url": "https://us.provetcloud.com/7/oauth2/token/",
            "authorize_url": "https://us.provetcloud.com/7/oauth2/authorize/",
            "openid_autodiscovery_url": null
        })
    }

    fn parse(v: &Value) -> Result<HookupMessage, ParseError> {
        HookupMessage::parse(v.to_string().as_bytes(), &policy())
    }

    fn fields(v: &Value) -> Vec<String> {
        match parse(v) {
            Err(ParseError::Invalid(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_message_parses() {
        let m = parse(&valid()).unwrap();
        assert_eq!(m.provet_id.get(), 7);
        assert_eq!(m.grant_type, GrantType::ClientCredentials);
        assert_eq!(
            m.departments,
            DepartmentChange::Delta {
                added: None,
                removed: None
            }
        );
        assert_eq!(m.secret_str(), Some("s3cret-value"));
    }

    #[test]
    fn both_grant_spellings_are_accepted() {
        for (raw, grant) in [
            ("authorization-code", GrantType::AuthorizationCode),
            ("authorization_code", GrantType::AuthorizationCode),
            ("client-credentials", GrantType::ClientCredentials),
        ] {
            let mut v = valid();
            v["authorization_grant_type"] = raw.into();
            v["redirect_uris"] = "https://broker.example/oauth/callback".into();
            assert_eq!(parse(&v).unwrap().grant_type, grant);
        }
    }

    #[test]
    fn every_missing_field_is_named() {
        assert_eq!(fields(&json!({})), REQUIRED_FIELDS.to_vec());
    }

    #[test]
    fn provet_id_must_be_integral_and_in_range() {
        for bad in [
            json!(1.5),
            json!(-1),
            json!(0),
            json!(1u64 << 60),
            json!("7"),
            json!(null),
        ] {
            let mut v = valid();
            v["provet_id"] = bad;
            assert_eq!(fields(&v), ["provet_id"]);
        }
        let mut v = valid();
        v["provet_id"] = json!(7.0);
        assert_eq!(parse(&v).unwrap().provet_id.get(), 7);
    }

    #[test]
    fn errors_never_echo_the_secret() {
        let mut v = valid();
        v["client_secret"] = json!(42);
        v["token_url"] = "https://s3cret-value@evil.example/".into();
        let err = format!("{:?}", parse(&v));
        assert!(!err.contains("s3cret-value"), "{err}");
        let ok = format!("{:?}", parse(&valid()));
        assert!(!ok.contains("s3cret-value"), "{ok}");
    }

    #[test]
    fn departments_full_set_wins_over_changes() {
        let mut v = valid();
        v["departments"] = json!([3, 1, 3]);
        v["added_department"] = json!(9);
        assert_eq!(
            parse(&v).unwrap().departments,
            DepartmentChange::FullSet([1, 3].into())
        );
        let mut v = valid();
        v["departments"] = json!([1, "x", 2.5]);
        assert_eq!(fields(&v), ["departments[1]", "departments[2]"]);
    }

    #[test]
    fn empty_algorithm_means_no_openid() {
        let mut v = valid();
        v["algorithm"] = "".into();
        assert_eq!(parse(&v).unwrap().algorithm, None);
    }

    #[test]
    fn a_confidential_client_needs_a_secret() {
        let mut v = valid();
        v["client_secret"] = Value::Null;
        assert_eq!(fields(&v), ["client_secret"]);
    }

    #[test]
    fn invisible_characters_are_refused_in_identifiers() {
        for bad in [
            "abc\u{200B}",
            "\u{202E}cba",
            "a\u{2066}b",
            "ab\u{FEFF}",
            "a\u{00AD}b",
            "a\u{2028}b",
            "a\u{7}b",
            "a\u{E0041}",
        ] {
            let mut v = valid();
            v["client_id"] = bad.into();
            assert_eq!(fields(&v), ["client_id"], "{bad:?}");
        }
        let mut v = valid();
        v["client_id"] = "abc\u{200B}".into();
        let Err(ParseError::Invalid(errors)) = parse(&v) else {
            panic!("accepted")
        };
        assert!(errors[0].message.contains("U+200B"), "{errors:?}");
        let mut v = valid();
        v["token_url"] = "https://us.provetcloud.com/7/\u{202E}oauth2/token/".into();
        assert_eq!(fields(&v), ["token_url"]);
        // Letters of any script are fine.
        let mut v = valid();
        v["client_id"] = "klinikka-äö-クリニック".into();
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn the_redacted_form_has_no_secret() {
        let m = parse(&valid()).unwrap();
        let text = m.redacted_json().to_string();
        assert!(!text.contains("s3cret-value"));
        assert!(text.contains("[redacted]"));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,12}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Values close to what each field accepts, so that replacements also parse. (Not the
    /// authorization_code grant: it needs a redirect URI, a second field.)
    fn plausible_json() -> impl Strategy<Value = Value> {
        prop::sample::select(vec![
            json!(1),
            json!(42.0),
            json!(MAX_PROVET_ID),
            json!(""),
            json!("other-client"),
            json!("HS256"),
            json!("RS256"),
            json!("hs256"),
            json!("client-credentials"),
            json!("confidential"),
            json!("public"),
            json!("https://broker.example/cb https://broker.example/cb2"),
            json!("https://eu.provetcloud.com/9/oauth2/token/"),
            json!("https://EU.provetcloud.com:443/a/../b"),
            json!("https://evil.example/token/"),
        ])
    }

    /// How a parsed message shows `sent` in `field` (as `redacted_json` writes it), or `None`
    /// where the schema refuses it. Written from the schema, not from the parser.
    fn accepted_form(field: &str, sent: &Value) -> Option<Value> {
        let text = sent.as_str();
        let url = |s: &str| policy().check(s).ok().map(|u| json!(u.as_str()));
        match field {
            "provet_id" => {
                let n = sent.as_f64().filter(|f| f.fract() == 0.0)?;
                let id = sent.as_i64().unwrap_or(n as i64);
                (1..=MAX_PROVET_ID).contains(&id).then(|| json!(id))
            }
            "client_id" => text
                .filter(|s| !s.trim().is_empty() && s.chars().count() <= MAX_CLIENT_ID_LEN)
                .filter(|s| !s.chars().any(is_invisible))
                .map(|s| json!(s)),
            "algorithm" => match sent {
                Value::Null => Some(Value::Null),
                Value::String(s) if s.is_empty() => Some(Value::Null),
                Value::String(s) if s == "HS256" || s == "RS256" => Some(json!(s)),
                _ => None,
            },
            "authorization_grant_type" => {
                text.and_then(GrantType::parse).map(|g| json!(g.as_str()))
            }
            "client_type" => text.and_then(ClientType::parse).map(|c| json!(c.as_str())),
            "redirect_uris" => {
                let uris = text?
                    .split_whitespace()
                    .map(|raw| {
                        Url::parse(raw)
                            .ok()
                            .filter(|u| !u.cannot_be_a_base() && u.fragment().is_none())
                            .map(String::from)
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(json!(uris.join(" ")))
            }
            "token_url" | "authorize_url" => url(text?),
            "openid_autodiscovery_url" => match sent {
                Value::Null => Some(Value::Null),
                Value::String(s) if s.is_empty() => Some(Value::Null),
                Value::String(s) => url(s),
                _ => None,
            },
            _ => None,
        }
    }

    proptest! {
        /// Any bytes at all: the parser answers, never panics.
        #[test]
        fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = HookupMessage::parse(&body, &policy());
        }

        /// Replacing any one field of a valid message with arbitrary JSON either still parses,
        /// holding exactly the value sent in that field and the valid values in every other,
        /// or names that field (and only fields it could affect) in the errors.
        #[test]
        fn a_bad_field_is_named(
            index in 0..REQUIRED_FIELDS.len(),
            replacement in prop_oneof![arbitrary_json(), plausible_json()],
        ) {
            let field = REQUIRED_FIELDS[index];
            let mut v = valid();
            v[field] = replacement.clone();
            match parse(&v) {
                Ok(m) => {
                    let read = m.redacted_json();
                    let base = parse(&valid()).unwrap().redacted_json();
                    for other in REQUIRED_FIELDS.iter().filter(|f| **f != field) {
                        prop_assert_eq!(&read[*other], &base[*other], "{} changed", other);
                    }
                    if field == "client_secret" {
                        prop_assert_eq!(m.secret_str(), replacement.as_str());
                    } else {
                        prop_assert_eq!(m.secret_str(), Some("s3cret-value"));
                        let expected = accepted_form(field, &replacement);
                        prop_assert!(
                            expected.as_ref() == Some(&read[field]),
                            "{} = {} parsed as {}", field, replacement, read[field]
                        );
                    }
                }
                Err(ParseError::Invalid(errors)) => {
                    prop_assert!(!errors.is_empty());
                    prop_assert!(errors.iter().all(|e| !e.message.contains("s3cret-value")));
                    prop_assert!(
                        errors.iter().any(|e| e.field.starts_with(field) || e.field == "client_secret" || e.field == "client_type"),
                        "errors {:?} do not name {}", errors, field
                    );
                }
                Err(ParseError::InvalidJson(e)) => prop_assert!(false, "valid JSON rejected: {}", e),
            }
        }

        /// Any valid message survives parsing with its values intact.
        #[test]
        fn valid_messages_round_trip(
            id in 1i64..=MAX_PROVET_ID,
            client_id in "[A-Za-z0-9]{1,40}",
            secret in "[A-Za-z0-9]{1,128}",
            departments in prop::collection::btree_set(0i64..100_000, 0..20),
        ) {
            let mut v = valid();
            v["provet_id"] = json!(id);
            v["client_id"] = json!(client_id);
            v["client_secret"] = json!(secret);
            v["departments"] = json!(departments);
            let m = parse(&v).unwrap();
            prop_assert_eq!(m.provet_id.get(), id);
            prop_assert_eq!(m.secret_str(), Some(secret.as_str()));
            prop_assert_eq!(m.client_id, client_id);
            prop_assert_eq!(m.departments, DepartmentChange::FullSet(departments));
        }
    }
}
