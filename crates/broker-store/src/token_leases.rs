//! The token lease: one replica's turn to ask the provider for a token key (PostgreSQL).
//!
//! A row in `token_leases`, taken and released by single statements, so that no connection
//! is held while the provider answers. It expires on its own after its time to live (longer
//! than the upstream timeout), which is how a dead replica's turn passes to another. The
//! fence grows with every new holder. On SQLite (one process) the in-process single flight
//! is the whole lock and this holds nothing.
//!
//! Concurrent callers' leases (a refresh storm: many tenants at once) are taken together:
//! one statement takes every lease of the batch and reads each key's stored token beside
//! it (see `group_commit`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{
    ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryResult, Statement, Value,
};
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::entity::token;
use crate::records::{StoredToken, TokenKey};
use crate::tokens::Tokens;
use crate::{Keyring, Result, StoreError};

/// Leases taken by one statement at most.
pub(crate) const LEASES_PER_BATCH: usize = 128;

/// One replica's turn to ask the provider for a token key (see the module).
#[derive(Clone, Debug)]
pub struct TokenLease {
    pub(crate) lock_key: String,
    pub(crate) owner: String,
    pub(crate) fence: i64,
}

/// What an attempt to take the lease found.
pub struct LeaseAttempt {
    /// `Some` when this caller now holds the lease (always on SQLite).
    pub lease: Option<TokenLease>,
    /// The token stored for the key, read with the lease.
    pub stored: Option<StoredToken>,
}

/// One caller's attempt, for a batch.
pub(crate) struct LeaseJob {
    key: TokenKey,
    lock_key: String,
    owner: String,
    ttl_ms: i64,
}

fn lock_key(key: &TokenKey) -> String {
    hex::encode(Sha256::digest(
        format!(
            "{}|{}|{}|{}",
            key.provet_id, key.client_id, key.scope, key.subject
        )
        .as_bytes(),
    ))
}

