//! Wiring: configuration ─▶ database ─▶ domain services and their
//! background loops ─▶ HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{self, AppState, Services};
use crate::auth::{self, AuthService};
use crate::billing::BillingService;
use crate::config::Config;
use crate::limits::LimitService;
use crate::memories::MemoryService;
use crate::metering::UsageMeter;
use crate::plugins::PluginService;
use crate::providers::Providers;
use crate::store::Database;
use crate::supervisor::Supervisor;

/// Connects to the database, builds the services and starts their
/// background loops under one supervisor.
pub async fn build(config: Config) -> anyhow::Result<AppState> {
    let db = Database::connect(&config.store()).await?;
    let secret = auth::secret::load_or_create(config.secret.as_deref(), config.is_postgres(), &config.data_dir)?;
    let providers = Providers::from_config(&config.embeddings, &config.answers, &config.completions)?;
    let cache_dir = config.plugin_cache_dir.clone().unwrap_or_else(|| config.data_dir.join("plugin-cache"));
    let plugins = PluginService::start(db.clone(), config.plugins.clone(), cache_dir, providers.clone())
        .await
        .context("starting the plugin runtime")?;
    let meter = UsageMeter::new(db.clone(), config.metrics_policy()?)?;
    let limits = LimitService::start(
        config.limits.clone(),
        config.plugins.rate_limit_failure,
        config.redis_url.as_deref(),
        plugins.clone(),
    )
    .await
    .context("starting rate limits")?;

    let supervisor = Supervisor::new();
    let m = meter.clone();
    supervisor.spawn("usage-writer", move |shutdown| m.clone().writer_loop(shutdown));
    let m = meter.clone();
    supervisor.spawn("metrics-policy-reload", move |shutdown| m.clone().policy_loop(shutdown));
    let m = meter.clone();
    supervisor.spawn("usage-retention", move |shutdown| m.clone().retention_loop(shutdown));
    let k = meter.idempotency().clone();
    supervisor.spawn("instance-heartbeat", move |shutdown| k.clone().heartbeat_loop(shutdown));
    if plugins.follows_changes() {
        let p = plugins.clone();
        supervisor.spawn("plugin-change-feed", move |shutdown| p.clone().change_feed_loop(shutdown));
    }
    if limits.shares_counters() {
        let l = limits.clone();
        supervisor.spawn("redis-heartbeat", move |shutdown| l.clone().heartbeat_loop(shutdown));
    }

    let billing = BillingService::new(plugins.clone(), meter.clone());
    if let Some(path) = config.pricing_policy() {
        let b = billing.clone();
        supervisor
            .spawn("pricing-policy-reload", move |shutdown| b.clone().pricing_policy_loop(path.clone(), shutdown));
    }

    Ok(AppState::new(Services {
        billing,
        limits,
        auth: AuthService::new(db.clone(), secret, std::time::Duration::from_millis(config.auth_cache_ttl_ms)),
        memories: MemoryService::new(db.clone(), providers.embedder.clone(), providers.answerer.clone()),
        plugins,
        meter,
        supervisor,
        path_stats: Default::default(),
        db,
        config: Arc::new(config),
    }))
}

/// Runs the HTTP server until SIGTERM or Ctrl-C; in-flight requests then get
/// `shutdown_grace_secs` to finish, and the background loops finish their
/// last step (the meter writes what it holds).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    log_panics();
    let state = build(config).await?;
    let config = state.config.clone();
    let db = state.db.clone();
    let supervisor = state.supervisor.clone();
    let app = api::router(state)?;
    let listener =
        tokio::net::TcpListener::bind(&config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = db.backend().as_str(), "memhost listening");
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("memhost listening on http://{addr}");

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tracing::warn!("grace period over; exiting with requests still in flight");
                std::process::exit(1);
            });
        })
        .await?;
    supervisor.shutdown().await;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Panics are logged through `tracing`, inside the span of the request (or
/// task) that panicked, so the request id is on the line.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %message, %location, "panic");
    }));
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
