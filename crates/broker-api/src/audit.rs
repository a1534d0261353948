//! Every admin action through the API leaves an audit entry: a handler names the action
//! (`caller.audit(AuditAction::...)`), runs it, and hands the result to `finish`, which
//! records the outcome (`ok`; `refused` for an answer below 500; `failed` otherwise) and
//! passes the result on unchanged.

use actix_web::ResponseError;
use broker_domain::{Actor, AuditAction, AuditOutcome, AuditRecord, ProvetId};

use crate::AppState;
use crate::auth::Caller;
use crate::problem::ApiError;

/// An admin action about to be recorded.
#[must_use = "an audited action must be finished with its result"]
pub struct PendingAudit {
    record: AuditRecord,
}

impl Caller {
    /// Starts the audit entry of an admin action by this caller's key.
    pub fn audit(&self, action: AuditAction) -> PendingAudit {
        PendingAudit {
            record: AuditRecord::new(Actor::api_key(&*self.0.name), action, AuditOutcome::Ok),
        }
    }
}

impl PendingAudit {
    /// The tenant acted on.
    pub fn tenant(mut self, provet_id: i64) -> Self {
        if let Ok(id) = ProvetId::new(provet_id) {
            self.record = self.record.tenant(id);
        }
        self
    }

    /// What else was acted on (an id, a name, a subject; never a secret).
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.record = self.record.target(target);
        self
    }

    /// The target, when the request named one before it failed.
    pub fn maybe_target(self, target: Option<String>) -> Self {
        match target {
            Some(target) => self.target(target),
            None => self,
        }
    }

    /// Records the action's outcome and hands its result back (as an `ApiError`).
    pub async fn finish<T, E: Into<ApiError>>(
        mut self,
        state: &AppState,
        result: Result<T, E>,
    ) -> Result<T, ApiError> {
        let result = result.map_err(Into::into);
        self.record.outcome = outcome(&result);
        state.audit().record(self.record).await;
        result
    }
}

fn outcome<T>(result: &Result<T, ApiError>) -> AuditOutcome {
    match result {
        Ok(_) => AuditOutcome::Ok,
        Err(e) if e.status_code().is_client_error() => AuditOutcome::Refused,
        Err(_) => AuditOutcome::Failed,
    }
}

/// The answer of a delete or revoke that reports whether its target existed: `204`, or
/// `404` when there was nothing to act on.
pub fn no_content_if_found<E: Into<ApiError>>(
    done: Result<bool, E>,
) -> Result<actix_web::HttpResponse, ApiError> {
    match done {
        Ok(true) => Ok(actix_web::HttpResponse::NoContent().finish()),
        Ok(false) => Err(ApiError::NotFound),
        Err(e) => Err(e.into()),
    }
}
