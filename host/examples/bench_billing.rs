//! Closing a period at scale: N orgs with 10 metered metrics each (1 000
//! included per metric, usage spread over 0–5 000, so most pay overage on
//! several charge models). Times, in one run on a fresh database:
//!
//! 1. reading the period's usage alone: every org's rating input (the
//!    baseline: what any invoicing must read);
//! 2. finalizing the period: rating each org with the built-in pricing
//!    plugin and writing its invoice, credits and events;
//! 3. simulating a candidate config over the finalized period.
//!
//! cargo run --release --example bench_billing -- [sqlite|postgres] [orgs]
//!
//! PostgreSQL: a fresh database on `MEMHOST_TEST_PG` (default
//! postgres://postgres@127.0.0.1:5432), dropped afterwards.

use std::time::{Duration, Instant};

use memhost::audit::Actor;
use memhost::auth::Environment;
use memhost::billing::BillingService;
use memhost::billing::context::{self, BilledOrg, BillingPeriod};
use memhost::billing::simulate::SimulateRequest;
use memhost::metering::UsageMeter;
use memhost::metering::meter::PolicySource;
use memhost::plugins::{ActivateRequest, PluginKind, PluginService, PluginsConfig};
use memhost::providers::Providers;
use memhost::store::{Database, StoreConfig};
use serde_json::{Value, json};

const PERIOD: &str = "2026-11";
const METRICS: usize = 10;

