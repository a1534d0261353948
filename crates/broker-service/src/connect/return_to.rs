//! Where the connect flow may send the browser afterwards (`oauth.allowed_return_to`).
//!
//! Both the configured entries and each `return_to` are parsed as URLs: scheme, host and port
//! must be equal, and the entry's path must be a prefix of the candidate's by whole segments
//! (`/app` allows `/app` and `/app/x`, not `/apps`). A string prefix check would let
//! `https://app.example.com.evil.example/` and `https://app.example.com@evil.example/` through.
//! The browser is sent to the URL as parsed (normalised), never to the raw string.

use url::{Host, Url};

/// The longest `return_to` accepted.
const MAX_LEN: usize = 2048;

/// The parsed `oauth.allowed_return_to`. Empty: no `return_to` is allowed.
#[derive(Clone, Debug, Default)]
pub struct ReturnToPolicy {
    allowed: Vec<Allowed>,
}

#[derive(Clone, Debug)]
struct Allowed {
    scheme: String,
    host: Host<String>,
    port: Option<u16>,
    segments: Vec<String>,
}

/// Why a `return_to` was refused (shown to the service that sent it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReturnToError {
    #[error("must be at most {MAX_LEN} characters")]
    TooLong,
    #[error("must not contain spaces, control characters or backslashes")]
    BadCharacters,
    #[error("must be an absolute http(s) URL (scheme://host/path)")]
    NotAbsolute,
    #[error("must not contain user info (`user@`)")]
    UserInfo,
    #[error(
        "matches no entry of oauth.allowed_return_to (same scheme, host and port; path under the entry's path)"
    )]
    NotAllowed,
}

/// A bad `oauth.allowed_return_to` entry: the daemon does not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("oauth.allowed_return_to[{index}] (`{entry}`): {problem}")]
pub struct ReturnToConfigError {
    pub index: usize,
    pub entry: String,
    pub problem: String,
}

impl ReturnToPolicy {
    /// Parses the configured entries: each an absolute http(s) URL without user info, query
    /// or fragment.
    pub fn new(entries: &[String]) -> Result<Self, ReturnToConfigError> {
        let allowed = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let fail = |problem: String| ReturnToConfigError {
                    index,
                    entry: entry.clone(),
                    problem,
                };
                let url = parse_absolute(entry).map_err(|e| fail(e.to_string()))?;
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(fail("must not have a query or fragment".into()));
                }
                let host = url
                    .host()
                    .map(|h| h.to_owned())
                    .ok_or_else(|| fail("must name a host".into()))?;
                let mut segments = segments(&url);
                // `https://app.example.com/app/` allows what `.../app` allows.
                if segments.last().is_some_and(String::is_empty) {
                    segments.pop();
                }
                Ok(Allowed {
                    scheme: url.scheme().to_owned(),
                    host,
                    port: url.port_or_known_default(),
                    segments,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// The URL to send the browser to, when `raw` is allowed.
    pub fn check(&self, raw: &str) -> Result<String, ReturnToError> {
        let url = parse_absolute(raw)?;
        let host = url.host().map(|h| h.to_owned());
        let candidate = segments(&url);
        let allowed = self.allowed.iter().any(|a| {
            a.scheme == url.scheme()
                && host.as_ref() == Some(&a.host)
                && a.port == url.port_or_known_default()
                && candidate.len() >= a.segments.len()
                && a.segments.iter().zip(&candidate).all(|(p, c)| p == c)
        });
        if allowed {
            Ok(url.to_string())
        } else {
            Err(ReturnToError::NotAllowed)
        }
    }
}

/// An absolute http(s) URL written out in full, without user info.
fn parse_absolute(raw: &str) -> Result<Url, ReturnToError> {
    if raw.len() > MAX_LEN {
        return Err(ReturnToError::TooLong);
    }
    // The URL parser silently drops tabs and newlines and trims spaces and controls: refuse
    // them here, before it can.
    if raw
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(ReturnToError::BadCharacters);
    }
    let url = Url::parse(raw).map_err(|_| ReturnToError::NotAbsolute)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ReturnToError::NotAbsolute);
    }
    // `https:host/x` parses as `https://host/x`; only the full form is accepted.
    let Some(rest) = raw
        .get(url.scheme().len()..)
        .and_then(|r| r.strip_prefix("://"))
    else {
        return Err(ReturnToError::NotAbsolute);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') || !url.username().is_empty() || url.password().is_some() {
        return Err(ReturnToError::UserInfo);
    }
    Ok(url)
}

