//! Rate-limit decision latency, in process and over Redis.
//!
//!     cargo bench -p memhost --bench limits
//!
//! Needs Redis on 127.0.0.1:6379 (or `REDIS_URL`) for the Redis rows.
//!
//! - `store/*`: the counter store alone deciding the five rules of a tier
//!   (per-minute sliding window, per-day fixed window, concurrency,
//!   per-IP sliding window, global token bucket), then releasing the lease.
//! - `admit/*`: the whole decision a request pays in the middleware: the
//!   cached plugin answer looked up, counter keys built, the store called,
//!   headers chosen, the lease released when the admission is dropped.
//! - `redis/ping`: one PING on the same kind of connection, the floor for
//!   anything that talks to Redis.
//!
//! Every row times single calls and prints p50 / p90 / p99 (criterion
//! reports means of batches, which hide the tail).

use std::time::{Duration, Instant};

use memhost::auth::{Environment, Principal, Scope};
use memhost::limits::algorithm::{Algorithm, Limit};
use memhost::limits::store::{CounterRule, LocalStore, RedisStore, SystemClock};
use memhost::limits::{LimitService, LimitsConfig, RequestFacts};
use memhost::plugins::kind::RateLimitFailure;
use memhost::plugins::{ActivateRequest, PluginKind, PluginService, PluginsConfig};

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_nanos() as f64 / 1000.0;
    println!(
        "{name:<22} n {:>6}   p50 {:>8.2} µs   p90 {:>8.2} µs   p99 {:>8.2} µs",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99)
    );
}

/// Times `n` single calls after `n / 10` warm-up calls.
async fn time<F, Fut>(n: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f().await;
        samples.push(start.elapsed());
    }
    samples
}

/// A tier's rules with limits no bench reaches (every call is admitted and
/// does the full work of an admitted request).
fn tier_rules(org: &str) -> Vec<CounterRule> {
    let rule = |key: String, algorithm, limit, window_us, burst| CounterRule {
        key,
        limit: Limit { algorithm, limit, window_us, burst },
        cost: 1,
    };
    vec![
        rule(format!("o:{org}:live:per-minute"), Algorithm::SlidingWindow, u32::MAX as u64, 60_000_000, 0),
        rule(format!("o:{org}:live:per-day"), Algorithm::FixedWindow, u32::MAX as u64, 86_400_000_000, 0),
        rule(format!("o:{org}:live:concurrent"), Algorithm::Concurrency, 1_000, 60_000_000, 0),
        rule("ip:127.0.0.1:per-ip".into(), Algorithm::SlidingWindow, u32::MAX as u64, 60_000_000, 0),
        rule("g:global".into(), Algorithm::TokenBucket, 1_000_000_000, 1_000_000, 1_000_000_000),
    ]
}

fn principal(org: &str) -> Principal {
    Principal {
        org_id: org.into(),
        plan: "enterprise".into(),
        operator: false,
        key_id: "key_bench".into(),
        scopes: vec![Scope::Read, Scope::Write],
        environment: Environment::Live,
        overrides: r#"{"rate_limits": {"requests_per_minute": 4000000000, "requests_per_day": 4000000000, "concurrent": 1000}}"#.into(),
    }
}

async fn limit_service(dir: &std::path::Path, redis_url: Option<&str>, prefix: &str) -> LimitService {
    let config = memhost::config::Config { data_dir: dir.join("data"), ..Default::default() };
    let db = memhost::store::Database::connect(&config.store()).await.expect("database");
    let plugins = PluginService::start(
        db.clone(),
        PluginsConfig::default(),
        dir.join("cache"),
        memhost::providers::Providers::offline(),
    )
    .await
    .expect("plugins");
    // The default tiers, with a global limit the bench does not reach (it
    // decides far more than 50 000 requests a second).
    let mut tiers: serde_json::Value =
        serde_yaml_ng::from_str(include_str!("../../policies/rate-limits.yaml")).expect("policy parses");
    tiers["global"]["requests_per_second"] = 4_000_000_000u64.into();
    let active = plugins.active(PluginKind::RateLimit, None, None).expect("a rate-limit plugin is active");
    let request = ActivateRequest { config: Some(tiers), ..Default::default() };
    plugins.activate(&active.plugin.record.id, request, "bench").await.expect("activates");
    let limits = LimitsConfig { redis_prefix: prefix.into(), ..Default::default() };
    LimitService::start(limits, RateLimitFailure::FailOpen, redis_url, plugins).await.expect("limits")
}

async fn admit_once(service: &LimitService, principal: &Principal) {
    let facts = RequestFacts {
        principal,
        method: "GET",
        route: "/v1/memories/{id}",
        client_ip: Some("127.0.0.1".parse().unwrap()),
    };
    let admission = service.admit(&facts).await.expect("admitted");
    std::hint::black_box(&admission.headers);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("memhost:bench:{}:", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let principal = principal("org_bench");

        let local = LocalStore::new(Box::new(SystemClock));
        let rules = tier_rules("org_bench");
        let lease_keys = vec![rules[2].key.clone()];
        report(
            "store/in-process",
            time(200_000, || async {
                std::hint::black_box(local.decide(&rules, "lease"));
                local.release(&lease_keys, "lease");
            })
            .await,
        );

        let service = limit_service(dir.path(), None, &prefix).await;
        report("admit/in-process", time(200_000, || admit_once(&service, &principal)).await);

        let redis = match RedisStore::connect(&redis_url, &prefix, Duration::from_millis(250)).await {
            Ok(r) => r,
            Err(e) => {
                println!("redis rows skipped: {e}");
                return;
            }
        };
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        report(
            "redis/ping",
            time(20_000, || {
                let mut conn = conn.clone();
                async move {
                    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                }
            })
            .await,
        );
        report(
            "store/redis",
            time(20_000, || async {
                std::hint::black_box(redis.decide(&rules, "lease").await.unwrap());
            })
            .await,
        );
        report(
            "store/redis+release",
            time(20_000, || async {
                std::hint::black_box(redis.decide(&rules, "lease").await.unwrap());
                redis.release(&lease_keys, "lease").await.unwrap();
            })
            .await,
        );
        let dir2 = tempfile::tempdir().unwrap();
        let service = limit_service(dir2.path(), Some(&redis_url), &prefix).await;
        report("admit/redis", time(20_000, || admit_once(&service, &principal)).await);

        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
        }
    });
}