fn pricing_config(base: f64) -> Value {
    let mut config: Value =
        serde_yaml_ng::from_str(include_str!("../../policies/pricing.yaml")).expect("the bundled pricing.yaml");
    let starter = &mut config["plans"]["starter"];
    starter["base_price"] = json!(base);
    let mut limits = serde_json::Map::new();
    let mut overage = serde_json::Map::new();
    for m in 0..METRICS {
        limits.insert(format!("m{m}"), json!(1000));
        // Every other metric on graduated tiers, the rest per unit.
        let charge = if m % 2 == 0 {
            json!({"model": "graduated", "tiers": [
                {"up_to": 1000, "price": 0.01, "per": 1}, {"up_to": 3000, "price": 0.008, "per": 1},
                {"price": 0.005, "per": 1}]})
        } else {
            json!({"price": 0.50, "per": 1000})
        };
        overage.insert(format!("m{m}"), charge);
    }
    starter["limits"] = Value::Object(limits);
    starter["overage"] = Value::Object(overage);
    config
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map_or("sqlite", String::as_str).to_string();
    let orgs: usize = args.get(1).map_or(Ok(100_000), |a| a.parse())?;

    let dir = tempfile::tempdir()?;
    let admin = std::env::var("MEMHOST_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let pg_name = format!("memhost_bench_billing_{}", std::process::id());
    let url = if backend == "postgres" {
        admin_sql(&admin, &format!("CREATE DATABASE {pg_name}")).await?;
        Some(format!("{admin}/{pg_name}"))
    } else {
        None
    };
    let result = run(&backend, url.as_deref(), dir.path(), orgs).await;
    if url.is_some() {
        admin_sql(&admin, &format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)")).await?;
    }
    result
}

async fn run(backend: &str, url: Option<&str>, dir: &std::path::Path, orgs: usize) -> anyhow::Result<()> {
    let db = Database::connect(&StoreConfig { database_url: url, data_dir: dir, max_connections: 16 }).await?;
    let t = Instant::now();
    seed(&db, url, dir, orgs).await?;
    println!("{backend}: seeded {orgs} orgs × {METRICS} metrics in {:.1} s", t.elapsed().as_secs_f64());

    let plugins =
        PluginService::start(db.clone(), PluginsConfig::default(), dir.join("plugin-cache"), Providers::offline())
            .await?;
    let tiered = plugins.list(Some(PluginKind::Pricing)).await?.into_iter().find(|p| p.plugin.name == "pricing-tiered");
    let tiered = tiered.expect("the built-in pricing plugin").plugin.id;
    let request = ActivateRequest { config: Some(pricing_config(49.0)), ..Default::default() };
    plugins.activate(&tiered, request, "bench").await?;
    let meter = UsageMeter::new(db.clone(), PolicySource::Bundled)?;
    let billing = BillingService::new(plugins, meter.clone());

    // 1. Reading the usage alone.
    let period = BillingPeriod::parse(PERIOD).expect("a period");
    let all: Vec<BilledOrg> = (0..orgs)
        .map(|i| BilledOrg { id: format!("org_b{i:06}"), plan: "starter".into(), overrides: "{}".into() })
        .collect();
    let t = Instant::now();
    let mut units = 0u64;
    for chunk in all.chunks(500) {
        for ctx in context::load(&db, &meter.policy(), chunk, Environment::Live, &period).await? {
            units += ctx.usage.values().sum::<u64>();
        }
    }
    let read = t.elapsed();
    println!("{backend}: read usage of {orgs} orgs ({units} units): {:.1} s", read.as_secs_f64());

    // 2. Finalizing.
    let t = Instant::now();
    let report = billing.finalize(PERIOD, None, &Actor::system(), &|_, _| {}).await?;
    let finalize = t.elapsed();
    anyhow::ensure!(report.created == orgs && report.failed.is_empty(), "finalize: {:?}", report.failed.first());
    println!(
        "{backend}: finalized {} invoices (total {} USD micro-units): {:.1} s",
        report.created,
        report.totals_micros.get("USD").copied().unwrap_or(0),
        finalize.as_secs_f64()
    );

    // 3. Simulating a candidate (starter's base 49 → 59) over it.
    let t = Instant::now();
    let request = SimulateRequest {
        periods: vec![PERIOD.into()],
        orgs: None,
        config: Some(pricing_config(59.0)),
        limit: Some(10),
    };
    let sim = billing.simulate(&tiered, request, &|_, _| {}).await?;
    let simulate = t.elapsed();
    anyhow::ensure!(sim.summary.up == orgs, "every org should pay 10 more: {:?}", sim.summary);
    println!(
        "{backend}: simulated a candidate over {} invoices ({} up, revenue delta {} USD micro-units): {:.1} s",
        sim.summary.priced,
        sim.summary.up,
        sim.summary.revenue_delta_micros.get("USD").copied().unwrap_or(0),
        simulate.as_secs_f64()
    );
    let per = |d: Duration| d.as_secs_f64() * 1e6 / orgs as f64;
    println!(
        "{backend}: per org: read {:.0} µs, finalize {:.0} µs, simulate {:.0} µs",
        per(read),
        per(finalize),
        per(simulate)
    );
    Ok(())
}

/// Orgs (created before the period) and their counters, by set-based SQL.
async fn seed(db: &Database, url: Option<&str>, dir: &std::path::Path, orgs: usize) -> anyhow::Result<()> {
    use sqlx::Connection;
    let last = orgs.saturating_sub(1);
    let quantity = "((i * 7919 + m * 104729) % 5000)";
    match url {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            for statement in [
                format!(
                    "INSERT INTO orgs (id, name, plan, created_at) SELECT 'org_b' || lpad(i::text, 6, '0'), 'Bench', \
                     'starter', '2026-10-01T00:00:00Z' FROM generate_series(0, {last}) i"
                ),
                "INSERT INTO plan_changes (org_id, effective_at, plan) SELECT id, created_at, plan FROM orgs".into(),
                format!(
                    "INSERT INTO usage_counters (org_id, environment, period, metric, quantity) \
                     SELECT 'org_b' || lpad(i::text, 6, '0'), 'live', '{PERIOD}', 'm' || m, {quantity} \
                     FROM generate_series(0, {last}) i, generate_series(0, {}) m",
                    METRICS - 1
                ),
                "ANALYZE".into(),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut c).await?;
            }
            c.close().await?;
        }
        None => {
            let _ = db;
            let path = dir.join("memhost.db");
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
            let numbers = format!("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})");
            for statement in [
                format!(
                    "{numbers} INSERT INTO orgs (id, name, plan, created_at) SELECT 'org_b' || printf('%06d', i), \
                     'Bench', 'starter', '2026-10-01T00:00:00.000000Z' FROM n"
                ),
                "INSERT INTO plan_changes (org_id, effective_at, plan) SELECT id, created_at, plan FROM orgs".into(),
                format!(
                    "{numbers}, k(m) AS (SELECT 0 UNION ALL SELECT m + 1 FROM k WHERE m < {}) \
                     INSERT INTO usage_counters (org_id, environment, period, metric, quantity) \
                     SELECT 'org_b' || printf('%06d', i), 'live', '{PERIOD}', 'm' || m, {quantity} FROM n, k",
                    METRICS - 1
                ),
                "ANALYZE".into(),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut c).await?;
            }
            c.close().await?;
        }
    }
    Ok(())
}

async fn admin_sql(admin: &str, statement: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&format!("{admin}/postgres")).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string())).execute(&mut c).await?;
    c.close().await?;
    Ok(())
}
