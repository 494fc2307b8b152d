//! Durable usage-event ingest: N concurrent writers hand events to the
//! metering writer (the same `UsageMeter` the server uses, in process, no
//! HTTP) and each waits until its event is committed, for a fixed time.
//! Prints events/s and the wait per event (p50, p99). `--max-batch 1` writes
//! one transaction per event: the baseline without group commit.
//!
//! cargo run --release --example bench_ingest -- [sqlite|postgres] [writers] [seconds] [max_batch]
//!
//! PostgreSQL: a fresh database on `MEMHOST_TEST_PG` (default
//! postgres://postgres@127.0.0.1:5432), dropped afterwards.

use std::time::{Duration, Instant};

use memhost::audit::Actor;
use memhost::auth::{AuthService, Environment};
use memhost::metering::meter::PolicySource;
use memhost::metering::writer::Submission;
use memhost::metering::{EventFacts, RequestUsage, UsageEvent, UsageMeter};
use memhost::store::{Database, StoreConfig};
use memhost::supervisor::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map_or("sqlite", String::as_str).to_string();
    let writers: usize = args.get(1).map_or(Ok(64), |a| a.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(10), |a| a.parse())?;
    let max_batch: usize = args.get(3).map_or(Ok(1000), |a| a.parse())?;

    let dir = tempfile::tempdir()?;
    let admin = std::env::var("MEMHOST_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let pg_name = format!("memhost_bench_ingest_{}", std::process::id());
    let url = if backend == "postgres" {
        admin_sql(&admin, &format!("CREATE DATABASE {pg_name}")).await?;
        Some(format!("{admin}/{pg_name}"))
    } else {
        None
    };
    let db =
        Database::connect(&StoreConfig { database_url: url.as_deref(), data_dir: dir.path(), max_connections: 16 })
            .await?;
    let auth = AuthService::new(db.clone(), vec![7; 32], Duration::ZERO);
    let org = auth.create_org("Bench", "starter", false, &Actor::system()).await?.id;
    let meter = UsageMeter::new(db.clone(), PolicySource::Bundled)?;
    meter.set_max_batch(max_batch);
    let writer = tokio::spawn(meter.clone().writer_loop(Shutdown::never()));

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (meter, org) = (meter.clone(), org.clone());
            tokio::spawn(async move {
                let mut waits = Vec::new();
                let usage = RequestUsage::default();
                usage.add_tokens(12);
                usage.add_read(1);
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let request_id = format!("req_bench_{w}_{i}");
                    i += 1;
                    let event = UsageEvent::new(
                        EventFacts {
                            org_id: &org,
                            environment: Environment::Live,
                            key_id: "key_bench",
                            method: "GET",
                            route: "/v1/memories/{id}",
                            status: 200,
                            billable: true,
                            request_id: &request_id,
                            processing_us: 250,
                            tags: Default::default(),
                        },
                        &usage,
                    );
                    let started = Instant::now();
                    meter
                        .submit(Submission { event, ip: Some("127.0.0.1".into()), user_agent: None, completion: None })
                        .await
                        .expect("written");
                    waits.push(started.elapsed());
                }
                waits
            })
        })
        .collect();
    let started = Instant::now();
    let mut waits = Vec::new();
    for t in tasks {
        waits.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    waits.sort();
    let pct = |p: f64| waits[((waits.len() as f64 * p) as usize).min(waits.len() - 1)].as_secs_f64() * 1000.0;
    let stats = meter.stats();
    println!(
        "backend={backend} writers={writers} max_batch={max_batch} events={} seconds={elapsed:.1} events_per_s={:.0} \
         wait_p50_ms={:.2} wait_p99_ms={:.2} batches={} mean_batch={:.1} mean_commit_ms={:.2}",
        waits.len(),
        waits.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        stats.batches,
        stats.events as f64 / stats.batches.max(1) as f64,
        stats.mean_commit_ms,
    );
    writer.abort();
    db.close().await;
    if url.is_some() {
        admin_sql(&admin, &format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)")).await?;
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
