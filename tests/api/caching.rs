//! The response cache of answers (shared through Redis when there is one)
//! and the model routing policy.

use std::time::Duration;

use serde_json::json;

use crate::common::{Backend, TestServer, env_refs};

const REDIS: &str = "redis://127.0.0.1:6379";

fn answer_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MEMHOST_ANSWERS__PROVIDER", "openai".into()),
        ("MEMHOST_ANSWERS__BASE_URL", url.into()),
        ("MEMHOST_ANSWERS__MODEL", "fake-chat".into()),
        ("MEMHOST_ANSWERS__API_KEY", "sk-fake-chat".into()),
    ]
}

async fn used(server: &TestServer, key: &str, metric: &str) -> u64 {
    let usage = server.get("/v1/usage", key).await;
    let metrics = usage.assert_ok(200)["metrics"].as_array().unwrap().clone();
    metrics.iter().find(|m| m["metric"] == metric).map_or(0, |m| m["used"].as_u64().unwrap_or(0))
}

/// An answer is reused for the same question (case and spacing aside) and
/// options, until any write to the org's memories; hits are in the usage API
/// and /metrics, and another org never sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_until_a_write() {
    let fake = crate::fake_llm::start(Duration::ZERO, 384).await;
    // A price for the fake model, so answers cost something to save.
    let tmp = tempfile::tempdir().unwrap();
    let prices = "prices:\n  fake-chat: {input: 1000, output: 2000}\n";
    let policies = policies_with(&tmp.path().join("policies"), "model-prices.yaml", prices);
    let mut env = answer_env(&fake.url);
    env.push(("MEMHOST_POLICIES_DIR", policies));
    let server = TestServer::start_with(Backend::Sqlite, &env_refs(&env)).await;
    let (org, key) = server.tenant();
    let (_, other) = server.tenant();
    server.add(&key, "Alice drinks green tea every morning.", json!({})).await;
    server.add(&other, "Alice drinks green tea every morning.", json!({})).await;
    let chats = || fake.seen.lock().unwrap().chat_calls;

    let ask = |key: &str, q: &str| {
        let (server, key, q) = (&server, key.to_string(), q.to_string());
        async move { server.post("/v1/query/answer", &key, json!({"context": q})).await }
    };
    let first = ask(&key, "What does Alice drink?").await;
    let first_data = first.assert_ok(200).clone();
    assert_eq!(first_data["cached"], false, "{first_data}");
    assert_eq!(chats(), 1);
    let tokens_first = first.body["meta"]["usage"]["tokens_processed"].as_u64().unwrap();
    assert!(tokens_first > 0);

    let again = ask(&key, "  what does   ALICE drink? ").await;
    let data = again.assert_ok(200).clone();
    assert_eq!(data["cached"], true, "{data}");
    assert_eq!(data["answer"], first_data["answer"]);
    assert_eq!(data["memories"], first_data["memories"]);
    assert_eq!(chats(), 1, "a hit does not call the model");
    assert_eq!(again.body["meta"]["usage"]["tokens_processed"], 0, "a hit processes no tokens");

    // Other options, or another org: a miss.
    let r =
        server.post("/v1/query/answer", &key, json!({"context": "What does Alice drink?", "max_memories": 1})).await;
    assert_eq!(r.assert_ok(200)["cached"], false);
    assert_eq!(ask(&other, "What does Alice drink?").await.assert_ok(200)["cached"], false, "orgs never share");
    assert_eq!(chats(), 3);

    // A write to the org's memories makes its answers stale.
    server.add(&key, "Alice switched to coffee.", json!({})).await;
    let after = ask(&key, "What does Alice drink?").await;
    assert_eq!(after.assert_ok(200)["cached"], false, "missed after a write");
    assert_eq!(chats(), 4);
    assert_eq!(ask(&key, "What does Alice drink?").await.assert_ok(200)["cached"], true);

    // Metered: hits and the tokens they saved.
    assert_eq!(used(&server, &key, "answer_cache_hits").await, 2);
    assert!(used(&server, &key, "cache_saved_tokens").await >= tokens_first);
    // The answer's provider cost, priced by model-prices.yaml, is on its
    // usage event; each hit saved as much.
    let cost = server
        .sql_number(&format!(
            "SELECT CAST(MIN(cost_micros) AS TEXT) FROM usage_events WHERE org_id = '{org}' AND route = '/v1/query/answer' \
             AND model_calls > 0"
        ))
        .await;
    assert!(cost > 0, "priced: {cost}");
    assert!(used(&server, &key, "cache_saved_cost_micros").await >= 2 * cost as u64);
    let metrics = server.call(reqwest::Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(text.contains("memhost_response_cache_total{kind=\"answer\",result=\"hit\"} 2"), "{text}");
    assert!(text.contains("memhost_response_cache_total{kind=\"answer\",result=\"miss\"} 4"), "{text}");
    assert!(text.contains("memhost_response_cache_saved_tokens_total{kind=\"answer\"}"), "{text}");
}

