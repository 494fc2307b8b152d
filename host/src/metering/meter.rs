//! Period usage per org: what quotas are checked against.
//!
//! Requests add to in-memory deltas; a background task adds the deltas to
//! `usage_counters` once a second (and at shutdown), so metering costs no
//! database write on the request path. A quota check reads the stored total
//! (re-read at most once a second per org) plus this instance's unflushed
//! deltas. With several instances, another instance's last second of usage
//! may not be seen yet: a monthly quota can overshoot by at most what the
//! other instances serve in about two seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Environment;
use crate::store::Database;
use crate::store::sql::sql;
use crate::supervisor::Shutdown;
use chrono::{DateTime, Datelike, Utc};

/// How often deltas are written and stored totals re-read.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The billing period an instant falls in: its UTC calendar month.
pub fn period_of(t: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", t.year(), t.month())
}

/// The period's end (the first instant of the next month), RFC 3339.
pub fn period_end(t: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
    chrono::NaiveDate::from_ymd_opt(y, m, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|d| d.and_utc()).unwrap_or(t)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    org_id: String,
    environment: Environment,
    period: String,
}

type Deltas = HashMap<String, u64>;

#[derive(Clone)]
pub struct UsageMeter {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    counts: Mutex<Counts>,
    /// A flush holds it for writing, a read of the stored totals for
    /// reading: so no read sees a batch both in the database and in
    /// `Counts::flushing`, and within one instance a check is exact.
    flush_lock: tokio::sync::RwLock<()>,
}

#[derive(Default)]
struct Counts {
    /// Recorded, not yet being written.
    pending: HashMap<Slot, Deltas>,
    /// Being written by the flush in progress.
    flushing: HashMap<Slot, Deltas>,
    /// Totals as last read from the database, and when.
    stored: HashMap<Slot, (Instant, Deltas)>,
}

impl Counts {
    /// `base` plus what this instance has not written yet.
    fn with_unwritten(&self, slot: &Slot, mut base: Deltas) -> Deltas {
        for deltas in [self.flushing.get(slot), self.pending.get(slot)].into_iter().flatten() {
            for (metric, q) in deltas {
                *base.entry(metric.clone()).or_default() += q;
            }
        }
        base
    }
}

