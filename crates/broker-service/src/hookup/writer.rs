//! Group commit: the writer tasks that store hookups in batches.

use std::sync::{Arc, Mutex};

use broker_domain::{DeliverySource, HookupMessage};
use broker_store::Store;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::StoreError;

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

type Stored = Result<broker_domain::HookupDecision, StoreError>;

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
    pub(super) async fn store(
        &self,
        store: &Store,
        msg: &HookupMessage,
        now: DateTime<Utc>,
    ) -> Stored {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            msg: msg.clone(),
            now,
            reply,
        };
        if self.queue.send(job).await.is_err() {
            return store
                .tenants()
                .apply_hookup(msg, DeliverySource::Hookup, now)
                .await;
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
    let Some(now) = batch.iter().map(|j| j.now).max() else {
        return;
    };
    let msgs: Vec<&HookupMessage> = batch.iter().map(|j| &j.msg).collect();
    let stored = store
        .tenants()
        .apply_hookups(&msgs, DeliverySource::Hookup, now)
        .await;
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
                let stored = store
                    .tenants()
                    .apply_hookup(&job.msg, DeliverySource::Hookup, job.now)
                    .await;
                let _ = job.reply.send(stored);
            }
        }
    }
}
