//! Hookup intake: check the secret in the URL, validate the message, persist it in one
//! transaction, and only then answer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_domain::{FieldError, HookupMessage, ParseError, ProvetId};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use std::sync::{Arc, Mutex};

use broker_store::Store;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Broker, HookupOutcome, StoreError};

/// The hookup URL's secret path segments: the current one and any still accepted while Provet
/// is being moved to a new one.
pub struct HookupSecrets {
    digests: Vec<[u8; 32]>,
    current: SecretString,
}

impl HookupSecrets {
    pub fn new(current: SecretString, extra: &[SecretString]) -> Self {
        let digests = std::iter::once(&current)
            .chain(extra)
            .map(|s| Sha256::digest(s.expose_secret().as_bytes()).into())
            .collect();
        Self { digests, current }
    }

    /// 32 random bytes, URL-safe base64: 43 characters no one guesses.
    pub fn generate() -> SecretString {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SecretString::from(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The secret to put in the URL given to Provet.
    pub fn current(&self) -> &SecretString {
        &self.current
    }

    /// Compares digests in constant time, always against every accepted secret, so neither
    /// the length nor the content of a guess changes the time taken.
    pub fn accepts(&self, candidate: &str) -> bool {
        let candidate: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, d| acc | d.ct_eq(&candidate))
            .into()
    }
}

/// Group commit for hookups: concurrent messages are stored by a few writer tasks, each
/// taking every message waiting (up to `max_batch`) into one transaction, so that a burst
/// costs one commit (one fsync) per batch rather than per message. A message is answered
/// only after its batch committed. If a batch fails, its messages are stored one by one, so
/// that one bad message fails alone.
pub struct HookupWriter {
    queue: mpsc::Sender<Job>,
    receiver: Mutex<Option<mpsc::Receiver<Job>>>,
    writers: usize,
    max_batch: usize,
}

type Stored = Result<HookupOutcome, StoreError>;

struct Job {
    msg: HookupMessage,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Stored>,
}

impl HookupWriter {
    /// `writers` batches at a time (1 for SQLite, which has one writer anyway).
    pub fn new(writers: usize, max_batch: usize) -> Self {
        let (queue, receiver) = mpsc::channel(4096);
        Self {
            queue,
            receiver: Mutex::new(Some(receiver)),
            writers: writers.max(1),
            max_batch: max_batch.max(1),
        }
    }