fn segments(url: &Url) -> Vec<String> {
    url.path_segments()
        .map(|s| s.map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> ReturnToPolicy {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        ReturnToPolicy::new(&entries).unwrap()
    }

    #[test]
    fn the_origin_must_match_exactly() {
        let p = policy(&["https://app.example.com"]);
        assert_eq!(
            p.check("https://app.example.com/x?y=1#z").as_deref(),
            Ok("https://app.example.com/x?y=1#z")
        );
        assert!(p.check("https://APP.Example.com/").is_ok());
        assert!(p.check("https://app.example.com:443/").is_ok());
        for refused in [
            "https://app.example.com.evil.example/",
            "https://evil.example/https://app.example.com/",
            "http://app.example.com/",
            "https://app.example.com:444/",
            "https://sub.app.example.com/",
            "https://app.example.co/",
        ] {
            assert_eq!(
                p.check(refused),
                Err(ReturnToError::NotAllowed),
                "{refused}"
            );
        }
    }

    #[test]
    fn the_path_is_a_segment_prefix() {
        for entry in [
            "https://app.example.com/app",
            "https://app.example.com/app/",
        ] {
            let p = policy(&[entry]);
            for ok in [
                "https://app.example.com/app",
                "https://app.example.com/app/",
                "https://app.example.com/app/x/y",
                "https://app.example.com/app?x=1",
            ] {
                assert!(p.check(ok).is_ok(), "{entry} {ok}");
            }
            for refused in [
                "https://app.example.com/apps",
                "https://app.example.com/",
                "https://app.example.com/other/app",
                "https://app.example.com/app/../admin",
                "https://app.example.com/app/%2e%2e/admin",
                "https://app.example.com/%61pp",
            ] {
                assert_eq!(
                    p.check(refused),
                    Err(ReturnToError::NotAllowed),
                    "{entry} {refused}"
                );
            }
        }
    }

    #[test]
    fn user_info_controls_and_relative_forms_are_refused() {
        let p = policy(&["https://app.example.com/"]);
        for (raw, why) in [
            (
                "https://app.example.com@evil.example/",
                ReturnToError::UserInfo,
            ),
            ("https://user:pw@app.example.com/", ReturnToError::UserInfo),
            ("https://@app.example.com/", ReturnToError::UserInfo),
            (
                "https://app.example.com/\r\nSet-Cookie: a=b",
                ReturnToError::BadCharacters,
            ),
            ("https://app.example.com/\n", ReturnToError::BadCharacters),
            ("https://app.example.com/\t", ReturnToError::BadCharacters),
            (
                "https://app.example.com/\u{0}",
                ReturnToError::BadCharacters,
            ),
            (
                "https://app.example.com/\u{85}",
                ReturnToError::BadCharacters,
            ),
            (" https://app.example.com/", ReturnToError::BadCharacters),
            (
                "https://app.example.com\\@evil.example/",
                ReturnToError::BadCharacters,
            ),
            ("/app", ReturnToError::NotAbsolute),
            ("//evil.example/", ReturnToError::NotAbsolute),
            ("app.example.com/", ReturnToError::NotAbsolute),
            ("https:app.example.com/", ReturnToError::NotAbsolute),
            ("https:/app.example.com/", ReturnToError::NotAbsolute),
            ("javascript:alert(1)", ReturnToError::NotAbsolute),
            ("", ReturnToError::NotAbsolute),
        ] {
            assert_eq!(p.check(raw), Err(why), "{raw:?}");
        }
        let long = format!("https://app.example.com/{}", "a".repeat(MAX_LEN));
        assert_eq!(p.check(&long), Err(ReturnToError::TooLong));
    }

    #[test]
    fn nothing_is_allowed_without_entries() {
        assert_eq!(
            ReturnToPolicy::default().check("https://app.example.com/"),
            Err(ReturnToError::NotAllowed)
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for entry in [
            "app.example.com",
            "/app",
            "https://user@app.example.com/",
            "https://app.example.com/?x=1",
            "https://app.example.com/#x",
            "ftp://app.example.com/",
            "https://app.example.com/\n",
        ] {
            let err = ReturnToPolicy::new(&["https://fine.example/".into(), entry.into()])
                .err()
                .unwrap_or_else(|| panic!("{entry:?} was accepted"));
            assert_eq!(err.index, 1, "{entry:?}");
            assert!(
                err.to_string().starts_with("oauth.allowed_return_to[1]"),
                "{err}"
            );
        }
    }
}
