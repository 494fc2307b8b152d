//! The `memhost` command: `serve`, and the operator's admin commands, which
//! work on the same database as the server (embedded or PostgreSQL).

mod admin;
mod invoices;
mod models;
mod plugin;
mod pricing;
mod project;
mod ratelimit;
mod scaffold;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "memhost", version, about = "A memory API for AI applications")]
struct Cli {
    /// Configuration file (TOML). Default: $MEMHOST_CONFIG, else ./memhost.toml if present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (embedded SQLite unless DATABASE_URL is postgres://…).
    Serve {
        /// Listen address, e.g. 127.0.0.1:8080 (overrides configuration).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Manage orgs.
    #[command(subcommand)]
    Orgs(admin::OrgsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Database information.
    #[command(subcommand)]
    Db(admin::DbCommand),
    /// Write, check and run plugins locally; upload and activate them on a server.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// A key's rate limits and quotas, as a running server enforces them.
    #[command(subcommand)]
    Ratelimit(ratelimit::RatelimitCommand),
    /// Usage: stats per key or org, the period export, reconciliation with the raw events.
    #[command(subcommand)]
    Usage(usage::UsageCommand),
    /// Invoices: close a period, list, show, preview, verify by replay.
    #[command(subcommand)]
    Invoices(invoices::InvoicesCommand),
    /// Pricing: the config's versions and plans; a customer's region, plan
    /// version, add-ons, credits and promotions.
    #[command(subcommand)]
    Pricing(pricing::PricingCommand),
    /// The audit log: verify its hash chain, list entries.
    #[command(subcommand)]
    Audit(usage::AuditCommand),
    /// Local embedding models: pull, import, list, try.
    #[command(subcommand)]
    Models(models::ModelsCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let serving = matches!(cli.command, Command::Serve { .. });
    init_logging(config.log_format, serving);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { listen } => {
                if let Some(l) = listen {
                    config.listen = l;
                }
                crate::app::serve(config).await
            }
            Command::Orgs(cmd) => admin::orgs(config, cmd).await,
            Command::Keys(cmd) => admin::keys(config, cmd).await,
            Command::Db(cmd) => admin::db(config, cmd).await,
            Command::Plugin(cmd) => plugin::run(config, cmd).await,
            Command::Ratelimit(cmd) => ratelimit::run(cmd).await,
            Command::Usage(cmd) => usage::usage(config, cmd).await,
            Command::Audit(cmd) => usage::audit(config, cmd).await,
            Command::Invoices(cmd) => invoices::run(config, cmd).await,
            Command::Pricing(cmd) => pricing::run(config, cmd).await,
            Command::Models(cmd) => models::run(config, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, serving: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if serving { "info" } else { "warn" };
    let directives = std::env::var("MEMHOST_LOG").unwrap_or_else(|_| default.to_string());
    // Plain `target=level` lists get the static filter: EnvFilter, needed
    // only for span and field directives, takes a lock on every span enter
    // and exit, which every request's span pays on every poll.
    let filter: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> =
        match directives.parse::<tracing_subscriber::filter::Targets>() {
            Ok(targets) if !directives.contains(['[', '{']) => Box::new(targets),
            _ => Box::new(EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(default))),
        };
    // Colours only on a terminal; a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
}