/// With Redis the cache is shared by every instance: one instance's hit is
/// another's, and a write through one invalidates the other's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_cache_through_redis() {
    let fake = crate::fake_llm::start(Duration::ZERO, 384).await;
    let mut env = answer_env(&fake.url);
    env.push(("REDIS_URL", REDIS.into()));
    let a = TestServer::start_with(Backend::Postgres, &env_refs(&env)).await;
    env.push(("DATABASE_URL", a.database_url().unwrap()));
    let b = TestServer::start_with(Backend::Postgres, &env_refs(&env)).await;
    let (_, key) = a.tenant();
    a.add(&key, "Bob plays the cello on Fridays.", json!({})).await;
    let chats = || fake.seen.lock().unwrap().chat_calls;
    let q = json!({"context": "What does Bob play?"});

    assert_eq!(a.post("/v1/query/answer", &key, q.clone()).await.assert_ok(200)["cached"], false);
    assert_eq!(b.post("/v1/query/answer", &key, q.clone()).await.assert_ok(200)["cached"], true, "b hits a's entry");
    assert_eq!(chats(), 1);
    b.add(&key, "Bob also plays the piano.", json!({})).await;
    assert_eq!(
        a.post("/v1/query/answer", &key, q.clone()).await.assert_ok(200)["cached"],
        false,
        "b's write reached a"
    );
    assert_eq!(chats(), 2);
}

/// PostgreSQL without Redis: instances could not see each other's writes,
/// so nothing is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_redis_does_not_cache() {
    let fake = crate::fake_llm::start(Duration::ZERO, 384).await;
    let server = TestServer::start_with(Backend::Postgres, &env_refs(&answer_env(&fake.url))).await;
    let (_, key) = server.tenant();
    server.add(&key, "Carol lives in Lyon.", json!({})).await;
    for _ in 0..2 {
        let r = server.post("/v1/query/answer", &key, json!({"context": "Where does Carol live?"})).await;
        assert_eq!(r.assert_ok(200)["cached"], false);
    }
    assert_eq!(fake.seen.lock().unwrap().chat_calls, 2);
}

/// A policies directory: the bundled files plus `extra`.
fn policies_with(dir: &std::path::Path, file: &str, text: &str) -> String {
    let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(&bundled).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join(file), text).unwrap();
    dir.display().to_string()
}

/// The routing rule picks the model per request: short extractions go to a
/// small model, long ones to the configured one, answers to another; the
/// usage event records the model used. A bad rule stops the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_policy_picks_the_model() {
    let fake = crate::fake_llm::start(Duration::ZERO, 384).await;
    let tmp = tempfile::tempdir().unwrap();
    let rule = r#"routing:
  rule: 'if task == "extract" && chars < 200 { "fake-small" } else if task == "answer" { "fake-answer-big" } else { "" }'
"#;
    let policies = policies_with(&tmp.path().join("policies"), "model-routing.yaml", rule);
    let mut env = answer_env(&fake.url);
    env.extend(crate::fake_llm::completions_env(&fake.url));
    env.push(("MEMHOST_POLICIES_DIR", policies.clone()));
    let server = TestServer::start_with(Backend::Sqlite, &env_refs(&env)).await;
    let (org, key) = server.tenant();
    crate::fake_llm::activate_llm_extractor(&server, &org).await;

    let short = json!({"messages": [{"role": "user", "content": "I like tea."}]});
    let r = server.post("/v1/memories", &key, short).await;
    r.assert_ok(200);
    let long_text = format!("I like long walks. {}", "We talked about the weather for a while. ".repeat(6));
    let long = json!({"messages": [{"role": "user", "content": long_text}]});
    server.post("/v1/memories", &key, long).await.assert_ok(200);
    server.post("/v1/query/answer", &key, json!({"context": "What do I like?"})).await.assert_ok(200);
    let models = fake.seen.lock().unwrap().models.clone();
    assert_eq!(models, ["fake-small", "fake-extract", "fake-answer-big"], "{models:?}");

    let rows = server
        .sql_rows(&format!("SELECT route, model FROM usage_events WHERE org_id = '{org}' ORDER BY occurred_at"))
        .await;
    let recorded: Vec<(String, Option<String>)> =
        rows.into_iter().map(|r| (r[0].clone().unwrap(), r[1].clone())).collect();
    let by_route = |route: &str| -> Vec<Option<String>> {
        recorded.iter().filter(|(r, _)| r == route).map(|(_, m)| m.clone()).collect()
    };
    assert_eq!(
        by_route("/v1/memories"),
        [Some("fake-small".to_string()), Some("fake-extract".to_string())],
        "{recorded:?}"
    );
    assert_eq!(by_route("/v1/query/answer"), [Some("fake-answer-big".to_string())], "{recorded:?}");

    // A rule that names an unknown variable stops the start, naming the file.
    let bad = policies_with(&tmp.path().join("bad"), "model-routing.yaml", "routing:\n  rule: 'lenght < 10'\n");
    let mut child = std::process::Command::new(crate::common::BIN)
        .arg("serve")
        .env("MEMHOST_DATA_DIR", tmp.path().join("data2"))
        .env("MEMHOST_LISTEN", "127.0.0.1:0")
        .env("MEMHOST_POLICIES_DIR", &bad)
        .env("MEMHOST_EMBEDDINGS__MODEL", "hash")
        .env("MEMHOST_MODELS__AUTO_PULL", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a bad routing rule must stop the start");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("model-routing.yaml") && stderr.contains("lenght"), "{stderr}");
}
