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
use crate::jobs::JobService;
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
    // Policies read once at start: a bad one stops the start before anything runs.
    let model_router = config.model_router()?;
    let cache_policy = config.cache_policy()?;
    crate::providers::prices::install(config.model_prices()?);
    let db = Database::connect(&config.store()).await?;
    let secret = auth::secret::load_or_create(config.secret.as_deref(), config.is_postgres(), &config.data_dir)?;
    let models_dir = config.models_dir();
    let providers =
        Providers::from_config(&config.embeddings, &config.answers, &config.completions, Some(&models_dir))?
            .with_reranker(&config.rerank)?;
    announce_embedder(&providers, &config, &models_dir);
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

    if config.benchmark_metering_off {
        tracing::warn!(
            "benchmark_metering_off is set: requests are NOT metered (no usage events, no API-call audit records, \
             nothing billed or counted toward quotas); a benchmark baseline, never for production"
        );
    }
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

    let memories = MemoryService::new(
        db.clone(),
        providers.embedders.clone(),
        providers.answerer.clone(),
        config.ranking_policy()?,
    )
    .with_reranker(providers.reranker.clone())
    .with_cache(response_cache(&config, cache_policy).await)
    .with_router(model_router);
    memories.load_models().await.context("reading the embedding models of stored memories")?;
    let m = memories.clone();
    supervisor.spawn("re-embed", move |shutdown| m.clone().reembed_loop(shutdown));
    if let (Some(name), true) = (providers.missing_model.clone(), config.models.auto_pull) {
        let (embedders, models, dir) = (providers.embedders.clone(), config.models.clone(), models_dir.clone());
        tokio::spawn(pull_then_switch(embedders, models, dir, name));
    }

    let billing = BillingService::new(plugins.clone(), meter.clone());
    if let Some(path) = config.pricing_policy() {
        let b = billing.clone();
        supervisor
            .spawn("pricing-policy-reload", move |shutdown| b.clone().pricing_policy_loop(path.clone(), shutdown));
    }

    let auth = AuthService::new(db.clone(), secret, std::time::Duration::from_millis(config.auth_cache_ttl_ms));
    let jobs = JobService::new(
        db.clone(),
        config.jobs.clone(),
        memories.clone(),
        plugins.clone(),
        auth.clone(),
        billing.clone(),
        meter.clone(),
    );
    let j = jobs.clone();
    supervisor.spawn("job-retention", move |shutdown| j.clone().retention_loop(shutdown));
    for _ in 0..config.jobs.workers {
        let j = jobs.clone();
        supervisor.spawn("job-worker", move |shutdown| j.clone().worker_loop(shutdown));
    }

    Ok(AppState::new(Services {
        billing,
        jobs,
        limits,
        auth,
        memories,
        plugins,
        meter,
        supervisor,
        path_stats: Default::default(),
        db,
        config: Arc::new(config),
    }))
}

/// The response cache: shared through Redis when there is one; in process
/// in embedded mode; off on PostgreSQL without Redis (instances could not
/// see each other's writes).
async fn response_cache(
    config: &Config,
    policy: crate::memories::cache::CachePolicy,
) -> crate::memories::cache::ResponseCache {
    use crate::memories::cache::ResponseCache;
    let cache = match (&config.redis_url, config.is_postgres()) {
        (Some(url), _) => {
            match ResponseCache::redis(url, Duration::from_millis(config.limits.redis_timeout_ms), policy).await {
                Ok(cache) => cache,
                Err(e) => {
                    tracing::warn!(error = %e, "response cache: off (Redis unreachable at start)");
                    ResponseCache::off()
                }
            }
        }
        (None, false) => ResponseCache::local(policy),
        (None, true) => ResponseCache::off(),
    };
    tracing::info!(cache = cache.describe(), "response cache");
    cache
}

/// Says at start which embedder serves, and why.
fn announce_embedder(providers: &Providers, config: &Config, models_dir: &std::path::Path) {
    let current = providers.embedders.current();
    match &providers.missing_model {
        None => tracing::info!(model = current.model(), remote = current.is_remote(), "embedder"),
        Some(name) if config.models.auto_pull => tracing::warn!(
            model = current.model(),
            "embedder: hashing (hybrid ranking still on); the semantic model {name} is not in {}: fetching it in \
             the background, then memories are re-embedded",
            models_dir.display()
        ),
        Some(name) => tracing::warn!(
            model = current.model(),
            "embedder: hashing (hybrid ranking still on); the semantic model {name} is not in {} and models.auto_pull \
             is off: run `memhost models pull {name}`",
            models_dir.display()
        ),
    }
}

/// Fetches the configured local model, loads it and makes it the embedder;
/// the re-embed loop then moves stored memories over. Retries with backoff
/// (no network now may mean network later).
async fn pull_then_switch(
    embedders: Arc<crate::providers::Embedders>,
    models: crate::providers::models::ModelsConfig,
    dir: std::path::PathBuf,
    name: String,
) {
    use crate::providers::{models as catalogue, semantic::SemanticEmbedder};
    let mut wait = Duration::from_secs(30);
    loop {
        let result = match catalogue::installed(&dir, &name) {
            Some(path) => Ok(path),
            None => catalogue::pull(&models, &dir, &name).await.map(|_| dir.join(&name)),
        };
        let loaded = match result {
            Ok(path) => {
                let n = name.clone();
                tokio::task::spawn_blocking(move || SemanticEmbedder::load(&n, &path))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok(embedder) => {
                embedders.switch_to(Arc::new(embedder));
                tracing::info!(model = %name, "embedder: semantic model loaded; re-embedding stored memories");
                return;
            }
            Err(e) => {
                tracing::warn!(model = %name, error = %format!("{e:#}"), retry_secs = wait.as_secs(), "model pull failed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(3600));
            }
        }
    }
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
