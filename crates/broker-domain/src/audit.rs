//! The audit log's entry: who did which admin action, to what, and how it ended. Built by the
//! API, the CLI and the console after each action; never holds a secret (targets are ids and
//! names, never keys or tokens).

use crate::states::{ActorKind, AuditAction, AuditOutcome};
use crate::tenant::ProvetId;

/// Who acted: an API key (its name), the command line (the OS user when known), or a
/// console session (the signed-in key's name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub name: String,
}

impl Actor {
    pub fn api_key(name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::ApiKey,
            name: name.into(),
        }
    }

    pub fn console(name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Console,
            name: name.into(),
        }
    }

    /// The command line, named for the user running it (`USER`), or `cli`.
    pub fn cli(user: Option<String>) -> Self {
        Self {
            kind: ActorKind::Cli,
            name: user
                .filter(|u| !u.is_empty())
                .map(|u| u.chars().take(MAX_NAME).collect())
                .unwrap_or_else(|| "cli".to_owned()),
        }
    }
}

/// Names and targets are cut to this many characters.
pub const MAX_NAME: usize = 200;

/// One admin action as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub actor: Actor,
    pub action: AuditAction,
    /// The tenant acted on, when there is one.
    pub provet_id: Option<ProvetId>,
    /// What else was acted on: an API key's id and name, a webhook's id, a grant's subject.
    pub target: Option<String>,
    pub outcome: AuditOutcome,
}

impl AuditRecord {
    pub fn new(actor: Actor, action: AuditAction, outcome: AuditOutcome) -> Self {
        Self {
            actor,
            action,
            provet_id: None,
            target: None,
            outcome,
        }
    }

    pub fn tenant(mut self, provet_id: ProvetId) -> Self {
        self.provet_id = Some(provet_id);
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        let target: String = target.into();
        self.target = Some(target.chars().take(MAX_NAME).collect());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_actor_is_named_for_the_user_or_cli() {
        assert_eq!(Actor::cli(Some("ops".into())).name, "ops");
        assert_eq!(Actor::cli(Some(String::new())).name, "cli");
        assert_eq!(Actor::cli(None).name, "cli");
        assert_eq!(Actor::cli(Some("x".repeat(500))).name.len(), MAX_NAME);
    }

    #[test]
    fn targets_are_cut_to_a_bounded_length() {
        let r = AuditRecord::new(
            Actor::api_key("k"),
            AuditAction::ApiKeyCreate,
            AuditOutcome::Ok,
        )
        .target("y".repeat(1000));
        assert_eq!(r.target.map(|t| t.len()), Some(MAX_NAME));
    }
}
