//! One supervisor for the server's background loops (usage-event writer,
//! metrics policy reload, retention, instance heartbeat,
//! plugin change feed, Redis heartbeat, and the workers to come): started
//! together, stopped together on shutdown, and a loop that dies (returns or
//! panics) while the server runs is restarted after a backoff and counted.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// First wait before a restart; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a loop watches to know when to stop: it should finish its current
/// step (the usage writer writes what is queued, say) and return.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once shutdown is requested.
    pub async fn requested(&mut self) {
        // An error means the supervisor is gone: that is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// A handle that never fires, for running a loop outside a supervisor.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Shutdown(rx)
    }
}

/// One loop's state, for `/ready`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoopStatus {
    pub name: &'static str,
    pub running: bool,
    /// Times it died and was started again since the server started.
    pub restarts: u64,
}

struct Loop {
    name: &'static str,
    running: AtomicBool,
    restarts: AtomicU64,
}

#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    stop: watch::Sender<bool>,
    loops: Mutex<Vec<(Arc<Loop>, JoinHandle<()>)>>,
    first_backoff: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::with_backoff(FIRST_BACKOFF)
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// With a given first restart delay (tests use a short one).
    pub fn with_backoff(first_backoff: Duration) -> Supervisor {
        let (stop, _) = watch::channel(false);
        Supervisor { inner: Arc::new(Inner { stop, loops: Mutex::default(), first_backoff }) }
    }

    fn shutdown_handle(&self) -> Shutdown {
        Shutdown(self.inner.stop.subscribe())
    }

    /// Runs the loop `make` builds until shutdown, building a new one each
    /// time it dies.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F)
    where
        F: Fn(Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let state = Arc::new(Loop { name, running: AtomicBool::new(true), restarts: AtomicU64::new(0) });
        let mut shutdown = self.shutdown_handle();
        let first_backoff = self.inner.first_backoff;
        let st = state.clone();
        let handle = tokio::spawn(async move {
            let mut backoff = first_backoff;
            while !shutdown.is_requested() {
                st.running.store(true, Ordering::Relaxed);
                // Its own task, so a panic ends only this run of the loop.
                let mut run = tokio::spawn(make(shutdown.clone()));
                let outcome = tokio::select! {
                    outcome = &mut run => outcome,
                    _ = shutdown.requested() => {
                        // Give it a moment to finish its last step.
                        if tokio::time::timeout(Duration::from_secs(10), &mut run).await.is_err() {
                            run.abort();
                        }
                        break;
                    }
                };
                st.running.store(false, Ordering::Relaxed);
                if shutdown.is_requested() {
                    break;
                }
                st.restarts.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Err(e) if e.is_panic() => {
                        tracing::error!(task = name, "background loop panicked; restarting it in {backoff:?}")
                    }
                    _ => tracing::warn!(task = name, "background loop stopped; restarting it in {backoff:?}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.requested() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            st.running.store(false, Ordering::Relaxed);
        });
        self.inner.loops.lock().unwrap_or_else(|e| e.into_inner()).push((state, handle));
    }

    pub fn status(&self) -> Vec<LoopStatus> {
        let loops = self.inner.loops.lock().unwrap_or_else(|e| e.into_inner());
        loops
            .iter()
            .map(|(l, _)| LoopStatus {
                name: l.name,
                running: l.running.load(Ordering::Relaxed),
                restarts: l.restarts.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Asks every loop to stop and waits until they have (each gets a
    /// moment to finish its last step, e.g. the usage writer's last batch).
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let handles: Vec<JoinHandle<()>> = {
            let mut loops = self.inner.loops.lock().unwrap_or_else(|e| e.into_inner());
            loops.iter_mut().map(|(_, h)| std::mem::replace(h, tokio::spawn(async {}))).collect()
        };
        for h in handles {
            let _ = h.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn a_dying_loop_is_restarted_and_counted_and_shutdown_stops_all() {
        let supervisor = Supervisor::with_backoff(Duration::from_millis(5));
        let runs = Arc::new(AtomicU32::new(0));
        let stopped_cleanly = Arc::new(AtomicBool::new(false));
        let (r, s) = (runs.clone(), stopped_cleanly.clone());
        supervisor.spawn("flaky", move |mut shutdown| {
            let (r, s) = (r.clone(), s.clone());
            async move {
                match r.fetch_add(1, Ordering::SeqCst) {
                    0 => panic!("first run dies"),
                    1 => {} // second run returns early: also a death
                    _ => {
                        shutdown.requested().await;
                        s.store(true, Ordering::SeqCst);
                    }
                }
            }
        });
        supervisor.spawn("steady", |mut shutdown| async move { shutdown.requested().await });
        for _ in 0..200 {
            if runs.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = supervisor.status();
        let flaky = status.iter().find(|l| l.name == "flaky").unwrap();
        assert_eq!(flaky.restarts, 2);
        assert!(flaky.running);
        assert_eq!(status.iter().find(|l| l.name == "steady").unwrap().restarts, 0);

        supervisor.shutdown().await;
        assert!(stopped_cleanly.load(Ordering::SeqCst), "the loop saw the shutdown and finished its step");
        assert!(supervisor.status().iter().all(|l| !l.running));
        assert_eq!(runs.load(Ordering::SeqCst), 3, "nothing restarts after shutdown");
    }
}
