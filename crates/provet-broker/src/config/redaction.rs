//! Configuration errors without secrets: figment quotes a bad value (`found string "..."`)
//! and a file's broken line; for keys that may hold a secret neither is repeated.

/// Keys whose values are secrets (or hold credentials): a configuration error about one of
/// them never repeats its value.
const SECRET_KEYS: [&str; 5] = [
    "secrets",
    "hookup.secret",
    "hookup.extra_secrets",
    "database.url",
    "upstream.proxy",
];

/// Whether a value at `path` may be or contain a secret: a secret key, anything inside
/// one, or a section (or the root) that contains one (`BROKER_DATABASE=...`).
fn may_hold_a_secret(path: &[String]) -> bool {
    let key = path.join(".").to_ascii_lowercase();
    SECRET_KEYS.iter().any(|k| {
        key == *k
            || key.starts_with(&format!("{k}."))
            || key.is_empty()
            || k.starts_with(&format!("{key}."))
    })
}

/// Every error figment found, each with its key and source; for keys that may hold a
/// secret without the value (figment's messages quote it: `found string "..."`). Parse
/// errors of a file quote the offending line: those lines are left out.
pub(super) fn redacted(error: figment::Error) -> String {
    use figment::error::Kind;
    let messages: Vec<String> = error
        .into_iter()
        .map(|mut e| {
            let secret = may_hold_a_secret(&e.path);
            e.kind = match e.kind {
                Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if secret => {
                    Kind::Message(format!(
                        "invalid value (not shown: the key holds a secret), expected {expected}"
                    ))
                }
                Kind::UnknownVariant(_, _) | Kind::Unsupported(_) | Kind::UnsupportedKey(..)
                    if secret =>
                {
                    Kind::Message("invalid value (not shown: the key holds a secret)".into())
                }
                Kind::Message(_) if secret && !e.path.is_empty() => {
                    Kind::Message("invalid value (not shown: the key holds a secret)".into())
                }
                Kind::Message(message) => Kind::Message(without_source_lines(&message)),
                other => other,
            };
            // figment names an environment variable's key `LOG.LEVEL`: add the variable's
            // own spelling, so the operator can find it.
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|md| md.name.contains("environment variable"));
            if from_env && !e.path.is_empty() {
                let name = super::validation::env_spelling(&e.path.join("."));
                format!("{e} (environment variable {name})")
            } else {
                e.to_string()
            }
        })
        .collect();
    messages.join("; ")
}

/// A parser's message without the lines that quote the input (`12 | master_key = "..."`).
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            let digits = t.bytes().take_while(u8::is_ascii_digit).count();
            !(t.starts_with('|') || (digits > 0 && t[digits..].trim_start().starts_with('|')))
        })
        .filter(|line| !line.trim().is_empty() && !line.trim().chars().all(|c| c == '^'))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::Path;

    use crate::config::Settings;

    #[test]
    fn errors_about_secret_keys_do_not_show_their_values() {
        for (name, value, key) in [
            (
                "BROKER_SECRETS__PREVIOUS_KEYS",
                "c2VjcmV0LWtleS12YWx1ZQ==",
                "previous_keys",
            ),
            (
                "BROKER_HOOKUP__EXTRA_SECRETS",
                "extra-hookup-secret",
                "extra_secrets",
            ),
            (
                "BROKER_SECRETS__MASTER_KEY",
                "[\"listed-secret\"]",
                "master_key",
            ),
            (
                "BROKER_UPSTREAM__PROXY",
                "{url=\"http://u:pw-secret@p:1\"}",
                "proxy",
            ),
            ("BROKER_DATABASE", "postgres://u:db-secret@h/d", "database"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env(name, value);
                let err = Settings::load(None).err().unwrap_or_default();
                for secret in [
                    "c2VjcmV0",
                    "extra-hookup",
                    "listed-secret",
                    "pw-secret",
                    "db-secret",
                ] {
                    assert!(!err.contains(secret), "{name}: {err}");
                }
                assert!(err.to_ascii_lowercase().contains(key), "{name}: {err}");
                Ok(())
            });
        }
        // Other keys keep figment's full message.
        figment::Jail::expect_with(|jail| {
            jail.set_env("BROKER_SERVER__WORKERS", "many");
            let err = Settings::load(None).err().unwrap_or_default();
            assert!(err.contains("many"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_broken_file_line_is_not_quoted() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "broken.toml",
                "[secrets]\nmaster_key = \"unterminated-secret\n",
            )?;
            let err = Settings::load(Some(Path::new("broken.toml")))
                .err()
                .unwrap_or_default();
            assert!(!err.contains("unterminated-secret"), "{err}");
            assert!(err.contains("line 2"), "{err}");
            Ok(())
        });
    }
}
