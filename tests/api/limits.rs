//! Rate limits and quotas, seen from outside: headers, 429 and 402
//! envelopes, limits in the account, three instances sharing Redis, Redis
//! going away and coming back, and swapping the rate-limit plugin under
//! traffic.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Timelike;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Backend, Resp, TestServer, UNLIMITED, env_refs, hot_swap, plugin_wasm};
use crate::fake_llm;

both_backends!(headers_count_down_and_429_says_when, quota_without_overage_is_402);

const REDIS: &str = "redis://127.0.0.1:6379";

fn header(r: &Resp, name: &str) -> Option<u64> {
    r.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// A Redis key prefix no other test run uses.
fn redis_prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("memhost:test:{}:{nanos:x}:", std::process::id())
}

fn rule<'a>(limits: &'a Value, name: &str) -> &'a Value {
    limits["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("rule {name} in {limits}"))
}

fn quota<'a>(limits: &'a Value, metric: &str) -> &'a Value {
    limits["quotas"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["metric"] == metric))
        .unwrap_or_else(|| panic!("quota {metric} in {limits}"))
}

async fn headers_count_down_and_429_says_when(backend: Backend) {
    let s = TestServer::start(backend).await;
    let org = s.create_org("free");
    let key = s.create_key(&org, "read,write,delete,admin", false);

    let health = s.call(Method::GET, "/health", None, None).await;
    assert!(health.headers.get("ratelimit-limit").is_none(), "health checks are not limited");

    // The account shows the free tier (seed 000 §2.2) with what is left,
    // counting this very request.
    let account = s.get("/v1/account", &key).await;
    let limits = account.assert_ok(200)["limits"].clone();
    assert_eq!(limits["enabled"], true);
    assert_eq!(limits["store"], "in-process");
    let minute = rule(&limits, "per-minute");
    assert_eq!((minute["limit"].as_u64(), minute["remaining"].as_u64()), (Some(10), Some(9)), "{limits}");
    assert_eq!(minute["algorithm"], "sliding-window");
    let day = rule(&limits, "per-day");
    assert_eq!((day["limit"].as_u64(), day["remaining"].as_u64()), (Some(100), Some(99)), "{limits}");
    assert_eq!(rule(&limits, "concurrent")["limit"], 2);
    assert_eq!(rule(&limits, "per-ip")["limit"], 600);
    assert_eq!(rule(&limits, "global")["scope"], "global");
    let calls = quota(&limits, "api_calls");
    assert_eq!((calls["included"].as_u64(), calls["overage_allowed"].as_bool()), (Some(100), Some(false)));
    assert_eq!(account.headers["ratelimit-limit"], "10");
    assert_eq!(account.headers["ratelimit-remaining"], "9");

    for remaining in (0..9).rev() {
        let r = s.get("/v1/memories", &key).await;
        r.assert_ok(200);
        assert_eq!(header(&r, "ratelimit-limit"), Some(10));
        assert_eq!(header(&r, "ratelimit-remaining"), Some(remaining));
        assert!(header(&r, "ratelimit-reset").is_some_and(|s| (1..=60).contains(&s)), "{:?}", r.headers);
    }

    let refused = s.get("/v1/memories", &key).await;
    refused.assert_error(429, "RATE_LIMIT_EXCEEDED");
    let details = &refused.body["error"]["details"];
    assert_eq!(details["limit"], 10);
    assert_eq!(details["window"], "1m");
    assert_eq!(details["rule"], "per-minute");
    let retry_after = details["retry_after"].as_u64().unwrap();
    assert!((1..=60).contains(&retry_after), "{details}");
    assert_eq!(header(&refused, "retry-after"), Some(retry_after));
    assert_eq!(header(&refused, "ratelimit-remaining"), Some(0));
    // Refused requests are neither counted nor billed: still 10 and 0 used.
    let refused_again = s.post("/v1/memories", &key, json!({"text": "not stored"})).await;
    refused_again.assert_error(429, "RATE_LIMIT_EXCEEDED");

    // Counters are per org: another org is not affected.
    let other = s.create_org("free");
    let other_key = s.create_key(&other, "read", false);
    s.get("/v1/memories", &other_key).await.assert_ok(200);

    // Bad keys are still 401, not counted against anyone.
    s.get("/v1/memories", "mem_live_00000000000000000000000000000000").await.assert_error(401, "INVALID_API_KEY");

    // The CLI asks the server (seed 001 `ratelimit info`).
    let out = s.cli(&["ratelimit", "info", &other_key, "--server", &s.base]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["per-minute", "per-day", "concurrent", "api_calls", "refused (402)", "in-process"] {
        assert!(text.contains(needle), "`{needle}` in:\n{text}");
    }
    let json = s.cli_json(&["ratelimit", "info", &other_key, "--server", &s.base]);
    assert_eq!(rule(&json, "per-minute")["remaining"], 7, "{json}");
}

async fn quota_without_overage_is_402(backend: Backend) {
    let s = TestServer::start(backend).await;
    // Free plan quotas (100 API calls a month, no overage) with the rate
    // limits out of the way.
    let org = s.create_org_with("free", UNLIMITED, false);
    let key = s.create_key(&org, "read,write", false);
    s.add(&key, "the one memory", json!({})).await;
    for _ in 1..100 {
        s.get("/v1/memories", &key).await.assert_ok(200);
    }
    let refused = s.get("/v1/memories", &key).await;
    if refused.status != 402 {
        panic!("not refused; limits: {}", s.get("/v1/account/limits", &key).await.body);
    }
    refused.assert_error(402, "QUOTA_EXCEEDED");
    let details = &refused.body["error"]["details"];
    assert_eq!((details["metric"].as_str(), details["limit"].as_u64()), (Some("api_calls"), Some(100)));
    assert_eq!(details["used"], 100);
    // Checked before any work: nothing is stored.
    s.post("/v1/memories", &key, json!({"text": "over quota"})).await.assert_error(402, "QUOTA_EXCEEDED");

    // The account stays readable (and unbilled) so the customer can see why.
    let limits = s.get("/v1/account/limits", &key).await.assert_ok(200).clone();
    let calls = quota(&limits, "api_calls");
    assert_eq!((calls["used"].as_u64(), calls["remaining"].as_u64()), (Some(100), Some(0)), "{limits}");
    assert_eq!(calls["overage"], 0);
    let tokens = quota(&limits, "tokens_processed");
    assert!(tokens["used"].as_u64().unwrap() > 0, "storing a memory processed tokens: {limits}");

    // Upgrading the plan lifts the refusal at once.
    s.cli_ok(&["orgs", "set", &org, "--plan", "starter"]);
    let start = Instant::now();
    loop {
        let r = s.get("/v1/memories", &key).await;
        if r.status == 200 {
            assert_eq!(r.data()["memories"].as_array().unwrap().len(), 1, "the refused write stored nothing");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still refused after the upgrade: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With overage allowed the request goes on and the excess is reported as
/// overage; the limits come from the active pricing plugin's plans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_with_overage_counts_the_excess() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (_, admin) = s.operator();
    let plugins = s.get("/admin/plugins", &admin).await.assert_ok(200)["plugins"].clone();
    let tiered = plugins.as_array().unwrap().iter().find(|p| p["name"] == "pricing-tiered").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let plans = json!({"config": {"currency": "USD", "plans": {
        "starter": {"display_name": "Starter", "base_price_micros": 1000000, "overage_allowed": true,
            "limits": {"api_calls": 3},
            "overage": {"api_calls": {"price_micros": 1000, "per": 1}}},
        "enterprise": {"display_name": "Enterprise", "base_price_micros": 0, "overage_allowed": true}
    }}});
    s.post(&format!("/admin/plugins/{tiered}/activate"), &admin, plans).await.assert_ok(200);

    let org = s.create_org_with("starter", UNLIMITED, false);
    let key = s.create_key(&org, "read", false);
    for _ in 0..5 {
        s.get("/v1/memories", &key).await.assert_ok(200);
    }
    let limits = s.get("/v1/account/limits", &key).await.assert_ok(200).clone();
    let calls = quota(&limits, "api_calls");
    assert_eq!(calls["included"], 3, "{limits}");
    assert_eq!(calls["used"], 5, "{limits}");
    assert_eq!(calls["remaining"], 0, "{limits}");
    assert_eq!(calls["overage"], 2, "{limits}");
    assert_eq!(calls["overage_allowed"], true);
}

/// A private `redis-server` on a free port that the test may stop and start.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = PrivateRedis { port, child: None, dir: tempfile::tempdir().unwrap() };
        redis.up();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is needed for this test");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}

async fn ready_limits(s: &TestServer) -> Value {
    s.call(Method::GET, "/ready", None, None).await.assert_ok(200)["limits"].clone()
}

/// Redis stops mid-run and starts again: fail-open serves on a local share
/// of the limit, fail-closed answers 503; both recover by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_follows_the_failure_policy_and_recovers() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    // Two separate deployments (each its own database and key prefix) on
    // one Redis server: neither counts the other as an instance sharing its
    // limits.
    let (open_prefix, closed_prefix) = (redis_prefix(), redis_prefix());
    let open =
        TestServer::start_with(Backend::Sqlite, &[("REDIS_URL", &url), ("MEMHOST_LIMITS__REDIS_PREFIX", &open_prefix)])
            .await;
    let closed = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("REDIS_URL", &url),
            ("MEMHOST_LIMITS__REDIS_PREFIX", &closed_prefix),
            ("MEMHOST_LIMITS__ON_STORE_FAILURE", "fail-closed"),
        ],
    )
    .await;
    let overrides = r#"{"rate_limits": {"requests_per_minute": 20, "requests_per_day": 1000000, "concurrent": 1000}}"#;
    let key_of = |s: &TestServer| {
        let org = s.create_org_with("enterprise", overrides, false);
        s.create_key(&org, "read", false)
    };
    let (open_key, closed_key) = (key_of(&open), key_of(&closed));

    for (s, key) in [(&open, &open_key), (&closed, &closed_key)] {
        for _ in 0..5 {
            s.get("/v1/memories", key).await.assert_ok(200);
        }
        assert_eq!(ready_limits(s).await["store"], "redis");
    }

    redis.down();

    // Fail-open: served, counted on this instance's share of the limit (the
    // whole limit, as it is the only instance), and the switch is logged.
    let mut served = 0;
    let mut refused = 0;
    for _ in 0..30 {
        let r = open.get("/v1/memories", &open_key).await;
        match r.status.as_u16() {
            200 => served += 1,
            429 => refused += 1,
            other => panic!("fail-open answered {other}: {}", r.body),
        }
    }
    assert_eq!((served, refused), (20, 10), "the local limiter enforces the limit meanwhile");
    let stats = ready_limits(&open).await;
    assert_eq!(stats["store"], "local-fallback", "{stats}");
    assert!(stats["fallback_decisions"].as_u64().unwrap() >= 30, "{stats}");
    assert!(stats["redis_failures"].as_u64().unwrap() >= 1, "{stats}");
    assert!(open.log().contains("Redis rate-limit store failed"), "{}", open.log());

    // Fail-closed: 503 in the envelope, with a hint when to retry.
    let r = closed.get("/v1/memories", &closed_key).await;
    r.assert_error(503, "SERVICE_UNAVAILABLE");
    assert!(r.headers.contains_key("retry-after"));
    // Health and readiness do not depend on Redis.
    closed.call(Method::GET, "/health", None, None).await.assert_ok(200);

    redis.up();

    // Both recover by themselves, on fresh shared counters.
    for (name, s, key) in [("fail-open", &open, &open_key), ("fail-closed", &closed, &closed_key)] {
        let start = Instant::now();
        loop {
            let r = s.get("/v1/memories", key).await;
            if r.status == 200 && ready_limits(s).await["store"] == "redis" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "{name} did not recover: {} {}", r.status, r.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(open.log().contains("answers again"), "{}", open.log());
}

/// Three instances share PostgreSQL and Redis; one key hammered through all
/// three gets the limit, not three times it. A concurrency limit holds
/// across them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_are_exact_across_three_instances() {
    let fake = fake_llm::start(Duration::from_millis(800), 384).await;
    let prefix = redis_prefix();
    let mut env: Vec<(&str, String)> = crate::providers::provider_env(&fake.url);
    env.push(("REDIS_URL", REDIS.into()));
    env.push(("MEMHOST_LIMITS__REDIS_PREFIX", prefix.clone()));
    let first = TestServer::start_with(Backend::Postgres, &env_refs(&env)).await;
    env.push(("DATABASE_URL", first.database_url().unwrap()));
    let mut servers = vec![Arc::new(first)];
    for _ in 0..2 {
        servers.push(Arc::new(TestServer::start_with(Backend::Postgres, &env_refs(&env)).await));
    }

    // Per-minute windows are aligned to the minute: stay inside one.
    let second = chrono::Utc::now().second();
    if second > 40 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }

    const LIMIT: u64 = 300;
    let overrides = json!({"rate_limits": {"requests_per_minute": LIMIT, "requests_per_day": 100000000,
        "concurrent": 100000, "per_ip_requests_per_minute": 0}})
    .to_string();
    let org = servers[0].create_org_with("professional", &overrides, false);
    let key = servers[0].create_key(&org, "read,write", false);

    let deadline = Instant::now() + Duration::from_secs(6);
    let mut workers = Vec::new();
    for i in 0..12 {
        let (s, key) = (servers[i % 3].clone(), key.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0u64, 0u64);
            while Instant::now() < deadline {
                let r = s.get("/v1/memories", &key).await;
                match r.status.as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    other => panic!("unexpected {other}: {}", r.body),
                }
            }
            (ok, limited)
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for w in workers {
        let (ok, limited) = w.await.unwrap();
        admitted += ok;
        refused += limited;
    }
    eprintln!("three instances: {admitted} admitted, {refused} refused, limit {LIMIT}");
    assert!(refused > 0, "the key was hammered past its limit");
    let tolerance = LIMIT / 100;
    assert!(admitted.abs_diff(LIMIT) <= tolerance, "admitted {admitted}, limit {LIMIT} (±1%)");

    // Concurrency: 4 in flight for the org, whichever instance serves them.
    let overrides = json!({"rate_limits": {"requests_per_minute": 100000, "concurrent": 4}}).to_string();
    let org = servers[0].create_org_with("enterprise", &overrides, false);
    let key = servers[0].create_key(&org, "read,write", false);
    servers[0].add(&key, "apples are red", json!({})).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(12));
    let mut calls = Vec::new();
    for i in 0..12 {
        let (s, key, barrier) = (servers[i % 3].clone(), key.clone(), barrier.clone());
        calls.push(tokio::spawn(async move {
            barrier.wait().await;
            s.post("/v1/query/answer", &key, json!({"context": "about apples", "relevance_threshold": 0.0})).await
        }));
    }
    let mut outcomes = Vec::new();
    for c in calls {
        outcomes.push(c.await.unwrap());
    }
    let answered = outcomes.iter().filter(|r| r.status == 200).count();
    for r in outcomes.iter().filter(|r| r.status != 200) {
        r.assert_error(429, "RATE_LIMIT_EXCEEDED");
        assert_eq!(r.body["error"]["details"]["rule"], "concurrent", "{}", r.body);
        assert_eq!(r.body["error"]["details"]["window"], "concurrent", "{}", r.body);
    }
    assert_eq!(answered, 4, "exactly the concurrency limit is served at once");
    assert!(fake.seen.lock().unwrap().max_chats_in_flight <= 4);

    // Leases are released when requests end: the next ones get through.
    for s in &servers {
        s.post("/v1/query/answer", &key, json!({"context": "about apples"})).await.assert_ok(200);
    }
}

/// Issue 3's hot swap, with the plugin deciding ordinary API requests: no
/// request fails, and the limits switch at activation and back at rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_plugin_hot_swap_under_api_traffic() {
    let server = Arc::new(TestServer::start(Backend::Sqlite).await);
    let (_, admin) = server.operator();
    let (_, key) = server.tenant();
    let flat = server.upload_plugin(&admin, plugin_wasm("ratelimit-flat"), "").await;
    let flat_id = flat.assert_ok(201)["id"].as_str().unwrap().to_string();
    // Under ratelimit-tiered the tenant's tightest rate rule is the global
    // one (its own limits are overridden far higher).
    let tiered_limit = 50_000;
    let flat_limit = 5_000_000;

    let observe = move |server: Arc<TestServer>| {
        let key = key.clone();
        async move {
            let r = server.get("/v1/memories", &key).await;
            assert_eq!(r.status.as_u16(), 200, "request during hot swap failed: {}", r.body);
            header(&r, "ratelimit-limit").unwrap()
        }
    };
    let config = json!({"requests_per_minute": flat_limit});
    hot_swap(&server, &admin, &flat_id, config, (tiered_limit, flat_limit), observe).await;
}
