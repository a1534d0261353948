//! Group commit: concurrent callers' writes of one kind gathered into one transaction.
//!
//! A refresh storm or a burst of credential checks makes many small writes at once; each in
//! its own transaction costs a few round trips and (on SQLite) a turn at the one writer. Here
//! a caller queues its write and takes a writer permit; whoever holds a permit writes
//! everything queued (up to `max_batch`) in one transaction and tells every caller in the
//! batch how it went. A caller whose write was taken by another's batch just waits for the
//! answer. So a lone caller writes at once, and under load the batches grow by themselves.
//!
//! The batch runs in a task of its own: a caller that gives up (its HTTP client went away)
//! never cancels a transaction that carries other callers' writes.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Semaphore, oneshot};

use crate::{Result, StoreError};

/// One kind of write (or statement), gathered from concurrent callers; each caller gets a
/// `T` back.
pub(crate) struct GroupCommit<J, T = ()> {
    queue: Mutex<VecDeque<Queued<J, T>>>,
    writers: Arc<Semaphore>,
    max_batch: usize,
}

struct Queued<J, T> {
    job: J,
    done: oneshot::Sender<Result<T>>,
}

impl<J: Send + 'static, T: Send + 'static> GroupCommit<J, T> {
    /// `writers` batches may be written at once (1 for SQLite's one writer).
    pub(crate) fn new(writers: usize, max_batch: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            writers: Arc::new(Semaphore::new(writers.max(1))),
            max_batch: max_batch.max(1),
        }
    }

    /// Writes `job` with whatever else is queued, through `write`, which gets a batch and
    /// answers one result per job, in order.
    pub(crate) async fn submit<F, Fut>(&self, job: J, write: F) -> Result<T>
    where
        F: Fn(Vec<J>) -> Fut,
        Fut: Future<Output = Vec<Result<T>>> + Send + 'static,
    {
        let (done, mut answer) = oneshot::channel();
        self.lock().push_back(Queued { job, done });
        loop {
            let permit = self
                .writers
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| StoreError::Corrupt("the group commit was closed".into()))?;
            if let Ok(result) = answer.try_recv() {
                return result;
            }
            let batch: Vec<Queued<J, T>> = {
                let mut queue = self.lock();
                let n = queue.len().min(self.max_batch);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                // This caller's write is in a batch another writer is committing.
                drop(permit);
                return answer.await.unwrap_or_else(|_| Err(lost()));
            }
            let (jobs, dones): (Vec<J>, Vec<_>) =
                batch.into_iter().map(|q| (q.job, q.done)).unzip();
            let written = write(jobs);
            let task = tokio::spawn(async move {
                let results = written.await;
                for (done, result) in dones.into_iter().zip(results) {
                    let _ = done.send(result);
                }
                drop(permit);
            });
            // A panic in the batch drops its answers: every caller in it hears `lost`.
            let _ = task.await;
            // Answered now, unless this caller's job was beyond `max_batch`: then write again.
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued<J, T>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn lost() -> StoreError {
    StoreError::Corrupt("the batch that carried this write failed without an answer".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_writes_share_batches_and_each_hears_its_own_result() {
        let commit = Arc::new(GroupCommit::<u32>::new(1, 8));
        let batches = Arc::new(AtomicUsize::new(0));
        let callers = (0..40u32).map(|n| {
            let (commit, batches) = (commit.clone(), batches.clone());
            tokio::spawn(async move {
                commit
                    .submit(n, move |jobs: Vec<u32>| {
                        let batches = batches.clone();
                        async move {
                            batches.fetch_add(1, Ordering::SeqCst);
                            assert!(jobs.len() <= 8, "max_batch holds");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            jobs.iter()
                                .map(|j| {
                                    if j % 7 == 0 {
                                        Err(StoreError::Corrupt(format!("job {j}")))
                                    } else {
                                        Ok(())
                                    }
                                })
                                .collect()
                        }
                    })
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        let results: Vec<_> = futures_util::future::join_all(callers).await;
        for (n, result) in results.into_iter().enumerate() {
            let result = result.unwrap();
            if n % 7 == 0 {
                assert_eq!(result, Err(format!("stored data is inconsistent: job {n}")));
            } else {
                assert_eq!(result, Ok(()), "job {n}");
            }
        }
        let batches = batches.load(Ordering::SeqCst);
        assert!((5..40).contains(&batches), "40 writes in {batches} batches");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_cancel_the_batch_it_started() {
        let commit = Arc::new(GroupCommit::<u32>::new(1, 8));
        let written = Arc::new(AtomicUsize::new(0));
        let write = |written: Arc<AtomicUsize>| {
            move |jobs: Vec<u32>| {
                let written = written.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    written.fetch_add(jobs.len(), Ordering::SeqCst);
                    jobs.iter().map(|_| Ok(())).collect::<Vec<_>>()
                }
            }
        };
        let first = tokio::spawn({
            let (commit, w) = (commit.clone(), write(written.clone()));
            async move { commit.submit(1, w).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = tokio::spawn({
            let (commit, w) = (commit.clone(), write(written.clone()));
            async move { commit.submit(2, w).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        first.abort();
        assert!(second.await.unwrap().is_ok());
        assert_eq!(written.load(Ordering::SeqCst), 2, "both writes happened");
    }
}
