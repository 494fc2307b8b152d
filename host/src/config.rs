//! Configuration: defaults, then a TOML file, then `MEMHOST_*` environment
//! variables (nested keys with `__`, e.g. `MEMHOST_EMBEDDINGS__PROVIDER`), then
//! the conventional unprefixed `DATABASE_URL` and `REDIS_URL`.
//!
//! Each domain owns its section's type (`limits::LimitsConfig`,
//! `plugins::PluginsConfig`, `providers::ProviderConfig`, …); this file only
//! gathers them, and no domain imports it (`app` hands each its section).

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

use crate::providers::ProviderConfig;
use crate::store::StoreConfig;

/// The whole service configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (printed at start).
    pub listen: String,
    /// Where embedded mode keeps its SQLite database and server secret.
    pub data_dir: PathBuf,
    /// `postgres://…` selects production mode; `sqlite://…` an explicit file;
    /// unset means embedded SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// Redis for rate-limit counters shared by every instance. Unset: the
    /// counters live in this process (one instance only).
    pub redis_url: Option<String>,
    /// Server secret keying the API-key hashes. Embedded mode generates and keeps
    /// one under `data_dir` on first run; production mode must set it.
    pub secret: Option<String>,
    /// Origins allowed by CORS; empty means no cross-origin access.
    #[serde(deserialize_with = "string_or_list")]
    pub cors_origins: Vec<String>,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// PostgreSQL pool size.
    pub database_max_connections: u32,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// How long a verified API key is trusted without a database lookup, in
    /// milliseconds; 0 disables. Revocations made through this instance apply
    /// at once, others (CLI, other instances) within this time.
    pub auth_cache_ttl_ms: u64,
    /// `provider = "local"` (default) runs a local model in process:
    /// `model` names it (default `all-minilm-l6-v2`; `hash` is the
    /// model-free hashing embedder). `openai` calls a remote server.
    pub embeddings: ProviderConfig,
    /// Local embedding models: where they are installed and fetched from.
    pub models: crate::providers::models::ModelsConfig,
    pub answers: ProviderConfig,
    /// LLM completions for extractor plugins (`local`: none).
    pub completions: ProviderConfig,
    /// A reranker for retrievals that ask for `rerank` (`local`: none;
    /// `openai`: a `/rerank` endpoint).
    pub rerank: ProviderConfig,
    /// Where precompiled plugin artifacts are cached; default
    /// `<data_dir>/plugin-cache`. Instances may share one.
    pub plugin_cache_dir: Option<PathBuf>,
    /// Plugin sandbox limits per kind and failure policies.
    pub plugins: crate::plugins::PluginsConfig,
    /// Rate limits and quotas: on/off, Redis failure policy, client address.
    pub limits: crate::limits::LimitsConfig,
    /// Batch jobs: workers, leases, retries, per-org caps.
    pub jobs: crate::jobs::JobsConfig,
    /// Where the policy files are (`metrics.yaml`, …), reloaded on change.
    /// Default: `./policies` if it exists, else the bundled defaults.
    pub policies_dir: Option<PathBuf>,
    /// When set, `GET /metrics` needs `Authorization: Bearer <metrics_token>`.
    /// Never logged.
    pub metrics_token: Option<String>,
    /// The signing secret of the Stripe webhook endpoint (`whsec_…`);
    /// without it `POST /webhooks/stripe` answers 404. Never logged.
    pub stripe_webhook_secret: Option<String>,
    /// Test-only routes that fail on purpose (`GET /v1/debug/panic`). Never
    /// in production.
    pub fault_injection: bool,
    /// Benchmarks only: the request path skips metering (no usage event, no
    /// audit record of API calls, nothing counted toward quotas or billed),
    /// so the metering benchmark can measure the same binary with and
    /// without it. Never in production: the server warns at start.
    pub benchmark_metering_off: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            redis_url: None,
            secret: None,
            cors_origins: Vec::new(),
            log_format: LogFormat::Text,
            max_body_bytes: 10 * 1024 * 1024,
            database_max_connections: 32,
            shutdown_grace_secs: 30,
            auth_cache_ttl_ms: 1000,
            embeddings: ProviderConfig::default(),
            models: Default::default(),
            answers: ProviderConfig::default(),
            completions: ProviderConfig::default(),
            rerank: ProviderConfig::default(),
            plugin_cache_dir: None,
            plugins: crate::plugins::PluginsConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            jobs: crate::jobs::JobsConfig::default(),
            policies_dir: None,
            metrics_token: None,
            stripe_webhook_secret: None,
            fault_injection: false,
            benchmark_metering_off: false,
        }
    }
}

/// `MEMHOST_*` variables that are not configuration keys: read elsewhere
/// (the config file path, the log filter, the CLI's server and key, build and
/// test settings), so the strict configuration parser must skip them.
const NOT_CONFIG_ENV: [&str; 9] =
    ["config", "log", "url", "api_key", "plugins_dir", "skip_plugin_build", "test_pg", "componentize_py", "jco"];

