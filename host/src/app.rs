//! Wiring: configuration ─▶ database ─▶ domain services ─▶ HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{self, AppState};
use crate::auth::{self, AuthService};
use crate::config::Config;
use crate::limits::LimitService;
use crate::memories::MemoryService;
use crate::metering::meter::UsageMeter;
use crate::plugins::PluginService;
use crate::providers::Providers;
use crate::store::Database;

/// Connects to the database and builds the services.
pub async fn build(config: Config) -> anyhow::Result<AppState> {
    let db = Database::connect(&config.store()).await?;
    let secret = auth::secret::load_or_create(config.secret.as_deref(), config.is_postgres(), &config.data_dir)?;
    let providers = Providers::from_config(&config.embeddings, &config.answers, &config.completions)?;
    let embedder = providers.embedder.clone();
    let answerer = providers.answerer.clone();
    let cache_dir = config.plugin_cache_dir.clone().unwrap_or_else(|| config.data_dir.join("plugin-cache"));
    let plugins = PluginService::start(db.clone(), config.plugins.clone(), cache_dir, Some(embedder.clone()))
        .await
        .context("starting the plugin runtime")?;
    plugins.follow_changes();
    let meter = UsageMeter::new(db.clone());
    meter.start_flushing();
    let limits = LimitService::start(
        config.limits.clone(),
        config.plugins.rate_limit_failure,
        config.redis_url.as_deref(),
        plugins.clone(),
        meter,
    )
    .await
    .context("starting rate limits")?;
    Ok(AppState {
        limits,
        auth: AuthService::new(db.clone(), secret, std::time::Duration::from_millis(config.auth_cache_ttl_ms)),
        memories: MemoryService::new(db.clone(), embedder, answerer),
        plugins,
        db,
        config: Arc::new(config),
    })
}

/// Runs the HTTP server until SIGTERM or Ctrl-C; in-flight requests then get
/// `shutdown_grace_secs` to finish.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let state = build(config).await?;
    let config = state.config.clone();
    let db = state.db.clone();
    let limits = state.limits.clone();
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
    if let Err(e) = limits.meter().flush().await {
        tracing::warn!(error = %e, "could not write the last usage counters");
    }
    db.close().await;
    tracing::info!("stopped");
    Ok(())
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