    /// Stores one message through a batch; without running writers (a command-line use),
    /// stores it directly.
    async fn store(&self, store: &Store, msg: &HookupMessage, now: DateTime<Utc>) -> Stored {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            msg: msg.clone(),
            now,
            reply,
        };
        if self.queue.send(job).await.is_err() {
            return store.apply_hookup(msg, now).await;
        }
        // A reply is dropped only if its writer died mid-batch (a panic): the message may
        // or may not be stored, so Provet must hear a failure, never a success.
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Corrupt("the hookup writer stopped".into())))
    }

    /// Runs the writers until `stop`; then stores whatever is still queued.
    pub async fn run(self: Arc<Self>, store: Store, stop: CancellationToken) {
        let Some(receiver) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let writers = TaskTracker::new();
        for _ in 0..self.writers {
            let (receiver, store, stop, max) = (
                receiver.clone(),
                store.clone(),
                stop.clone(),
                self.max_batch,
            );
            writers.spawn(async move {
                loop {
                    let batch = {
                        let mut rx = receiver.lock().await;
                        let first = tokio::select! {
                            job = rx.recv() => job,
                            _ = stop.cancelled() => rx.try_recv().ok(),
                        };
                        let Some(first) = first else { break };
                        let mut batch = vec![first];
                        while batch.len() < max {
                            match rx.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    write_batch(&store, batch).await;
                }
            });
        }
        writers.close();
        writers.wait().await;
    }
}

async fn write_batch(store: &Store, mut batch: Vec<Job>) {
    // Row locks in one order across concurrent batches; one tenant's messages keep their
    // order of arrival (the sort is stable).
    batch.sort_by_key(|j| j.msg.provet_id.get());
    let now = batch.iter().map(|j| j.now).max().unwrap_or_else(Utc::now);
    let msgs: Vec<&HookupMessage> = batch.iter().map(|j| &j.msg).collect();
    let stored = store.apply_hookups(&msgs, now).await;
    match stored {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(e) if batch.len() == 1 || e.is_database_away() => {
            // One message, or a database that is not answering: every sender hears 503
            // (Provet retries); nothing was acknowledged.
            for job in batch {
                let _ = job.reply.send(Err(e.duplicate()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, messages = batch.len(), "a hookup batch failed; storing its messages one by one");
            for job in batch {
                let stored = store.apply_hookup(&job.msg, job.now).await;
                let _ = job.reply.send(stored);
            }
        }
    }
}

/// What Provet is told once a message is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookupReceipt {
    pub provet_id: i64,
    pub client_id: String,
    pub outcome: HookupOutcome,
}

#[derive(Debug, thiserror::Error)]
pub enum HookupError {
    #[error(transparent)]
    Invalid(#[from] ParseError),
    #[error("the message could not be stored: {0}")]
    Store(#[from] StoreError),
}

impl Broker {
    /// Validates and stores one hookup body. `Ok` means it is durably stored.
    pub async fn receive_hookup(&self, body: &[u8]) -> Result<HookupReceipt, HookupError> {
        let msg = match HookupMessage::parse(body, &self.policy) {
            Ok(msg) => msg,
            Err(err) => {
                self.record_rejection(body, &err).await;
                self.metrics.hookup("rejected");
                return Err(err.into());
            }
        };
        let span = tracing::info_span!(
            "hookup",
            provet_id = msg.provet_id.get(),
            client_id = %msg.client_id
        );
        self.store_hookup(msg).instrument(span).await
    }

    async fn store_hookup(&self, msg: HookupMessage) -> Result<HookupReceipt, HookupError> {
        match self
            .hookup_writer
            .store(&self.store, &msg, self.now())
            .await
        {
            Ok(outcome) => {
                self.hookup_stored(&msg, outcome);
                Ok(HookupReceipt {
                    provet_id: msg.provet_id.get(),
                    client_id: msg.client_id,
                    outcome,
                })
            }
            Err(err) => {
                self.metrics.hookup("failed");
                tracing::error!(
                    error = %err,
                    "hookup could not be stored; Provet will see a 503 and may retry"
                );
                Err(err.into())
            }
        }
    }

    /// What follows a stored message, whatever its source: metrics, the in-memory token
    /// cache, discovery and the credential check.
    pub(crate) fn hookup_stored(&self, msg: &HookupMessage, outcome: HookupOutcome) {
        self.metrics.hookup(outcome.as_str());
        if outcome != HookupOutcome::Unchanged {
            // New credentials: nothing cached for the old ones may be served.
            self.tokens.forget(msg.provet_id.get());
            if msg.openid_autodiscovery_url.is_some() {
                self.discovery.wake.notify_one();
            }
            if msg.grant_type == broker_domain::GrantType::ClientCredentials
                && self.tokens.settings.verify_on_hookup
            {
                self.credential_checks.schedule(msg.provet_id.get());
            }
        }
        tracing::info!(
            outcome = outcome.as_str(),
            grant_type = msg.grant_type.as_str(),
            "hookup stored"
        );
    }

    /// Keeps a trace of a rejected delivery (its digest and field errors; never the body)
    /// under the tenant it names, when it names one validly.
    async fn record_rejection(&self, body: &[u8], err: &ParseError) {
        let errors = match err {
            ParseError::Invalid(errors) => errors.clone(),
            ParseError::InvalidJson(message) => vec![FieldError {
                field: "$".into(),
                message: message.clone(),
            }],
        };
        let provet_id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("provet_id").and_then(serde_json::Value::as_i64))
            .and_then(|id| ProvetId::new(id).ok())
            .map(ProvetId::get);
        let digest = hex::encode(Sha256::digest(body));
        tracing::warn!(
            provet_id,
            fields = ?errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            "hookup rejected"
        );
        if let Err(e) = self
            .store
            .record_rejected_delivery(provet_id, &digest, &errors, self.now())
            .await
        {
            tracing::warn!(error = %e, "could not record a rejected hookup delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_current_and_extra_secrets_only() {
        let s = HookupSecrets::new("one".to_owned().into(), &["two".to_owned().into()]);
        assert!(s.accepts("one"));
        assert!(s.accepts("two"));
        assert!(!s.accepts("on"));
        assert!(!s.accepts(""));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = HookupSecrets::generate();
        let b = HookupSecrets::generate();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