impl Config {
    /// Loads the configuration. `file` is used when given (and must exist);
    /// otherwise `MEMHOST_CONFIG`, otherwise `./memhost.toml` if present.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let file = file.map(Path::to_path_buf).or_else(|| std::env::var_os("MEMHOST_CONFIG").map(PathBuf::from));
        match file {
            Some(path) => {
                if !path.exists() {
                    anyhow::bail!("config file {} does not exist", path.display());
                }
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file("memhost.toml")),
        }
        figment = figment
            .merge(Env::prefixed("MEMHOST_").ignore(&NOT_CONFIG_ENV).split("__"))
            .merge(Env::raw().only(&["database_url", "redis_url"]));
        let config: Config = figment.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_body_bytes == 0 {
            anyhow::bail!("max_body_bytes must be positive");
        }
        self.embeddings.validate("embeddings")?;
        self.answers.validate("answers")?;
        self.completions.validate("completions")?;
        self.rerank.validate("rerank")?;
        Ok(())
    }

    /// True when the configuration selects PostgreSQL (production mode).
    pub fn is_postgres(&self) -> bool {
        self.store().is_postgres()
    }

    /// The metrics policy: `<policies_dir>/metrics.yaml` if that file exists
    /// (a configured directory without it is an error), else bundled.
    pub fn metrics_policy(&self) -> anyhow::Result<crate::metering::meter::PolicySource> {
        use crate::metering::meter::PolicySource;
        match &self.policies_dir {
            Some(dir) => {
                let file = dir.join("metrics.yaml");
                if !file.exists() {
                    anyhow::bail!("policies_dir {} has no metrics.yaml", dir.display());
                }
                Ok(PolicySource::File(file))
            }
            None => {
                let file = Path::new("policies").join("metrics.yaml");
                Ok(if file.exists() { PolicySource::File(file) } else { PolicySource::Bundled })
            }
        }
    }

    /// The pricing policy file the server applies and follows:
    /// `<policies_dir>/pricing.yaml`, else `policies/pricing.yaml` if present.
    /// None: the config the pricing plugin was activated with stays.
    pub fn pricing_policy(&self) -> Option<PathBuf> {
        let file = match &self.policies_dir {
            Some(dir) => dir.join("pricing.yaml"),
            None => Path::new("policies").join("pricing.yaml"),
        };
        file.exists().then_some(file)
    }

    /// Where local embedding models are installed.
    pub fn models_dir(&self) -> PathBuf {
        self.models.dir(&self.data_dir)
    }

    /// A policy read once at start: `<policies_dir>/<name>`, else
    /// `policies/<name>` if present, else the bundled one. A file that does
    /// not parse stops the start, named.
    fn start_policy<T, E: std::fmt::Display>(
        &self,
        name: &str,
        bundled: impl FnOnce() -> T,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> anyhow::Result<T> {
        let file = match &self.policies_dir {
            Some(dir) => dir.join(name),
            None => Path::new("policies").join(name),
        };
        if !file.exists() {
            return Ok(bundled());
        }
        let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    }

    /// Retrieval ranking (`retrieval.yaml`).
    pub fn ranking_policy(&self) -> anyhow::Result<crate::memories::ranking::RankingPolicy> {
        use crate::memories::ranking::RankingPolicy;
        self.start_policy("retrieval.yaml", RankingPolicy::bundled, RankingPolicy::parse)
    }

    /// Model routing (`model-routing.yaml`).
    pub fn model_router(&self) -> anyhow::Result<crate::providers::routing::ModelRouter> {
        use crate::providers::routing::ModelRouter;
        self.start_policy("model-routing.yaml", ModelRouter::bundled, ModelRouter::parse)
    }

    /// Provider model prices (`model-prices.yaml`).
    pub fn model_prices(&self) -> anyhow::Result<crate::providers::prices::ModelPrices> {
        use crate::providers::prices::ModelPrices;
        self.start_policy("model-prices.yaml", ModelPrices::bundled, ModelPrices::parse)
    }

    /// The response cache (`caching.yaml`).
    pub fn cache_policy(&self) -> anyhow::Result<crate::memories::cache::CachePolicy> {
        use crate::memories::cache::CachePolicy;
        self.start_policy("caching.yaml", CachePolicy::bundled, CachePolicy::parse)
    }

    /// What the database connection needs.
    pub fn store(&self) -> StoreConfig<'_> {
        StoreConfig {
            database_url: self.database_url.as_deref(),
            data_dir: &self.data_dir,
            max_connections: self.database_max_connections,
        }
    }
}

/// Accepts `["a","b"]` or `"a,b"` (the form an environment variable takes).
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    })
}
