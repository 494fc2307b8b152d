//! Uploads compiled in the background. Compiling a Python or JavaScript
//! guest (18 MB with its interpreter) takes Cranelift seconds of every core,
//! so an upload is a small job: it waits for one of
//! `plugins.max_concurrent_compiles` slots (`queued`), compiles and checks
//! (`compiling`), then is stored (`ready`) or refused (`refused`, with the
//! reason). `POST /admin/plugins` waits for the outcome a few seconds and
//! otherwise answers 202; `GET /admin/plugins/{id}` shows the phase. The
//! job runs to its end even if the client hangs up.
//!
//! Progress lives in this process only (refusals are kept an hour): a
//! refused plugin is never stored, and a poll that reaches another instance
//! of a cluster finds nothing until the plugin is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use utoipa::ToSchema;

use super::{PluginError, PluginKind, Uploaded};

/// How long a finished upload's outcome stays visible.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);

/// Where an upload stands.
#[derive(Debug, Clone)]
pub enum Phase {
    Queued,
    Compiling,
    // Boxed: far larger than the other phases.
    Done(Result<Box<Uploaded>, Arc<PluginError>>),
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Compiling => "compiling",
            Phase::Done(Ok(_)) => "ready",
            Phase::Done(Err(_)) => "refused",
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Phase::Done(_))
    }
}

/// What is known of an upload besides its phase.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UploadInfo {
    /// SHA-256 of the component: the plugin's id once stored.
    pub id: String,
    pub size_bytes: u64,
    /// The kind it was uploaded as (`?kind=`), if given.
    pub kind: Option<PluginKind>,
    pub uploaded_by: String,
    pub started_at: DateTime<Utc>,
    /// The limit overrides it was uploaded with: a second upload of the
    /// same bytes joins it only with the same ones.
    #[serde(skip)]
    pub limits: super::LimitOverrides,
}

struct Entry {
    info: UploadInfo,
    phase: watch::Sender<Phase>,
    finished: Option<Instant>,
}

/// A started (or joined) upload: its id and a view of its phase.
pub struct Ticket {
    pub info: UploadInfo,
    pub phase: watch::Receiver<Phase>,
    /// This request started the job (false: joined one, or already stored).
    pub started: bool,
}

impl Ticket {
    /// The phase after at most `wait` (sooner if the upload finishes).
    pub async fn settle(&mut self, wait: Duration) -> Phase {
        let _ = tokio::time::timeout(wait, self.phase.wait_for(Phase::is_done)).await;
        self.phase.borrow().clone()
    }
}

pub struct Uploads {
    entries: Mutex<HashMap<String, Entry>>,
    compiles: Arc<Semaphore>,
    max_pending: usize,
}

/// What `begin` decided.
pub enum Begin {
    /// A new job: run `compile` under [`Uploads::run`].
    Started(Ticket),
    /// The same bytes are already queued or compiling: follow that one.
    Joined(Ticket),
}

impl Uploads {
    pub fn new(max_concurrent_compiles: u32, max_pending: u32) -> Uploads {
        Uploads {
            entries: Mutex::new(HashMap::new()),
            compiles: Arc::new(Semaphore::new(max_concurrent_compiles.max(1) as usize)),
            max_pending: max_pending.max(1) as usize,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an upload of `info.id`, unless the same bytes are already
    /// in flight. Refuses when `max_pending_uploads` are waiting or running.
    pub fn begin(&self, info: UploadInfo) -> Result<Begin, PluginError> {
        let mut entries = self.lock();
        entries.retain(|_, e| e.finished.is_none_or(|t| t.elapsed() < KEEP_FINISHED));
        if let Some(e) = entries.get(&info.id)
            && e.finished.is_none()
        {
            return Ok(Begin::Joined(Ticket { info: e.info.clone(), phase: e.phase.subscribe(), started: false }));
        }
        let pending = entries.values().filter(|e| e.finished.is_none()).count();
        if pending >= self.max_pending {
            return Err(PluginError::Busy(format!(
                "{pending} plugin uploads are already queued or compiling (`plugins.max_pending_uploads`); try again shortly"
            )));
        }
        let (tx, rx) = watch::channel(Phase::Queued);
        entries.insert(info.id.clone(), Entry { info: info.clone(), phase: tx, finished: None });
        Ok(Begin::Started(Ticket { info, phase: rx, started: true }))
    }

    /// Runs an upload job: waits for a compile slot, then `job`, and
    /// publishes its outcome.
    pub async fn run<F>(&self, id: &str, job: F)
    where
        F: Future<Output = Result<Uploaded, PluginError>>,
    {
        // If the job panics, the entry must not stay `compiling` for ever
        // (it would hold a pending slot): the guard settles it as refused.
        struct Settle<'a>(&'a Uploads, &'a str, bool);
        impl Drop for Settle<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    let e = PluginError::Internal(anyhow::anyhow!("the upload job stopped unexpectedly"));
                    self.0.set(self.1, Phase::Done(Err(Arc::new(e))), true);
                }
            }
        }
        let mut guard = Settle(self, id, false);
        let permit = self.compiles.clone().acquire_owned().await;
        self.set(id, Phase::Compiling, false);
        let outcome = job.await;
        drop(permit);
        guard.2 = true;
        if let Err(e) = &outcome {
            tracing::info!(plugin = %id, error = %e, "plugin upload refused");
        }
        self.set(id, Phase::Done(outcome.map(Box::new).map_err(Arc::new)), true);
    }

    fn set(&self, id: &str, phase: Phase, finished: bool) {
        if let Some(e) = self.lock().get_mut(id) {
            e.phase.send_replace(phase);
            if finished {
                e.finished = Some(Instant::now());
            }
        }
    }

    /// An upload in flight or recently finished, by id or unique prefix.
    pub fn find(&self, prefix: &str) -> Option<(UploadInfo, Phase)> {
        let entries = self.lock();
        let mut found = entries.values().filter(|e| e.info.id.starts_with(prefix));
        let one = found.next()?;
        if found.next().is_some() {
            return None;
        }
        Some((one.info.clone(), one.phase.borrow().clone()))
    }
}
