//! `memhost plugin …`: the plugin author's loop (new → build → check → run)
//! locally, with the same sandbox and checks as the server, and the operator's
//! (upload → list → activate → rollback) against a running server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::billing::simulate::SimulateRequest;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::admin::{Output, table};
use crate::config::Config;
use crate::plugins::build_plan;
use crate::plugins::calls::{self, CallInput};
use crate::plugins::host_calls::{HostCalls, HttpGate};
use crate::plugins::validate;
use crate::plugins::{LimitOverrides, PluginKind, Runtime};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a plugin project that builds as is (WIT vendored; for Rust
    /// the SDK; for Python and JS the pinned toolchain).
    New {
        /// pricing, rate-limit, alert-channel or extractor.
        kind: String,
        /// Crate and plugin name (a-z, 0-9, `-`).
        name: String,
        /// rust, python or js.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Where to create it (default: ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the plugin crate in a directory (default: here) for
    /// wasm32-wasip2, small; in memhost's own `plugins/`, build them all.
    Build {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Validate a .wasm as the server would on upload, without a server.
    Check {
        file: PathBuf,
        /// The kind it must be (default: inferred from its world).
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        out: Output,
    },
    /// Run a .wasm on an input as the host would: output, fuel, memory, time.
    Run {
        file: PathBuf,
        /// JSON call, e.g. {"function": "rate", "plan": "starter", "usage": {…}}.
        #[arg(long)]
        input: PathBuf,
        /// The plugin's config (JSON or YAML file; default `{}`). Not
        /// `--config`, which is memhost's own configuration file.
        #[arg(long)]
        plugin_config: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Run a .wasm on every golden fixture in a directory and compare
    /// (`{"input": call, "expect": {"ok": …} or {"error": {"code": …}}, "config"?: …}`).
    /// `plugin test DIR` in a plugin project: its built .wasm, its `fixtures/`
    /// and its `config.example.json`.
    Test {
        /// The .wasm, or a plugin project directory (default: here).
        #[arg(default_value = ".")]
        file: PathBuf,
        /// The fixtures directory (default: the project's `fixtures/`).
        fixtures: Option<PathBuf>,
        /// The config for fixtures without their own (JSON or YAML file).
        #[arg(long)]
        plugin_config: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Price recorded periods with a candidate pricing plugin (stored in
    /// the registry, not activated) and compare per org with what was
    /// invoiced; on the same database as the server.
    Simulate {
        file: PathBuf,
        /// Periods, `YYYY-MM,YYYY-MM`.
        #[arg(long, value_delimiter = ',', required = true)]
        periods: Vec<String>,
        /// Only these orgs (comma-separated).
        #[arg(long, value_delimiter = ',')]
        orgs: Vec<String>,
        /// The candidate's config (JSON or YAML); default: the active pricing config.
        #[arg(long)]
        plugin_config: Option<PathBuf>,
        /// Orgs listed at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        out: Output,
    },
    /// Upload a .wasm to a running server.
    Upload {
        file: PathBuf,
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        out: Output,
    },
    /// List the plugins on a running server.
    List {
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        out: Output,
    },
    /// Activate a plugin on a running server.
    Activate {
        /// Plugin id or unique prefix (8+ characters).
        id: String,
        /// global (default), plan:<plan>, org:<org id> or canary.
        #[arg(long)]
        target: Option<String>,
        /// For `--target canary`: share of orgs, 1–100.
        #[arg(long)]
        canary_percent: Option<i32>,
        /// For `--target canary`: a Rhai routing rule over org, plan, env,
        /// bucket and hash(text), e.g. `plan == "starter" && bucket < 20`.
        #[arg(long)]
        rule: Option<String>,
        /// The plugin's config (JSON or YAML file); default: the replaced
        /// activation's.
        #[arg(long)]
        plugin_config: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        out: Output,
    },
    /// Roll a target back from this plugin to the version before it (or --to).
    Rollback {
        id: String,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        out: Output,
    },
    /// Fixtures from real traffic: the last calls a server made to a plugin.
    Fixtures {
        #[command(subcommand)]
        command: FixturesCommand,
    },
    /// Stop using a plugin for a target on a running server.
    Deactivate {
        id: String,
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Subcommand)]
pub enum FixturesCommand {
    /// Save the server's recorded calls of a plugin (redacted per kind) as
    /// fixtures, each expecting the answer the plugin gave; `plugin test`
    /// then runs them against a new build.
    Pull {
        /// Plugin id or unique prefix (8+ characters).
        id: String,
        /// Where to write them (default: ./fixtures).
        #[arg(long, default_value = "fixtures")]
        dir: PathBuf,
        /// At most this many, newest first.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Per-plugin limit overrides.
#[derive(Args, Clone, Copy, Default)]
pub struct LimitArgs {
    /// Fuel per call.
    #[arg(long)]
    fuel: Option<u64>,
    /// Wall-clock deadline per call, in ms.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Memory cap in bytes.
    #[arg(long)]
    memory_bytes: Option<u64>,
}

impl LimitArgs {
    fn overrides(self) -> LimitOverrides {
        LimitOverrides {
            fuel: self.fuel,
            deadline_ms: self.deadline_ms,
            memory_bytes: self.memory_bytes,
            ..Default::default()
        }
    }

    fn query(self) -> Vec<(&'static str, String)> {
        [("fuel", self.fuel), ("deadline_ms", self.deadline_ms), ("memory_bytes", self.memory_bytes)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v.to_string())))
            .collect()
    }
}

/// Which server, and the operator's admin key.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Server URL.
    #[arg(long, env = "MEMHOST_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An admin key of an operator org (prefer the environment variable:
    /// arguments are visible to other users of the machine).
    #[arg(long, env = "MEMHOST_API_KEY", hide_env_values = true)]
    key: String,
}

fn parse_kind(s: &str) -> anyhow::Result<PluginKind> {
    PluginKind::parse(s)
        .with_context(|| format!("unknown plugin kind `{s}`; expected pricing, rate-limit, alert-channel or extractor"))
}

pub async fn run(config: Config, cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::New { kind, name, lang, dir } => {
            let kind = parse_kind(&kind)?;
            let lang = super::project::Lang::parse(&lang)?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let files = super::scaffold::create(kind, &name, lang, &dir)?;
            println!("created {} ({} files): a {kind} plugin in {lang:?}", dir.display(), files.len());
            println!("next: cd {} && memhost plugin build", dir.display());
            Ok(())
        }
        PluginCommand::Build { dir } => build(&dir),
        PluginCommand::Check { file, kind, limits, out } => check(&config, &file, kind, limits, out).await,
        PluginCommand::Run { file, input, plugin_config, limits } => {
            run_local(&config, &file, &input, plugin_config.as_deref(), limits).await
        }
        PluginCommand::Test { file, fixtures, plugin_config, limits } => {
            let (file, fixtures, plugin_config) = if file.is_dir() {
                let project = super::project::Project::open(&file)?;
                let config = plugin_config.or_else(|| project.example_config());
                (project.artifact(), fixtures.unwrap_or_else(|| file.join("fixtures")), config)
            } else {
                let fixtures = fixtures.context("give the fixtures directory after the .wasm file")?;
                (file, fixtures, plugin_config)
            };
            test_local(&config, &file, &fixtures, plugin_config.as_deref(), limits).await
        }
        PluginCommand::Simulate { file, periods, orgs, plugin_config, limit, out } => {
            let wasm = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let candidate_config = plugin_config.as_deref().map(read_config).transpose()?;
            let request = SimulateRequest {
                periods,
                orgs: (!orgs.is_empty()).then_some(orgs),
                config: candidate_config,
                limit: Some(limit),
            };
            super::pricing::simulate(&config, &wasm, request, out).await
        }
        PluginCommand::Upload { file, kind, limits, server, out } => {
            let wasm = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut query = limits.query();
            if let Some(k) = kind {
                query.push(("kind", parse_kind(&k)?.as_str().to_string()));
            }
            // A short wait, then polling with a spinner: a Python or JS
            // guest compiles for seconds, and that should not look like a hang.
            query.push(("wait", "2".to_string()));
            let request = client()?
                .post(format!(
                    "{}/admin/plugins?{}",
                    server.server.trim_end_matches('/'),
                    serde_urlencoded::to_string(&query)?
                ))
                .bearer_auth(&server.key)
                .header("content-type", "application/wasm")
                .body(wasm);
            let data = wait_until_stored(&server, send(request).await?).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                let verb = if data["created"] == true { "uploaded" } else { "already stored" };
                println!(
                    "{verb}: {} {} ({})",
                    data["name"].as_str().unwrap_or("?"),
                    data["version"].as_str().unwrap_or("?"),
                    data["kind"].as_str().unwrap_or("?")
                );
                println!("id: {}", data["id"].as_str().unwrap_or("?"));
                println!(
                    "activate: memhost plugin activate {}",
                    &data["id"].as_str().unwrap_or("?")[..12.min(data["id"].as_str().unwrap_or("").len())]
                );
            }
            Ok(())
        }
        PluginCommand::List { kind, server, out } => {
            let mut request = client()?
                .get(format!("{}/admin/plugins", server.server.trim_end_matches('/')))
                .bearer_auth(&server.key);
            if let Some(k) = kind {
                let query = serde_urlencoded::to_string([("kind", parse_kind(&k)?.as_str())])?;
                request = client()?
                    .get(format!("{}/admin/plugins?{query}", server.server.trim_end_matches('/')))
                    .bearer_auth(&server.key);
            }
            let data = send(request).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&data["plugins"])?);
                return Ok(());
            }
            let mut t = table(["id", "kind", "name", "version", "wit", "status", "active for", "uploaded"]);
            for p in data["plugins"].as_array().into_iter().flatten() {
                let targets: Vec<&str> =
                    p["active_targets"].as_array().into_iter().flatten().filter_map(|a| a["target"].as_str()).collect();
                t.add_row([
                    p["id"].as_str().unwrap_or("").chars().take(12).collect::<String>(),
                    p["kind"].as_str().unwrap_or("").into(),
                    p["name"].as_str().unwrap_or("").into(),
                    p["version"].as_str().unwrap_or("").into(),
                    p["wit_version"].as_str().unwrap_or("").into(),
                    p["status"].as_str().unwrap_or("").into(),
                    targets.join(", "),
                    p["uploaded_at"].as_str().unwrap_or("").chars().take(19).collect::<String>(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        PluginCommand::Activate { id, target, canary_percent, rule, plugin_config, server, out } => {
            let mut body = json!({});
            if let Some(t) = target {
                body["target"] = json!(t);
            }
            if let Some(p) = canary_percent {
                body["canary_percent"] = json!(p);
            }
            if let Some(r) = rule {
                body["rule"] = json!(r);
            }
            if let Some(path) = plugin_config {
                body["config"] = read_config(&path)?;
            }
            let data = post(&server, &format!("/admin/plugins/{id}/activate"), body).await?;
            print_activation(&data, out, "activated")
        }
        PluginCommand::Rollback { id, target, to, server, out } => {
            let body = json!({ "target": target, "to": to });
            let data = post(&server, &format!("/admin/plugins/{id}/rollback"), strip_nulls(body)).await?;
            print_activation(&data, out, "rolled back to")
        }
        PluginCommand::Fixtures { command: FixturesCommand::Pull { id, dir, limit, server } } => {
            pull_fixtures(&id, &dir, limit, &server).await
        }
        PluginCommand::Deactivate { id, target, server, out } => {
            let body = json!({ "target": target });
            let data = post(&server, &format!("/admin/plugins/{id}/deactivate"), strip_nulls(body)).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                println!(
                    "deactivated {} ({}); now {}",
                    data["name"].as_str().unwrap_or("?"),
                    short_id(&data),
                    data["status"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
    }
}

/// Writes each recorded call as `recorded-<when>-<function>.json`, never
/// over an existing file.
async fn pull_fixtures(id: &str, dir: &Path, limit: Option<usize>, server: &ServerArgs) -> anyhow::Result<()> {
    let request = client()?
        .get(format!("{}/admin/plugins/{id}/calls", server.server.trim_end_matches('/')))
        .bearer_auth(&server.key);
    let data = send(request).await?;
    let calls = data["calls"].as_array().cloned().unwrap_or_default();
    if calls.is_empty() {
        println!(
            "no recorded calls for {id} on this server yet (it keeps the last `plugins.recorded_calls` per plugin since it started)"
        );
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    for call in calls.iter().take(limit.unwrap_or(usize::MAX)) {
        let function = call["input"]["function"].as_str().unwrap_or("call");
        let at = call["at"].as_str().unwrap_or("");
        let stamp: String = at.chars().filter(char::is_ascii_digit).take(17).collect();
        let mut path = dir.join(format!("recorded-{stamp}-{function}.json"));
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = dir.join(format!("recorded-{stamp}-{function}-{n}.json"));
        }
        let redacted: Vec<&str> = call["redacted"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let mut description = format!("Recorded {at} ({}).", call["target"].as_str().unwrap_or("?"));
        if call["fallback"] == true {
            description.push_str(" The sandbox stopped this version; the previous one answered.");
        }
        if !redacted.is_empty() {
            description.push_str(&format!(" Redacted: {}.", redacted.join("; ")));
        }
        let mut fixture = json!({"description": description, "input": call["input"], "expect": call["expect"]});
        if let Some(config) = call.get("config").filter(|c| !c.is_null()) {
            fixture["config"] = config.clone();
        }
        std::fs::write(&path, serde_json::to_string_pretty(&fixture)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
        written += 1;
    }
    println!("{written} fixture(s) in {}; run them with `memhost plugin test`", dir.display());
    Ok(())
}

fn short_id(v: &Value) -> String {
    v["id"].as_str().or(v["plugin_id"].as_str()).unwrap_or("?").chars().take(12).collect()
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    v
}

fn print_activation(data: &Value, out: Output, verb: &str) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(data)?);
    } else {
        println!(
            "{verb} {} for `{}` (activation {})",
            data["plugin_id"].as_str().unwrap_or("?").chars().take(12).collect::<String>(),
            data["target"].as_str().unwrap_or("?"),
            data["id"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Follows an upload the server is still compiling (`state` `queued` or
/// `compiling`) until it is stored or refused, with a spinner on a terminal.
async fn wait_until_stored(server: &ServerArgs, mut data: Value) -> anyhow::Result<Value> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let spinner = ['|', '/', '-', '\\'];
    let mut tick = 0;
    while matches!(data["state"].as_str(), Some("queued" | "compiling")) {
        let id = data["id"].as_str().unwrap_or_default().to_string();
        for _ in 0..5 {
            if tty {
                let phase = data["state"].as_str().unwrap_or("?");
                eprint!(
                    "\r{} {phase} {} ({:.0} s)   ",
                    spinner[tick % 4],
                    &id[..12.min(id.len())],
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
            tick += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let request = client()?
            .get(format!("{}/admin/plugins/{id}", server.server.trim_end_matches('/')))
            .bearer_auth(&server.key);
        data = send(request).await?;
    }
    if tick > 0 {
        if tty {
            eprintln!();
        }
        if data["state"] == "ready" {
            // Stored by this upload's job (the poll answers the plugin itself).
            data["created"] = Value::Bool(true);
        }
    }
    if data["state"] == "refused" {
        let error = &data["error"];
        let mut message = format!(
            "{}: {}",
            error["code"].as_str().unwrap_or("REFUSED"),
            error["message"].as_str().unwrap_or("the upload was refused")
        );
        if let Some(details) = error.get("details").filter(|d| !d.is_null()) {
            message.push_str(&format!("\ndetails: {details}"));
        }
        bail!(message);
    }
    Ok(data)
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(std::time::Duration::from_secs(120)).build()?)
}

/// Sends an admin request; an error envelope becomes an error naming its code.
async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await.context("could not reach the server (is it running? see --server)")?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).with_context(|| format!("server answered {status}: {text}"))?;
    if body["success"] == true {
        return Ok(body["data"].clone());
    }
    let error = &body["error"];
    let mut message = format!(
        "{} {}: {}",
        status.as_u16(),
        error["code"].as_str().unwrap_or("ERROR"),
        error["message"].as_str().unwrap_or(&text)
    );
    if let Some(details) = error.get("details").filter(|d| !d.is_null()) {
        message.push_str(&format!("\ndetails: {details}"));
    }
    bail!(message)
}

async fn post(server: &ServerArgs, path: &str, body: Value) -> anyhow::Result<Value> {
    let request =
        client()?.post(format!("{}{path}", server.server.trim_end_matches('/'))).bearer_auth(&server.key).json(&body);
    send(request).await
}

/// A config file: JSON, or YAML (like the files in `policies/`).
pub(super) fn read_config(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .or_else(|_| serde_yaml_ng::from_str(&text))
        .with_context(|| format!("{} is neither JSON nor YAML", path.display()))
}

/// In memhost's `plugins/` workspace: every plugin, the host build's way.
/// Elsewhere: the crate in `dir`.
fn build(dir: &Path) -> anyhow::Result<()> {
    let is_memhost_plugins = dir.join("sdk/Cargo.toml").is_file() && dir.join("Cargo.toml").is_file();
    if !is_memhost_plugins {
        let artifact = super::project::Project::open(dir)?.build()?;
        let size = std::fs::metadata(&artifact).map(|m| m.len()).unwrap_or(0);
        println!("{:>9} bytes  {}", size, artifact.display());
        return Ok(());
    }
    build_plan::ensure_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = dir.join("../target/plugins");
    for mut cmd in build_plan::commands(&cargo, dir, &target_dir, false)? {
        let status = cmd.status().context("running cargo")?;
        if !status.success() {
            bail!("build failed: {cmd:?}");
        }
    }
    // Report what was built.
    let release = target_dir.join(build_plan::TARGET).join("release");
    let mut built: Vec<_> = std::fs::read_dir(&release)
        .map(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "wasm")).collect()
        })
        .unwrap_or_default();
    built.sort();
    for p in built {
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        println!("{:>9} bytes  {}", size, p.display());
    }
    Ok(())
}

async fn check(
    config: &Config,
    file: &Path,
    kind: Option<String>,
    limits: LimitArgs,
    out: Output,
) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let kind = kind.as_deref().map(parse_kind).transpose()?;
    let runtime = Runtime::new(config.plugins.clone())?;
    let overrides = limits.overrides();
    runtime.config().check_overrides(&overrides).map_err(anyhow::Error::msg)?;
    let digest: Arc<str> = hex::encode(Sha256::digest(&wasm)).into();
    let (v, limits) = match validate::validate_with_limits(&runtime, &wasm, kind, &overrides, &digest).await {
        Ok(v) => v,
        Err(e) => {
            let trap = e.trap().map(|t| format!(" ({t})")).unwrap_or_default();
            bail!("refused: {}{trap}: {e}", e.code());
        }
    };
    let report = json!({
        "ok": true,
        "id": &*digest,
        "kind": v.inspection.kind,
        "name": v.info.name,
        "version": v.info.version,
        "wit_version": v.inspection.wit_version,
        "sdk": v.inspection.sdk,
        "size_bytes": wasm.len(),
        "imports": v.inspection.imports,
        "limits": limits,
        "self_check": v.self_check,
    });
    if out.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let s = &v.self_check;
    println!("ok: {} {} is a valid {} plugin", v.info.name, v.info.version, v.inspection.kind);
    let mut t = table(["", ""]);
    t.add_row(["id".to_string(), digest.to_string()]);
    t.add_row(["WIT".to_string(), format!("memhost:plugin@{}", v.inspection.wit_version)]);
    t.add_row(["SDK".to_string(), v.inspection.sdk.clone().unwrap_or_else(|| "(not built with memhost-sdk)".into())]);
    t.add_row(["size".to_string(), format!("{} bytes", wasm.len())]);
    t.add_row(["imports".to_string(), v.inspection.imports.join("\n")]);
    t.add_row(["self-check fuel".to_string(), format!("{} of {}", s.fuel_used, s.fuel_limit)]);
    t.add_row(["self-check memory".to_string(), format!("{} of {} bytes", s.peak_memory_bytes, s.memory_limit_bytes)]);
    t.add_row(["self-check time".to_string(), format!("{} µs (deadline {} ms)", s.duration_us, limits.deadline_ms)]);
    println!("{t}");
    Ok(())
}

/// A plugin loaded locally the way the server loads it: same engine, same
/// validation, same limits, outbound HTTP only to allow-listed hosts.
struct LocalPlugin {
    runtime: Runtime,
    prepared: crate::plugins::wit::Prepared,
    limits: crate::plugins::kind::Limits,
    digest: Arc<str>,
    http: HttpGate,
}

impl LocalPlugin {
    fn load(config: &Config, file: &Path, kind: Option<PluginKind>, limits: LimitArgs) -> anyhow::Result<LocalPlugin> {
        let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let runtime = Runtime::new(config.plugins.clone())?;
        let overrides = limits.overrides();
        runtime.config().check_overrides(&overrides).map_err(anyhow::Error::msg)?;
        validate::check_header(&wasm, runtime.config().max_plugin_bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
        let component = wasmtime::component::Component::new(runtime.engine(), &wasm)
            .map_err(|e| anyhow::anyhow!("INVALID_COMPONENT: {e:#}"))?;
        let inspection = validate::inspect(runtime.engine(), &component, &wasm, kind)
            .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
        let version = inspection.wit.unwrap_or(crate::plugins::wit::WitVersion::NEWEST);
        let prepared =
            runtime.prepare(version, inspection.kind, &component).map_err(|e| anyhow::anyhow!("linking: {e:#}"))?;
        let limits = runtime.config().limits(inspection.kind).with(&overrides);
        let digest: Arc<str> = hex::encode(Sha256::digest(&wasm)).into();
        let http = HttpGate::new(config.plugins.http_allow_hosts.clone())?;
        Ok(LocalPlugin { runtime, prepared, limits, digest, http })
    }

    async fn call(&self, plugin_config: &Value, call: CallInput) -> Result<calls::CallReport, calls::RunError> {
        // As on the server: no LLM here.
        let host = HostCalls { http: Some(self.http.clone()), ..HostCalls::none() };
        let config = plugin_config.to_string();
        calls::run(&self.runtime, &self.prepared, &self.limits, &self.digest, &config, host, call).await
    }
}

async fn run_local(
    config: &Config,
    file: &Path,
    input: &Path,
    plugin_config: Option<&Path>,
    limits: LimitArgs,
) -> anyhow::Result<()> {
    let input_text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let call: CallInput = crate::api::extract::parse_json(input_text.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let plugin_config = match plugin_config {
        Some(p) => read_config(p)?,
        None => json!({}),
    };
    let plugin = LocalPlugin::load(config, file, call.kind(), limits)?;
    let report = plugin.call(&plugin_config, call).await;
    match report {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report.answer())?);
            let s = &report.stats;
            eprintln!(
                "function {}: fuel {} of {}, peak memory {} of {} bytes, {} µs, input {} B, output {} B",
                report.function,
                s.fuel_used,
                s.fuel_limit,
                s.peak_memory_bytes,
                s.memory_limit_bytes,
                s.duration_us,
                s.input_bytes,
                s.output_bytes
            );
            for line in &s.logs {
                eprintln!("plugin log [{}] {}", line.level, line.message);
            }
            if report.error.is_some() {
                bail!("the plugin returned an error");
            }
            Ok(())
        }
        Err(calls::RunError::Call(e)) => bail!("stopped: {} ({e})", e.code()),
        Err(e) => bail!("{e}"),
    }
}

/// `plugin test`: every golden fixture in a directory (`*.json`: `input`,
/// `expect` and, optionally, its own `config`), run as `plugin run` would,
/// and compared with what it expects. Prints one line per fixture.
async fn test_local(
    config: &Config,
    file: &Path,
    dir: &Path,
    plugin_config: Option<&Path>,
    limits: LimitArgs,
) -> anyhow::Result<()> {
    let default_config = match plugin_config {
        Some(p) => read_config(p)?,
        None => json!({}),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("no fixtures (*.json) in {}", dir.display());
    }
    let mut plugin = LocalPlugin::load(config, file, None, limits)?;
    // Fixtures are deterministic: an alert channel's outbound HTTP answers
    // 200 without leaving the machine, as in the upload self-check.
    plugin.http = HttpGate::dry_run();
    let mut failed = 0;
    let width = paths.iter().filter_map(|p| p.file_stem()).map(|s| s.len()).max().unwrap_or(0);
    for path in &paths {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let fixture = calls::Fixture::read(path)?;
        let started = std::time::Instant::now();
        let result = plugin.call(fixture.config.as_ref().unwrap_or(&default_config), fixture.input.clone()).await;
        // A sandbox stop is an answer too: `{"error": {"code": "out_of_fuel", …}}`
        // (the codes of `details.trap`), so a fixture can expect one.
        let (answer, cost) = match &result {
            Ok(report) => {
                let s = &report.stats;
                let cost = format!(
                    "fuel {:>11}  mem {:>9}  {:>8.3} ms",
                    s.fuel_used,
                    format!("{:.1} MiB", s.peak_memory_bytes as f64 / (1u64 << 20) as f64),
                    s.duration_us as f64 / 1000.0
                );
                (report.answer(), cost)
            }
            Err(calls::RunError::Call(e)) => (
                json!({"error": {"code": e.code(), "message": e.to_string(), "trap": true}}),
                format!("stopped after {:.3} ms", started.elapsed().as_secs_f64() * 1000.0),
            ),
            Err(e) => (json!({"error": {"code": "bad_input", "message": e.to_string()}}), String::new()),
        };
        match fixture.mismatch(&answer) {
            None => println!("ok    {name:<width$}  {cost}"),
            Some(why) => {
                failed += 1;
                println!("FAIL  {name:<width$}  {cost}");
                println!("      {why}");
                let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
                let actual = calls::project(&fixture.expect, &answer);
                for line in calls::line_diff(&pretty(&fixture.expect), &pretty(&actual)).lines() {
                    println!("      {line}");
                }
            }
        }
    }
    println!("{} fixtures: {} passed, {failed} failed", paths.len(), paths.len() - failed);
    if failed > 0 {
        bail!("{failed} fixture(s) failed");
    }
    Ok(())
}
