//! Which bytes bind each ciphertext to its row: the associated data of every sealed
//! column, in one place. A value moved to another row (or column) does not open.
//!
//! These strings are part of the stored format: changing one makes existing rows unreadable.

use crate::records::TokenKey;

/// `clients.client_secret`: the client's natural identity.
pub(crate) fn client_secret(provet_id: i64, client_id: &str) -> String {
    format!("clients.client_secret:{provet_id}:{client_id}")
}

/// `tokens.access_token`: the token key.
pub(crate) fn access_token(key: &TokenKey) -> String {
    format!(
        "tokens.access_token:{}:{}:{}:{}",
        key.provet_id, key.client_id, key.scope, key.subject
    )
}

/// `grants.refresh_token`: the grant's primary key.
pub(crate) fn refresh_token(provet_id: i64, client_id: &str, subject: &str) -> String {
    format!("grants.refresh_token:{provet_id}:{client_id}:{subject}")
}

/// `authorizations.pkce_verifier`: the hashed `state`.
pub(crate) fn pkce_verifier(state_hash: &str) -> String {
    format!("authorizations.pkce_verifier:{state_hash}")
}

/// `settings.value`: the setting's name.
pub(crate) fn setting(name: &str) -> String {
    format!("settings.value:{name}")
}

/// `webhooks.secret`: the webhook's id.
pub(crate) fn webhook_secret(id: i64) -> String {
    format!("webhooks.secret:{id}")
}