impl Tokens {
    /// Takes the turn to ask the provider for `key` if nobody holds it (or the holder's
    /// lease ran out), and reads the stored token. PostgreSQL only does real work; on
    /// SQLite the caller's in-process single flight is the lock.
    pub async fn try_token_lease(
        &self,
        key: &TokenKey,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<LeaseAttempt> {
        if !self.db.is_postgres() {
            return Ok(LeaseAttempt {
                lease: Some(TokenLease {
                    lock_key: String::new(),
                    owner: owner.to_owned(),
                    fence: 0,
                }),
                stored: self.load_token(key).await?,
            });
        }
        let job = LeaseJob {
            key: key.clone(),
            lock_key: lock_key(key),
            owner: owner.to_owned(),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        };
        let (db, keyring) = (self.db.clone(), self.keyring.clone());
        self.leases
            .submit(job, move |jobs| {
                take_leases(db.clone(), keyring.clone(), jobs)
            })
            .await
    }

    /// Gives the turn back (when the provider failed, or a stored token did after all).
    pub async fn release_token_lease(&self, lease: &TokenLease) -> Result<()> {
        if !self.db.is_postgres() {
            return Ok(());
        }
        release_all(&self.db.cache, std::iter::once(lease)).await
    }
}

/// A batch of attempts: one statement, or (for the rare batch naming a key twice, which the
/// statement cannot) one statement per attempt.
async fn take_leases(
    db: Db,
    keyring: Arc<Keyring>,
    jobs: Vec<LeaseJob>,
) -> Vec<Result<LeaseAttempt>> {
    let mut keys = HashSet::new();
    if !jobs.iter().all(|j| keys.insert(j.lock_key.as_str())) {
        let mut results = Vec::with_capacity(jobs.len());
        for job in &jobs {
            results.push(
                take_once(&db, &keyring, std::slice::from_ref(job))
                    .await
                    .and_then(|mut taken| taken.pop().ok_or_else(no_row)),
            );
        }
        return results;
    }
    match take_once(&db, &keyring, &jobs).await {
        Ok(taken) => taken.into_iter().map(Ok).collect(),
        Err(e) => jobs.iter().map(|_| Err(e.duplicate())).collect(),
    }
}

fn no_row() -> StoreError {
    StoreError::Corrupt("the lease statement returned no row for a key".into())
}

/// Takes the leases of `jobs` (distinct keys) unless live holders have them, and reads
/// their stored tokens, in one statement (the leases in lock-key order, so that concurrent
/// statements lock rows in one order); answers in the order of `jobs`.
async fn take_once(db: &Db, keyring: &Keyring, jobs: &[LeaseJob]) -> Result<Vec<LeaseAttempt>> {
    let found = db.cache.query_all_raw(lease_statement(jobs)).await?;
    let mut by_key: HashMap<String, QueryResult> = HashMap::with_capacity(found.len());
    for row in found {
        by_key.insert(row.try_get("", "lock_key")?, row);
    }
    let mut taken = Vec::with_capacity(jobs.len());
    for job in jobs {
        let row = by_key.get(&job.lock_key).ok_or_else(no_row)?;
        let fence: Option<i64> = row.try_get("", "fence")?;
        taken.push((fence, token_in_lease_row(keyring, &job.key, row)?));
    }
    // Taking a lease may have waited for the previous holder's commit, which stored its
    // token after this statement's snapshot: read those tokens again, so a fresh one is
    // never missed. A first lease (fence 1: the row was created, no one held it before) has
    // no previous holder, and tokens are stored under a lease (but for a grant's first
    // token, stored by the connect flow: a refresh racing that commit asks the provider once
    // more, with the grant it reads under the lease).
    let again: Vec<&TokenKey> = jobs
        .iter()
        .zip(&taken)
        .filter(|(_, (fence, _))| fence.is_some_and(|f| f > 1))
        .map(|(job, _)| &job.key)
        .collect();
    let mut fresh = load_tokens(db, keyring, &again).await?;
    Ok(jobs
        .iter()
        .zip(taken)
        .map(|(job, (fence, stored))| {
            let stored = match fence {
                Some(f) if f > 1 => fresh.remove(&job.key),
                _ => stored,
            };
            LeaseAttempt {
                lease: fence.map(|fence| TokenLease {
                    lock_key: job.lock_key.clone(),
                    owner: job.owner.clone(),
                    fence,
                }),
                stored,
            }
        })
        .collect())
}

/// One statement for every job: takes each free or expired lease (a new fence), in lock-key
/// order so that concurrent batches never wait for each other in a circle, and reads each
/// key's stored token beside it.
fn lease_statement(jobs: &[LeaseJob]) -> Statement {
    let mut values: Vec<Value> = Vec::with_capacity(jobs.len() * 7);
    let rows: Vec<String> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let n = i * 7;
            values.extend([
                job.lock_key.clone().into(),
                job.key.provet_id.into(),
                job.owner.clone().into(),
                job.ttl_ms.into(),
                job.key.client_id.clone().into(),
                job.key.scope.clone().into(),
                job.key.subject.clone().into(),
            ]);
            format!(
                "(${}::text, ${}::bigint, ${}::text, ${}::bigint, ${}::text, ${}::text, ${}::text)",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7
            )
        })
        .collect();
    let sql = format!(
        r#"WITH input (lock_key, provet_id, owner, ttl_ms, client_id, scope, subject) AS (
            VALUES {}),
        lease AS (
            INSERT INTO token_leases (lock_key, provet_id, owner, fence, expires_at)
            SELECT lock_key, provet_id, owner, 1,
                   now() + make_interval(secs => ttl_ms::double precision / 1000)
            FROM input ORDER BY lock_key
            ON CONFLICT (lock_key) DO UPDATE
                SET owner = EXCLUDED.owner, fence = token_leases.fence + 1,
                    expires_at = EXCLUDED.expires_at
                WHERE token_leases.expires_at < now()
            RETURNING lock_key, fence)
        SELECT input.lock_key, lease.fence, t.access_token, t.token_type, t.expires_at,
               t.obtained_at, t.granted_scope
        FROM input
        LEFT JOIN lease ON lease.lock_key = input.lock_key
        LEFT JOIN tokens t ON t.provet_id = input.provet_id AND t.client_id = input.client_id
            AND t.scope = input.scope AND t.subject = input.subject"#,
        rows.join(", ")
    );
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// The stored tokens of several keys, in one query.
async fn load_tokens(
    db: &Db,
    keyring: &Keyring,
    keys: &[&TokenKey],
) -> Result<HashMap<TokenKey, StoredToken>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let wanted = keys.iter().map(|k| {
        Expr::tuple([
            Expr::val(k.provet_id),
            Expr::val(k.client_id.as_str()),
            Expr::val(k.scope.as_str()),
            Expr::val(k.subject.as_str()),
        ])
    });
    let rows = token::Entity::find()
        .filter(
            Expr::tuple([
                Expr::col(token::Column::ProvetId),
                Expr::col(token::Column::ClientId),
                Expr::col(token::Column::Scope),
                Expr::col(token::Column::Subject),
            ])
            .is_in(wanted),
        )
        .all(&db.main)
        .await?;
    rows.into_iter()
        .map(|row| {
            let key = TokenKey {
                provet_id: row.provet_id,
                client_id: row.client_id.clone(),
                scope: row.scope.clone(),
                subject: row.subject.clone(),
            };
            let token = crate::tokens::open_token(keyring, &key, row)?;
            Ok((key, token))
        })
        .collect()
}