impl UsageMeter {
    pub fn new(db: Database) -> UsageMeter {
        UsageMeter { inner: Arc::new(Inner { db, counts: Mutex::default(), flush_lock: tokio::sync::RwLock::new(()) }) }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds usage to the current period.
    pub fn record(&self, org_id: &str, environment: Environment, metric: &str, quantity: u64) {
        if quantity == 0 {
            return;
        }
        let slot = Slot { org_id: org_id.to_string(), environment, period: period_of(Utc::now()) };
        *self.counts().pending.entry(slot).or_default().entry(metric.to_string()).or_default() += quantity;
    }

    /// The org's usage in the current period, per metric.
    pub async fn used(&self, org_id: &str, environment: Environment) -> sqlx::Result<Deltas> {
        let slot = Slot { org_id: org_id.to_string(), environment, period: period_of(Utc::now()) };
        {
            let counts = self.counts();
            if let Some((at, stored)) = counts.stored.get(&slot)
                && at.elapsed() < FLUSH_EVERY
            {
                return Ok(counts.with_unwritten(&slot, stored.clone()));
            }
        }
        let _no_flush_meanwhile = self.inner.flush_lock.read().await;
        let stored = self.read(&slot).await?;
        let mut counts = self.counts();
        if counts.stored.len() > 100_000 {
            counts.stored.clear();
        }
        counts.stored.insert(slot.clone(), (Instant::now(), stored.clone()));
        Ok(counts.with_unwritten(&slot, stored))
    }

    async fn read(&self, slot: &Slot) -> sqlx::Result<HashMap<String, u64>> {
        let rows =
            sql("SELECT metric, quantity FROM usage_counters WHERE org_id = $1 AND environment = $2 AND period = $3")
                .bind(&slot.org_id)
                .bind(slot.environment.as_str())
                .bind(&slot.period)
                .fetch_all(self.inner.db.read())
                .await?;
        rows.iter().map(|r| Ok((r.get::<String>("metric")?, r.quantity("quantity")?))).collect()
    }

    /// Writes the pending deltas. On failure they are kept for the next try.
    pub async fn flush(&self) -> sqlx::Result<()> {
        let _one_at_a_time = self.inner.flush_lock.write().await;
        let batch = {
            let mut counts = self.counts();
            let batch = std::mem::take(&mut counts.pending);
            counts.flushing = batch.clone();
            batch
        };
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.write(&batch).await;
        let mut counts = self.counts();
        let written = std::mem::take(&mut counts.flushing);
        match &result {
            Ok(()) => {
                // The stored totals now include the batch: drop cached reads
                // so no check counts it twice.
                for slot in written.keys() {
                    counts.stored.remove(slot);
                }
            }
            Err(_) => {
                for (slot, deltas) in written {
                    let into = counts.pending.entry(slot).or_default();
                    for (metric, q) in deltas {
                        *into.entry(metric).or_default() += q;
                    }
                }
            }
        }
        result
    }

    async fn write(&self, batch: &HashMap<Slot, HashMap<String, u64>>) -> sqlx::Result<()> {
        let mut tx = self.inner.db.begin().await?;
        for (slot, deltas) in batch {
            for (metric, q) in deltas {
                sql("INSERT INTO usage_counters (org_id, environment, period, metric, quantity) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, environment, period, metric) \
                     DO UPDATE SET quantity = usage_counters.quantity + excluded.quantity")
                .bind(&slot.org_id)
                .bind(slot.environment.as_str())
                .bind(&slot.period)
                .bind(metric)
                .bind(*q)
                .execute(&mut tx)
                .await?;
            }
        }
        tx.commit().await
    }

    /// Flushes every [`FLUSH_EVERY`]; on shutdown, a last time. Runs under
    /// the supervisor.
    pub async fn flush_loop(self, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.requested() => true,
            };
            if let Err(e) = self.flush().await {
                if last {
                    tracing::warn!(error = %e, "could not write the last usage counters");
                } else {
                    tracing::warn!(error = %e, "could not write usage counters; will retry");
                }
            }
            if last {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_months() {
        let t: DateTime<Utc> = "2026-12-31T23:59:59Z".parse().unwrap();
        assert_eq!(period_of(t), "2026-12");
        assert_eq!(period_end(t).to_rfc3339(), "2027-01-01T00:00:00+00:00");
        let t: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        assert_eq!(period_of(t), "2026-02");
        assert_eq!(period_end(t).to_rfc3339(), "2026-03-01T00:00:00+00:00");
    }

    #[tokio::test]
    async fn checks_see_every_recorded_unit_before_during_and_after_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::StoreConfig { database_url: None, data_dir: dir.path(), max_connections: 1 };
        let db = Database::connect(&store).await.unwrap();
        let auth = crate::auth::AuthService::new(db.clone(), vec![7; 32], Duration::ZERO);
        let org_a = auth.create_org("A", "free", false).await.unwrap().id;
        let org_b = auth.create_org("B", "free", false).await.unwrap().id;
        let meter = UsageMeter::new(db);
        let used = |m: &UsageMeter| {
            let (m, org) = (m.clone(), org_a.clone());
            async move { m.used(&org, Environment::Live).await.unwrap().get("api_calls").copied().unwrap_or(0) }
        };
        for n in 1..=50u64 {
            meter.record(&org_a, Environment::Live, "api_calls", 1);
            // Flushes race the checks; every check still sees all n.
            let flush = {
                let m = meter.clone();
                tokio::spawn(async move { m.flush().await })
            };
            assert_eq!(used(&meter).await, n);
            flush.await.unwrap().unwrap();
            assert_eq!(used(&meter).await, n);
        }
        assert_eq!(meter.used(&org_b, Environment::Live).await.unwrap().get("api_calls"), None);
        assert_eq!(meter.used(&org_a, Environment::Test).await.unwrap().get("api_calls"), None);
        // A fresh meter (another instance) reads the stored total.
        let other = UsageMeter::new(meter.inner.db.clone());
        assert_eq!(used(&other).await, 50);
    }
}
