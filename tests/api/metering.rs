//! Usage metering (issue 17): idempotency keys, every derived number equal
//! to the raw events, the metrics policy as a file reloaded while serving,
//! label filters, the append-only audit log, retention, /metrics, and a
//! kill -9 in the middle of a load.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Backend, Resp, TestServer, env_refs};

both_backends!(
    idempotency_keys_replay_refuse_and_expire,
    every_usage_figure_equals_the_raw_events,
    metrics_filter_and_group_by_labels,
    the_audit_log_is_append_only_and_tamper_evident,
    retention_prunes_old_events_and_audit_entries,
    acknowledged_requests_survive_kill_9_exactly_once,
    a_failed_usage_write_answers_503_and_bills_nothing,
    a_policy_of_sums_and_counts_only_is_metered,
    reconcile_fix_repairs_counters_and_the_gauge,
);

async fn post_idem(s: &TestServer, path: &str, key: &str, idem: &str, body: Value) -> Resp {
    let req = s.client.post(format!("{}{path}", s.base)).bearer_auth(key).header("Idempotency-Key", idem).json(&body);
    s.send(req).await
}

/// What `GET /v1/usage` says of one metric (`None`: not in the policy).
async fn used(s: &TestServer, key: &str, metric: &str) -> Option<i64> {
    let r = s.get("/v1/usage", key).await;
    r.assert_ok(200)["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == metric)
        .map(|m| m["used"].as_i64().unwrap())
}

fn count_events(route: &str, org: &str) -> String {
    format!("SELECT CAST(COUNT(*) AS TEXT) FROM usage_events WHERE org_id = '{org}' AND route = '{route}'")
}

async fn idempotency_keys_replay_refuse_and_expire(backend: Backend) {
    let fake = crate::fake_llm::start(Duration::from_millis(1500), 384).await;
    let s = TestServer::start_with(backend, &env_refs(&crate::providers::provider_env(&fake.url))).await;
    let (org, key) = s.tenant();

    // First: runs. Repeat: the stored response, not run again.
    let first = post_idem(&s, "/v1/memories", &key, "create-1", json!({ "text": "Alice likes tea." })).await;
    let id = first.assert_ok(201)["id"].as_str().unwrap().to_string();
    assert!(!first.headers.contains_key("idempotent-replayed"));
    let again = post_idem(&s, "/v1/memories", &key, "create-1", json!({ "text": "Alice likes tea." })).await;
    assert_eq!(again.status.as_u16(), 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body, "the first response, byte for byte");
    let list = s.get("/v1/memories", &key).await;
    assert_eq!(list.assert_ok(200)["memories"].as_array().unwrap().len(), 1, "executed once");
    assert_eq!(s.sql_number(&count_events("/v1/memories", &org)).await, 2, "one create event and the list");
    assert_eq!(list.assert_ok(200)["memories"][0]["id"], id.as_str());

    // The same key for another request: 422, nothing run.
    let other = post_idem(&s, "/v1/memories", &key, "create-1", json!({ "text": "Bob likes coffee." })).await;
    other.assert_error(422, "IDEMPOTENCY_KEY_REUSED");
    // Keys are per org: another org may use the same one.
    let (_, other_key) = s.tenant();
    post_idem(&s, "/v1/memories", &other_key, "create-1", json!({ "text": "Bob likes coffee." })).await.assert_ok(201);

    // A repeat while the first still runs: 409 (the answer takes 1.5 s).
    let slow = {
        let (s2, key2) = (s.client.clone(), key.clone());
        let url = format!("{}/v1/query/answer", s.base);
        tokio::spawn(async move {
            s2.post(url)
                .bearer_auth(key2)
                .header("Idempotency-Key", "answer-1")
                .json(&json!({ "context": "What does Alice like?" }))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = post_idem(&s, "/v1/query/answer", &key, "answer-1", json!({ "context": "What does Alice like?" })).await;
    busy.assert_error(409, "IDEMPOTENCY_IN_PROGRESS");
    assert!(busy.headers.contains_key("retry-after"));
    assert_eq!(slow.await.unwrap().as_u16(), 200);
    let done = post_idem(&s, "/v1/query/answer", &key, "answer-1", json!({ "context": "What does Alice like?" })).await;
    assert_eq!(done.headers["idempotent-replayed"], "true");
    assert_eq!(fake.seen.lock().unwrap().chat_calls, 1, "the model was asked once");

    // A failed request frees its key: a 4xx is stored, but a request the
    // quota or the handler refused before storing can be retried.
    let bad = post_idem(&s, "/v1/memories", &key, "bad-1", json!({ "text": "" })).await;
    bad.assert_error(400, "INVALID_REQUEST");
    let bad_again = post_idem(&s, "/v1/memories", &key, "bad-1", json!({ "text": "" })).await;
    assert_eq!(bad_again.headers["idempotent-replayed"], "true", "a 4xx answer is an answer: replayed");

    // Malformed keys and keys on secret-bearing routes are refused clearly.
    let long = "k".repeat(300);
    post_idem(&s, "/v1/memories", &key, &long, json!({ "text": "x" })).await.assert_error(400, "INVALID_REQUEST");
    let r = post_idem(&s, "/v1/account/api-keys", &key, "key-1", json!({ "name": "x" })).await;
    r.assert_error(400, "INVALID_REQUEST");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("shown once"), "{}", r.body);

    // After 24 h the key is forgotten: the request runs again.
    s.sql_exec("UPDATE idempotency_keys SET created_at = '2020-01-01T00:00:00.000000Z' WHERE key = 'create-1'")
        .await
        .unwrap();
    let later = post_idem(&s, "/v1/memories", &key, "create-1", json!({ "text": "Alice likes tea." })).await;
    assert!(!later.headers.contains_key("idempotent-replayed"));
    assert_ne!(later.assert_ok(201)["id"], id.as_str(), "a new memory: the expired key ran again");
}

/// Counts of billable events straight from the table, per metric.
async fn from_events(s: &TestServer, org: &str, env: &str) -> BTreeMap<&'static str, i64> {
    let q = |expr: &str| {
        format!(
            "SELECT CAST({expr} AS TEXT) FROM usage_events WHERE org_id = '{org}' AND environment = '{env}' AND billable"
        )
    };
    let mut m = BTreeMap::new();
    m.insert("api_calls", s.sql_number(&q("COUNT(*)")).await);
    m.insert("tokens_processed", s.sql_number(&q("COALESCE(SUM(tokens_in + tokens_out), 0)")).await);
    m.insert("embeddings_generated", s.sql_number(&q("COALESCE(SUM(embeddings_generated), 0)")).await);
    m.insert("memories_stored", s.sql_number(&q("COALESCE(MAX(memories_stored), 0)")).await);
    // Reported quantities (the response cache's), summed from the JSON column.
    let quantity = |name: &str| match s.database_url() {
        Some(_) => format!("COALESCE(SUM((quantities->>'{name}')::bigint), 0)"),
        None => format!("COALESCE(SUM(json_extract(quantities, '$.{name}')), 0)"),
    };
    m.insert("answer_cache_hits", s.sql_number(&q(&quantity("cache_hits"))).await);
    m.insert("cache_saved_tokens", s.sql_number(&q(&quantity("cache_saved_tokens"))).await);
    m.insert("cache_saved_cost_micros", s.sql_number(&q(&quantity("cache_saved_cost_micros"))).await);
    m
}

async fn every_usage_figure_equals_the_raw_events(backend: Backend) {
    let s = Arc::new(TestServer::start(backend).await);
    // Starter: quotas to compare with (its rate limits lifted for the load).
    let org = s.create_org_with("starter", crate::common::UNLIMITED, false);
    let live = s.create_key(&org, "read,write,delete,admin", false);
    let test = s.create_key(&org, "read,write,delete,admin", true);
    let (_, admin) = s.operator();

    // A mixed load from four clients: writes, reads, updates, deletes,
    // retrieval and answers, tagged; some bad requests; a test key beside.
    let billable = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (s, live, test, billable) = (s.clone(), live.clone(), test.clone(), billable.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..12 {
                let key = if i % 4 == 3 { &test } else { &live };
                let counts = key == &live;
                let tagged = s
                    .client
                    .post(format!("{}/v1/memories", s.base))
                    .bearer_auth(key)
                    .header("X-Usage-Tags", format!("team=t{c}"))
                    .json(&json!({ "text": format!("client {c} remembers fact number {i} about the sea") }));
                let r = s.send(tagged).await;
                let id = r.assert_ok(201)["id"].as_str().unwrap().to_string();
                s.get(&format!("/v1/memories/{id}"), key).await.assert_ok(200);
                s.post("/v1/query", key, json!({ "context": "the sea", "max_memories": 3 })).await.assert_ok(200);
                if i % 3 == 0 {
                    s.put(&format!("/v1/memories/{id}"), key, json!({ "text": "changed" })).await.assert_ok(200);
                    s.delete(&format!("/v1/memories/{id}"), key).await.assert_ok(200);
                }
                if i % 5 == 0 {
                    s.post("/v1/query/answer", key, json!({ "context": "what about the sea?" })).await.assert_ok(200);
                    s.post("/v1/memories", key, json!({ "text": "" })).await.assert_error(400, "INVALID_REQUEST");
                }
                // Account and usage reads are not billed.
                s.get("/v1/account", key).await.assert_ok(200);
                s.get("/v1/usage", key).await.assert_ok(200);
                if counts {
                    let n = 3 + if i % 3 == 0 { 2 } else { 0 } + if i % 5 == 0 { 2 } else { 0 };
                    billable.fetch_add(n, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let billable = billable.load(Ordering::Relaxed);
    let events = from_events(&s, &org, "live").await;
    assert_eq!(events["api_calls"], billable, "one billable event per billable live request the clients saw");
    let test_events = from_events(&s, &org, "test").await;
    assert!(test_events["api_calls"] > 0, "test-mode usage is recorded");

    // /v1/usage (and the quota counters it reads) equal the events; the
    // test key sees its own, the live key never counts it.
    let usage = s.get("/v1/usage", &live).await;
    let metrics = usage.assert_ok(200)["metrics"].as_array().unwrap().clone();
    for m in &metrics {
        let name = m["metric"].as_str().unwrap();
        assert_eq!(m["used"].as_i64().unwrap(), events[name], "/v1/usage {name}");
    }
    assert_eq!(used(&s, &test, "api_calls").await, Some(test_events["api_calls"]));
    let quotas = s.get("/v1/account/limits", &live).await.assert_ok(200)["quotas"].clone();
    assert_eq!(quotas.as_array().unwrap().len(), 4, "{quotas}");
    for q in quotas.as_array().unwrap() {
        let name = q["metric"].as_str().unwrap();
        assert_eq!(q["used"].as_i64().unwrap(), events[name], "quota counter {name}");
    }

    // The day's rollups (history by day) equal the events too.
    let history = s.get("/v1/usage/history?granularity=day", &live).await;
    let mut by_metric: BTreeMap<String, i64> = BTreeMap::new();
    for p in history.assert_ok(200)["points"].as_array().unwrap() {
        *by_metric.entry(p["metric"].as_str().unwrap().to_string()).or_default() += p["value"].as_i64().unwrap();
    }
    for (name, v) in &events {
        assert_eq!(by_metric.get(*name).copied().unwrap_or(0), *v, "rollup {name}");
    }
    // By tag, from the events: each client's tagged creates.
    let by_team = s.get("/v1/usage/history?granularity=hour&group_by=tag.team&metric=api_calls", &live).await;
    let teams: BTreeSet<String> = by_team.assert_ok(200)["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["group"].as_str().unwrap().to_string())
        .collect();
    assert!(["t0", "t1", "t2", "t3"].iter().all(|t| teams.contains(*t)), "{teams:?}");

    // /admin/metrics totals (live by default) and the export's CSV.
    for (name, v) in &events {
        let r = s.get(&format!("/admin/metrics/{name}?labels.tenant_id={org}"), &admin).await;
        assert_eq!(r.assert_ok(200)["total"].as_i64().unwrap(), *v, "/admin/metrics {name}");
    }
    let csv =
        s.client.get(format!("{}/admin/usage/export?format=csv", s.base)).bearer_auth(&admin).send().await.unwrap();
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.find(|l| l.starts_with(&org)).expect("the org's row").split(',').collect();
    for (name, v) in &events {
        let col = header.iter().position(|h| h == name).unwrap_or_else(|| panic!("column {name} in {header:?}"));
        assert_eq!(row[col].parse::<i64>().unwrap(), *v, "export {name}");
    }

    // And the reconciliation finds nothing to repair.
    let out = s.cli(&["usage", "reconcile", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["differences"], json!([]), "{report}");
    assert!(report["checked"].as_u64().unwrap() >= 8, "{report}");
}

async fn metrics_filter_and_group_by_labels(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (org_a, key_a) = s.tenant();
    let key_a2 = s.create_key(&org_a, "read,write", false);
    let (org_b, key_b) = s.tenant();
    let (_, admin) = s.operator();
    let tagged = |key: &str, team: &str| {
        s.client
            .post(format!("{}/v1/memories", s.base))
            .bearer_auth(key)
            .header("X-Usage-Tags", format!("team={team}"))
            .json(&json!({ "text": "a fact" }))
    };
    for _ in 0..3 {
        s.send(tagged(&key_a, "red")).await.assert_ok(201);
    }
    s.send(tagged(&key_a2, "blue")).await.assert_ok(201);
    s.get("/v1/memories", &key_a2).await.assert_ok(200);
    for _ in 0..2 {
        s.send(tagged(&key_b, "red")).await.assert_ok(201);
    }
    let total = |query: String| {
        let (s, admin) = (&s, admin.clone());
        async move {
            s.get(&format!("/admin/metrics/api_calls?{query}"), &admin).await.assert_ok(200)["total"].as_i64().unwrap()
        }
    };
    assert_eq!(total(format!("labels.tenant_id={org_a}")).await, 5);
    assert_eq!(total(format!("labels.tenant_id={org_b}")).await, 2);
    let key_a2_id = s
        .cli_json(&["keys", "list", "--org", &org_a])
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    let by_key: i64 = {
        let mut n = 0;
        for id in &key_a2_id {
            n += total(format!("labels.key_id={id}")).await;
        }
        n
    };
    assert_eq!(by_key, 5, "the org's keys together");
    assert_eq!(total("labels.team=red".into()).await, 5);
    assert_eq!(total(format!("labels.team=red&labels.tenant_id={org_a}")).await, 3);
    assert_eq!(total("labels.endpoint=GET%20/v1/memories".into()).await, 1);
    assert_eq!(total("labels.environment=test".into()).await, 0);

    // Grouped by endpoint, in one bucket per hour; the shape of seed 004.
    let r =
        s.get(&format!("/admin/metrics/api_calls?labels.tenant_id={org_a}&group_by=endpoint&step=1h"), &admin).await;
    let data = r.assert_ok(200);
    assert_eq!(data["name"], "api_calls");
    assert_eq!(data["unit"], "calls");
    let mut groups: BTreeMap<String, i64> = BTreeMap::new();
    for p in data["points"].as_array().unwrap() {
        assert!(p["timestamp"].as_str().unwrap().ends_with(":00:00Z"), "{p}");
        *groups.entry(p["group"].as_str().unwrap().into()).or_default() += p["value"].as_i64().unwrap();
    }
    assert_eq!(groups["POST /v1/memories"], 4);
    assert_eq!(groups["GET /v1/memories"], 1);

    // Bad input: clear errors, never a 500.
    s.get("/admin/metrics/nope", &admin).await.assert_error(404, "METRIC_NOT_FOUND");
    s.get("/admin/metrics/api_calls?labels.Bad.Label=x", &admin).await.assert_error(400, "INVALID_REQUEST");
    s.get("/admin/metrics/api_calls?step=0", &admin).await.assert_error(400, "INVALID_REQUEST");
    s.get("/admin/metrics/api_calls?start_time=yesterday", &admin).await.assert_error(400, "INVALID_REQUEST");
    s.get("/admin/metrics/api_calls?step=1s&start_time=2020-01-01", &admin).await.assert_error(400, "INVALID_REQUEST");
    s.get("/admin/metrics/api_calls?labels.environment=prod", &admin).await.assert_error(400, "INVALID_REQUEST");
    s.get("/v1/usage/history?group_by=colour", &key_a).await.assert_error(400, "INVALID_REQUEST");
    s.get("/v1/usage/history?granularity=week", &key_a).await.assert_error(400, "INVALID_REQUEST");
    s.get("/v1/usage?format=xml", &key_a).await.assert_error(400, "INVALID_REQUEST");
    let bad_tags = s
        .client
        .post(format!("{}/v1/memories", s.base))
        .bearer_auth(&key_a)
        .header("X-Usage-Tags", "Team Name=x")
        .json(&json!({ "text": "x" }));
    s.send(bad_tags).await.assert_error(400, "INVALID_REQUEST");
    // Customers cannot read the operators' views.
    s.get("/admin/metrics", &key_a).await.assert_error(403, "FORBIDDEN");
}

async fn the_audit_log_is_append_only_and_tamper_evident(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (org, key) = s.tenant();
    let (_, admin) = s.operator();
    let secret_text = "my very private memory 7f3a";
    s.add(&key, secret_text, json!({})).await;
    let created = s.post("/v1/account/api-keys", &key, json!({ "name": "ci" })).await;
    let new_key = created.assert_ok(201)["key"].as_str().unwrap().to_string();
    let new_id = created.assert_ok(201)["id"].as_str().unwrap().to_string();
    s.delete(&format!("/v1/account/api-keys/{new_id}"), &key).await.assert_ok(200);
    s.cli_ok(&["orgs", "set", &org, "--plan", "professional"]);

    // Operator actions with actor and before/after; API calls with their fields.
    let page = s.get(&format!("/admin/audit?org_id={org}&kind=operator"), &admin).await;
    let actions: Vec<String> = page.assert_ok(200)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().into())
        .collect();
    for a in ["org.created", "key.created", "key.revoked", "org.updated"] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
    let entries = page.assert_ok(200)["entries"].as_array().unwrap().clone();
    // The last change: `orgs set --plan` (creating the org with overrides was one too).
    let updated = entries.iter().rev().find(|e| e["action"] == "org.updated").unwrap();
    assert_eq!(updated["before"]["plan"], "enterprise");
    assert_eq!(updated["after"]["plan"], "professional");
    assert!(updated["actor"].as_str().unwrap().starts_with("cli"));
    let revoked = entries.iter().find(|e| e["action"] == "key.revoked").unwrap();
    assert!(revoked["actor"].as_str().unwrap().starts_with("key:"));
    let calls = s.get(&format!("/admin/audit?org_id={org}&kind=api_call&limit=2"), &admin).await;
    let call = calls.assert_ok(200)["entries"][0].clone();
    assert_eq!(call["action"], "POST /v1/memories");
    assert_eq!(call["status"], 201);
    assert!(call["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(call["ip"], "127.0.0.1", "{call}");
    assert!(calls.assert_ok(200)["next_cursor"].is_string());

    // Never a key or memory text in it.
    let dump = s.sql_rows("SELECT CAST(seq AS TEXT), actor, action, target, before, after FROM audit_log").await;
    let text = format!("{dump:?}");
    assert!(!text.contains(secret_text), "memory text in the audit log");
    assert!(!text.contains(&new_key) && !text.contains(&key), "a key in the audit log");

    let verify = s.cli_json(&["audit", "verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(verify["entries"].as_u64().unwrap() >= 8);
    assert!(verify["sealed_calls"].as_u64().unwrap() >= 3, "{verify}");
    // Each API call is its usage event, under a seal in the chain.
    let event_id = call["event_id"].as_str().expect("an API call names its event").to_string();
    let seal = call["seq"].as_i64().unwrap();
    let sealed = s.sql_rows(&format!("SELECT action, after FROM audit_log WHERE seq = {seal}")).await;
    assert_eq!(sealed[0][0].as_deref(), Some("usage.sealed"));
    assert!(sealed[0][1].as_deref().unwrap().contains("digest"), "{sealed:?}");
    let err = s.sql_exec(&format!("UPDATE usage_events SET status = 200 WHERE id = '{event_id}'")).await.unwrap_err();
    assert!(err.contains("append-only"), "{err}");
    let err = s.sql_exec(&format!("DELETE FROM usage_events WHERE id = '{event_id}'")).await.unwrap_err();
    assert!(err.contains("append-only"), "{err}");
    // Paging through API calls and actions together: every entry once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = s.get(&format!("/admin/audit?org_id={org}&limit=2{cursor}"), &admin).await;
        let data = page.assert_ok(200).clone();
        for e in data["entries"].as_array().unwrap() {
            seen.push(format!("{}/{}", e["seq"], e["event_id"]));
        }
        match data["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let unique: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no entry twice: {seen:?}");
    assert!(seen.iter().filter(|e| !e.ends_with("/null")).count() >= 3, "API calls listed: {seen:?}");
    assert!(seen.iter().filter(|e| e.ends_with("/null")).count() >= 4, "actions listed: {seen:?}");

    // UPDATE and DELETE are refused by the database itself.
    let err = s.sql_exec("UPDATE audit_log SET action = 'nothing happened' WHERE seq = 2").await.unwrap_err();
    assert!(err.contains("append-only"), "{err}");
    let err = s.sql_exec("DELETE FROM audit_log WHERE seq = 2").await.unwrap_err();
    assert!(err.contains("append-only"), "{err}");

    // Someone with the power to lift the guard edits an entry: the chain says where.
    let (lift, _) = update_guard(backend, "audit_log");
    s.sql_exec(&lift).await.unwrap();
    s.sql_exec("UPDATE audit_log SET status = 200 WHERE seq = 3").await.unwrap();
    let out = s.cli(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "verify fails");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["broken_at"], 3, "{v}");
    let api = s.get("/admin/audit/verify", &admin).await;
    assert_eq!(api.assert_ok(200)["broken_at"], 3);
    s.sql_exec("UPDATE audit_log SET status = NULL WHERE seq = 3").await.unwrap();
    assert_eq!(s.cli_json(&["audit", "verify"])["ok"], true);

    // An API call's event edited behind the guard's back: its seal says so.
    let (lift_events, _) = update_guard(backend, "usage_events");
    s.sql_exec(&lift_events).await.unwrap();
    s.sql_exec(&format!("UPDATE usage_events SET tokens_in = tokens_in + 1000 WHERE id = '{event_id}'")).await.unwrap();
    let out = s.cli(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "verify fails");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["broken_at"], seal, "{v}");
    assert!(v["problem"].as_str().unwrap().contains("edited"), "{v}");
}

/// The statements that lift and restore the guard refusing UPDATE on an
/// append-only table (`audit_log`, `usage_events`), as the migrations name it.
fn update_guard(backend: Backend, table: &str) -> (String, String) {
    match backend {
        Backend::Postgres => (
            format!("ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"),
            format!("ALTER TABLE {table} ENABLE TRIGGER {table}_append_only"),
        ),
        Backend::Sqlite => (
            format!("DROP TRIGGER {table}_no_update"),
            format!(
                "CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} BEGIN \
                 SELECT RAISE(ABORT, '{table} is append-only: UPDATE refused'); END"
            ),
        ),
    }
}

async fn retention_prunes_old_events_and_audit_entries(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (org, key) = s.tenant();
    for i in 0..6 {
        s.add(&key, &format!("fact {i}"), json!({})).await;
    }
    let events = s.sql_number(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM usage_events WHERE org_id = '{org}'")).await;
    assert_eq!(events, 6);
    // Three events and the oldest audit entries are 500 days old (events
    // are append-only too: the guard is lifted to age them).
    let (lift_events, restore_events) = update_guard(backend, "usage_events");
    s.sql_exec(&lift_events).await.unwrap();
    s.sql_exec(&format!(
        "UPDATE usage_events SET occurred_at = '2020-01-01T00:00:00.000000Z' WHERE id IN \
         (SELECT id FROM usage_events WHERE org_id = '{org}' ORDER BY id LIMIT 3)"
    ))
    .await
    .unwrap();
    s.sql_exec(&restore_events).await.unwrap();
    let (lift, restore) = update_guard(backend, "audit_log");
    // The chain up to the third event's seal is as old (a seal is written
    // after its events, so it is never younger than them).
    let third_seal = s
        .sql_number(&format!(
            "SELECT CAST(MAX(audit_seq) AS TEXT) FROM (SELECT audit_seq FROM usage_events WHERE org_id = '{org}' \
             ORDER BY id LIMIT 3) AS oldest"
        ))
        .await;
    s.sql_exec(&lift).await.unwrap();
    s.sql_exec(&format!("UPDATE audit_log SET occurred_at = '2020-01-01T00:00:00.000000Z' WHERE seq <= {third_seal}"))
        .await
        .unwrap();
    s.sql_exec(&restore).await.unwrap();

    let pruned = s.cli_json(&["usage", "prune"]);
    assert_eq!(pruned["events"], 3, "{pruned}");
    assert_eq!(pruned["audit_entries"].as_i64(), Some(third_seal), "{pruned}");
    let left = s.sql_number(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM usage_events WHERE org_id = '{org}'")).await;
    assert_eq!(left, 3);
    // Rollups and counters are kept for ever.
    assert_eq!(used(&s, &key, "api_calls").await, Some(6));
    // The chain still verifies from the oldest entry kept, and says it was pruned.
    let v = s.cli_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["first_seq"].as_i64(), Some(third_seal + 1), "{v}");
    assert!(v["sealed_calls"].as_u64().unwrap() >= 3, "the events kept match their seals: {v}");
    let pruned_entry = s.sql_rows("SELECT after FROM audit_log WHERE action = 'audit.pruned'").await;
    assert_eq!(pruned_entry.len(), 1);
    assert!(pruned_entry[0][0].as_deref().unwrap().contains(&format!("\"deleted\":{third_seal}")), "{pruned_entry:?}");
    let events_pruned = s.sql_rows("SELECT after FROM audit_log WHERE action = 'usage.pruned'").await;
    assert!(
        events_pruned[0][0].as_deref().unwrap().contains(&format!("\"through_seq\":{third_seal}")),
        "{events_pruned:?}"
    );
    // Nothing else is old: a second pass deletes nothing.
    let again = s.cli_json(&["usage", "prune"]);
    assert_eq!((again["events"].as_u64(), again["audit_entries"].as_u64()), (Some(0), Some(0)));
}

/// One client's request: its idempotency key, and the request id of the
/// answer it got (none: no answer, the server died first).
struct Attempt {
    idem: String,
    text: String,
    acked_request_id: Option<String>,
}

async fn acknowledged_requests_survive_kill_9_exactly_once(backend: Backend) {
    let mut server = TestServer::start(backend).await;
    let (org, key) = server.tenant();
    let base = server.base.clone();
    let client = server.client.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..12 {
        let (client, base, key, stop) = (client.clone(), base.clone(), key.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut attempts = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let idem = format!("w{w}-{i}");
                let text = format!("worker {w} writes fact {i}");
                i += 1;
                let sent = client
                    .post(format!("{base}/v1/memories"))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", &idem)
                    .json(&json!({ "text": text }))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let acked = match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        body["meta"]["request_id"].as_str().map(str::to_string)
                    }
                    _ => None,
                };
                let dead = acked.is_none();
                attempts.push(Attempt { idem, text, acked_request_id: acked });
                if dead {
                    break; // the server is gone
                }
            }
            attempts
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.kill_hard();
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    for w in workers {
        attempts.extend(w.await.unwrap());
    }
    let acked: Vec<&Attempt> = attempts.iter().filter(|a| a.acked_request_id.is_some()).collect();
    assert!(acked.len() > 50, "a real load before the kill: {} acknowledged", acked.len());

    server.restart();
    // Every acknowledged request has exactly one event; none is counted twice.
    let rows = server.sql_rows(&format!("SELECT request_id FROM usage_events WHERE org_id = '{org}'")).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows {
        *seen.entry(r[0].clone().unwrap()).or_default() += 1;
    }
    for a in &acked {
        let id = a.acked_request_id.as_ref().unwrap();
        assert_eq!(seen.get(id).copied(), Some(1), "acknowledged request {id}: one event");
    }
    assert!(seen.values().all(|n| *n == 1), "no request id twice");
    let report = counter_differences(&server).await;
    assert_eq!(report, json!([]), "counters and rollups equal the events after the crash");

    // The clients retry what was never answered, with the same keys; each
    // ends with exactly one event (a replay, or the first real execution).
    let base = server.base.clone();
    let mut final_ids = BTreeSet::new();
    for a in &attempts {
        let started = Instant::now();
        let id = loop {
            let r = server
                .send(
                    client
                        .post(format!("{base}/v1/memories"))
                        .bearer_auth(&key)
                        .header("Idempotency-Key", &a.idem)
                        .json(&json!({ "text": a.text })),
                )
                .await;
            match r.status.as_u16() {
                201 => break r.body["meta"]["request_id"].as_str().unwrap().to_string(),
                // The dead instance's claim, until it is known dead.
                409 if started.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => panic!("retry of {} answered {other}: {}", a.idem, r.body),
            }
        };
        if let Some(acked) = &a.acked_request_id {
            assert_eq!(&id, acked, "an acknowledged request is replayed, not run again");
        }
        final_ids.insert(id);
    }
    let creates = server
        .sql_number(&format!(
            "SELECT CAST(COUNT(*) AS TEXT) FROM usage_events WHERE org_id = '{org}' AND route = '/v1/memories' AND method = 'POST'"
        ))
        .await;
    assert_eq!(creates as usize, attempts.len(), "exactly one create event per idempotency key");
    assert_eq!(final_ids.len(), attempts.len());
    assert_eq!(counter_differences(&server).await, json!([]));
}

/// What `memhost usage reconcile` finds in the counters and rollups. (The
/// memories-stored gauge may differ after a crash: a memory written by a
/// request that died before its event committed is stored but was never
/// counted; `reconcile --fix` recounts it.)
async fn counter_differences(server: &TestServer) -> Value {
    let out = server.cli(&["usage", "reconcile", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("reconcile JSON");
    let counters: Vec<Value> =
        report["differences"].as_array().unwrap().iter().filter(|d| d["table"] != "usage_gauges").cloned().collect();
    json!(counters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_metric_is_a_policy_edit_picked_up_while_serving() {
    let policies = tempfile::tempdir().unwrap();
    let file = policies.path().join("metrics.yaml");
    let bundled = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/metrics.yaml")).unwrap();
    std::fs::write(&file, &bundled).unwrap();
    let dir = policies.path().display().to_string();
    let s = TestServer::start_with(Backend::Sqlite, &[("MEMHOST_POLICIES_DIR", &dir)]).await;
    let (_, key) = s.tenant();
    let (_, admin) = s.operator();
    let tagged = |team: &str| {
        s.client
            .post(format!("{}/v1/memories", s.base))
            .bearer_auth(&key)
            .header("X-Usage-Tags", format!("team={team}, project=p1"))
            .json(&json!({ "text": "a fact" }))
    };
    for team in ["red", "red", "blue"] {
        s.send(tagged(team)).await.assert_ok(201);
    }
    s.add(&key, "untagged", json!({})).await;

    // Two new metrics: requests carrying a team tag, and distinct teams.
    let added = "  tagged_requests:\n    display_name: Tagged requests\n    unit: calls\n    aggregation: count\n    \
                 field: tags.team\n  teams:\n    unit: teams\n    aggregation: unique_count\n    field: tags.team\n";
    let edited = bundled.replace("\n# How long raw data is kept", &format!("{added}\n# How long raw data is kept"));
    assert_ne!(edited, bundled);
    std::fs::write(&file, &edited).unwrap();
    let started = Instant::now();
    while used(&s, &key, "tagged_requests").await.is_none() {
        assert!(started.elapsed() < Duration::from_secs(15), "the new metric never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Counted from the period's events, including those before the edit.
    assert_eq!(used(&s, &key, "tagged_requests").await, Some(3));
    assert_eq!(used(&s, &key, "teams").await, Some(2));
    s.send(tagged("green")).await.assert_ok(201);
    assert_eq!(used(&s, &key, "tagged_requests").await, Some(4));
    assert_eq!(used(&s, &key, "teams").await, Some(3));
    s.send(tagged("green")).await.assert_ok(201);
    assert_eq!(used(&s, &key, "teams").await, Some(3), "a team seen before is not counted again");
    let out = s.cli(&["usage", "reconcile", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["differences"], json!([]), "{report}");

    // A broken edit is refused with the reason; the policy in force stays.
    std::fs::write(&file, edited.replace("aggregation: unique_count", "aggregation: median")).unwrap();
    let started = Instant::now();
    loop {
        let cat = s.get("/admin/metrics", &admin).await;
        let data = cat.assert_ok(200).clone();
        if let Some(e) = data["policy_error"].as_str() {
            assert!(e.contains("metrics.teams.aggregation"), "{e}");
            assert!(data["metrics"].as_array().unwrap().iter().any(|m| m["name"] == "teams"));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the refusal was never reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.send(tagged("red")).await.assert_ok(201);
    assert_eq!(used(&s, &key, "tagged_requests").await, Some(6));
    // The change is in the audit log.
    let audit = s.get("/admin/audit?kind=system&action=policy.metrics.changed", &admin).await;
    assert_eq!(audit.assert_ok(200)["entries"].as_array().unwrap().len(), 1);
}

/// A policy of sums and counts only (no `max` or `latest` metric): the
/// counters' upsert then has no metric to raise or set, and must still be
/// valid SQL on both backends (it once was a `CASE` without a `WHEN`, and
/// every request answered 503).
async fn a_policy_of_sums_and_counts_only_is_metered(backend: Backend) {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("metrics.yaml"),
        "metrics:\n  api_calls:\n    unit: calls\n    aggregation: count\n  tokens_processed:\n    unit: tokens\n    \
         aggregation: sum\n    field: [tokens_in, tokens_out]\n",
    )
    .unwrap();
    let dir = policies.path().display().to_string();
    let s = TestServer::start_with(backend, &[("MEMHOST_POLICIES_DIR", &dir)]).await;
    let (_, key) = s.tenant();
    for i in 0..3 {
        s.add(&key, &format!("fact {i}"), json!({})).await;
    }
    assert_eq!(used(&s, &key, "api_calls").await, Some(3));
    assert_eq!(used(&s, &key, "memories_stored").await, None, "not a metric of this policy");
    let out = s.cli(&["usage", "reconcile", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["differences"], json!([]), "{report}");
}

/// `usage reconcile` reports a counter and the memories-stored gauge that
/// disagree with what they count (exit 1), `--fix` repairs both from the
/// raw events and the stored memories, and a second run finds nothing.
async fn reconcile_fix_repairs_counters_and_the_gauge(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (org, key) = s.tenant();
    for i in 0..3 {
        s.add(&key, &format!("fact {i}"), json!({})).await;
    }
    assert_eq!(used(&s, &key, "api_calls").await, Some(3));
    let gauge = format!(
        "SELECT CAST(value AS TEXT) FROM usage_gauges WHERE org_id = '{org}' AND environment = 'live' \
         AND name = 'memories_stored'"
    );
    assert_eq!(s.sql_number(&gauge).await, 3);
    // What a lost write or a hand edit would leave behind.
    s.sql_exec(&format!(
        "UPDATE usage_gauges SET value = 10 WHERE org_id = '{org}' AND environment = 'live' AND name = 'memories_stored'"
    ))
    .await
    .unwrap();
    s.sql_exec(&format!(
        "UPDATE usage_counters SET quantity = quantity + 5 WHERE org_id = '{org}' AND environment = 'live' \
         AND metric = 'api_calls'"
    ))
    .await
    .unwrap();

    let out = s.cli(&["usage", "reconcile", "--json"]);
    assert_eq!(out.status.code(), Some(1), "differences exit 1");
    let report: Value = serde_json::from_slice(&out.stdout).expect("reconcile JSON");
    let found = |table: &str, metric: &str| {
        report["differences"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["table"] == table && d["metric"] == metric && d["org_id"] == org.as_str())
            .cloned()
    };
    let g = found("usage_gauges", "memories_stored").unwrap_or_else(|| panic!("gauge not reported: {report}"));
    assert_eq!((g["stored"].as_i64(), g["expected"].as_i64()), (Some(10), Some(3)), "{g}");
    let c = found("usage_counters", "api_calls").unwrap_or_else(|| panic!("counter not reported: {report}"));
    assert_eq!(c["stored"].as_i64().unwrap(), c["expected"].as_i64().unwrap() + 5, "{c}");

    let out = s.cli(&["usage", "reconcile", "--fix", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.cli(&["usage", "reconcile", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("reconcile JSON");
    assert_eq!(report["differences"], json!([]), "{report}");
    assert_eq!(s.sql_number(&gauge).await, 3);
    // The repaired counter is what quotas and /v1/usage read (this GET is
    // an account read: not metered).
    assert_eq!(used(&s, &key, "api_calls").await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_cover_the_grafana_dashboard() {
    let s = TestServer::start_with(Backend::Sqlite, &[("MEMHOST_METRICS_TOKEN", "scrape-secret-123")]).await;
    let org = s.create_org_with("starter", crate::common::UNLIMITED, false);
    let key = s.create_key(&org, "read,write", false);
    let id = s.add(&key, "a fact", json!({})).await;
    s.get(&format!("/v1/memories/{id}"), &key).await.assert_ok(200);
    post_idem(&s, "/v1/memories", &key, "k1", json!({ "text": "x" })).await.assert_ok(201);
    post_idem(&s, "/v1/memories", &key, "k1", json!({ "text": "x" })).await.assert_ok(201);

    // Behind the configured token.
    let anonymous = s.client.get(format!("{}/metrics", s.base)).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let r = s.client.get(format!("{}/metrics", s.base)).bearer_auth("scrape-secret-123").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/memhost-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("memhost_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"].iter().fold(name.clone(), |n, s| {
                    n.strip_suffix(s)
                        .filter(|b| text.contains(&format!("# TYPE {b} histogram")))
                        .map_or(n.clone(), str::to_string)
                });
                queried.insert(base);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    for name in &queried {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "the dashboard queries {name}, which /metrics does not expose"
        );
    }
    // What this test did shows up as samples.
    for sample in [
        "memhost_http_requests_total{method=\"POST\",route=\"/v1/memories\",status=\"201\"} 3",
        "memhost_idempotent_replays_total 1",
        "memhost_usage_events_total ",
        "memhost_usage_commit_seconds_bucket{le=",
        "memhost_usage_batch_events_count ",
        "memhost_ratelimit_decisions_total{outcome=\"allowed\"}",
        "memhost_plugin_calls_total{kind=\"pricing\"",
        "memhost_plugin_call_fuel_bucket{kind=\"rate-limit\"",
        "memhost_usage_queue_depth 0",
        "memhost_db_pool_connections{pool=\"sqlite_write\",state=\"idle\"}",
        "memhost_background_loop_running{loop=\"usage-writer\"} 1",
    ] {
        assert!(text.contains(sample), "missing `{sample}` in:\n{text}");
    }
}

async fn a_failed_usage_write_answers_503_and_bills_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (org, key) = s.tenant();
    s.add(&key, "before the fault", json!({})).await;
    // The usage table refuses writes (a full disk, a lost connection: the
    // writer's transaction fails).
    let (fail, heal) = match backend {
        Backend::Sqlite => (
            vec![
                "CREATE TRIGGER usage_fault BEFORE INSERT ON usage_events BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
            ],
            vec!["DROP TRIGGER usage_fault"],
        ),
        Backend::Postgres => (
            vec![
                "CREATE FUNCTION usage_fault() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER usage_fault BEFORE INSERT ON usage_events FOR EACH ROW EXECUTE FUNCTION usage_fault()",
            ],
            vec!["DROP TRIGGER usage_fault ON usage_events"],
        ),
    };
    for f in &fail {
        s.sql_exec(f).await.unwrap();
    }
    let r = post_idem(&s, "/v1/memories", &key, "during-fault", json!({ "text": "during the fault" })).await;
    r.assert_error(503, "USAGE_NOT_RECORDED");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("not billed"), "{}", r.body);
    let ready = s.call(reqwest::Method::GET, "/ready", None, None).await;
    assert!(ready.assert_ok(200)["usage_writer"]["failed_events"].as_u64().unwrap() >= 1);
    for h in &heal {
        s.sql_exec(h).await.unwrap();
    }
    // Nothing was billed for it; the retry with the same key runs and is billed once.
    let events = format!("SELECT CAST(COUNT(*) AS TEXT) FROM usage_events WHERE org_id = '{org}' AND billable");
    assert_eq!(s.sql_number(&events).await, 1);
    let retry = post_idem(&s, "/v1/memories", &key, "during-fault", json!({ "text": "during the fault" })).await;
    retry.assert_ok(201);
    assert!(!retry.headers.contains_key("idempotent-replayed"));
    assert_eq!(s.sql_number(&events).await, 2);
    assert_eq!(used(&s, &key, "api_calls").await, Some(2), "the failed request is not counted");
}

/// Two instances on one PostgreSQL database, writing and deleting one org's
/// memories at once: their metering batches take turns on the audit chain's
/// head, and each reads the gauge the other just wrote, so the stored-memory
/// gauge equals the memories, the counters equal the events, and the chain
/// and every seal verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_chain_and_one_gauge() {
    let a = TestServer::start(Backend::Postgres).await;
    let url = a.database_url().unwrap();
    let b = TestServer::start_with(Backend::Postgres, &[("DATABASE_URL", &url)]).await;
    let (org, key) = a.tenant();
    let mut clients = Vec::new();
    for (n, server) in [&a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let (client, base, key) = (server.client.clone(), server.base.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..12 {
                let r = client
                    .post(format!("{base}/v1/memories"))
                    .bearer_auth(&key)
                    .json(&json!({ "text": format!("client {n} fact {i}") }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let id = r.json::<Value>().await.unwrap()["data"]["id"].as_str().unwrap().to_string();
                if i % 3 == 0 {
                    let d = client.delete(format!("{base}/v1/memories/{id}")).bearer_auth(&key).send().await.unwrap();
                    assert_eq!(d.status(), 200);
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let stored = a.sql_number(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM memories WHERE org_id = '{org}'")).await;
    assert_eq!(stored, 6 * 8);
    let gauge = a
        .sql_number(&format!(
            "SELECT CAST(value AS TEXT) FROM usage_gauges WHERE org_id = '{org}' AND environment = 'live' \
             AND name = 'memories_stored'"
        ))
        .await;
    assert_eq!(gauge, stored, "no batch overwrote the other instance's gauge");
    let out = a.cli(&["usage", "reconcile", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("reconcile JSON");
    assert_eq!(report["differences"], json!([]), "{report}");
    let v = a.cli_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["sealed_calls"].as_u64().unwrap() >= 6 * 16, "{v}");
}