/// The stored token the lease statement read beside the fence, if there is one.
fn token_in_lease_row(
    keyring: &Keyring,
    key: &TokenKey,
    row: &QueryResult,
) -> Result<Option<StoredToken>> {
    let Some(access_token) = row.try_get::<Option<String>>("", "access_token")? else {
        return Ok(None);
    };
    let model = token::Model {
        provet_id: key.provet_id,
        client_id: key.client_id.clone(),
        scope: key.scope.clone(),
        subject: key.subject.clone(),
        access_token,
        token_type: row.try_get("", "token_type")?,
        expires_at: row.try_get("", "expires_at")?,
        obtained_at: row.try_get("", "obtained_at")?,
        granted_scope: row.try_get("", "granted_scope")?,
    };
    crate::tokens::open_token(keyring, key, model).map(Some)
}

/// Ends leases by making them expired; the rows stay, so the fences keep growing. The rows
/// are locked in lock-key order first, as the lease statement takes them, so that a release
/// and a batch of takes never wait for each other in a circle.
pub(crate) async fn release_all<'a, C: ConnectionTrait>(
    db: &C,
    leases: impl Iterator<Item = &'a TokenLease>,
) -> Result<()> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let held: Vec<Expr> = leases
        .map(|l| {
            Expr::tuple([
                Expr::val(l.lock_key.as_str()),
                Expr::val(l.owner.as_str()),
                Expr::val(l.fence),
            ])
        })
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    let lock_key = Alias::new("lock_key");
    let locked = Query::select()
        .column(lock_key.clone())
        .from(Alias::new("token_leases"))
        .and_where(
            Expr::tuple([
                Expr::col(lock_key.clone()),
                Expr::col(Alias::new("owner")),
                Expr::col(Alias::new("fence")),
            ])
            .is_in(held),
        )
        .order_by(lock_key.clone(), sea_orm::Order::Asc)
        .lock(sea_orm::sea_query::LockType::Update)
        .to_owned();
    let update = Query::update()
        .table(Alias::new("token_leases"))
        .value(
            Alias::new("expires_at"),
            Expr::cust("now() - interval '1 second'"),
        )
        .and_where(Expr::col(lock_key).in_subquery(locked))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}
