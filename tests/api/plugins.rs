//! Plugins over the admin API: access, the built-ins, upload validation,
//! activation and rollback, hostile guests, and hot swap under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Backend, TestServer, hot_swap, plugin_wasm};

both_backends!(
    admin_needs_operator_admin_key,
    builtins_are_active_on_a_fresh_start,
    upload_activate_rollback,
    canary_routing_rules
);

/// What the built-in pricing plugin charges the starter plan for the
/// self-check fixture's usage: 49 USD base + 2 000 calls over at 0.50/1000.
const STARTER_TOTAL: i64 = 50_000_000;

fn rate_input() -> Value {
    json!({"function": "rate", "plan": "starter", "usage": {"api_calls": 12000, "tokens_processed": 800000}})
}

async fn admin_needs_operator_admin_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, tenant_admin) = server.tenant();
    let r = server.get("/admin/plugins", &tenant_admin).await;
    r.assert_error(403, "FORBIDDEN");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("operator"), "{}", r.body);

    let (op_org, _) = server.operator();
    let op_reader = server.create_key(&op_org, "read", false);
    server.get("/admin/plugins", &op_reader).await.assert_error(403, "INSUFFICIENT_SCOPE");
    server.call(reqwest::Method::GET, "/admin/plugins", None, None).await.assert_error(401, "INVALID_API_KEY");
    // An upload from a non-operator is refused before the body is looked at.
    server.upload_plugin(&tenant_admin, plugin_wasm("pricing-flat"), "").await.assert_error(403, "FORBIDDEN");
}

async fn builtins_are_active_on_a_fresh_start(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, key) = server.operator();
    let list = server.get("/admin/plugins", &key).await;
    let plugins = list.assert_ok(200)["plugins"].as_array().unwrap().clone();
    let by_name = |n: &str| plugins.iter().find(|p| p["name"] == n).unwrap_or_else(|| panic!("{n} in {plugins:?}"));
    for (name, kind, status) in [
        ("pricing-tiered", "pricing", "active"),
        ("ratelimit-tiered", "rate-limit", "active"),
        ("extract-rules", "extractor", "active"),
        // Needs a webhook URL before it can be activated.
        ("alert-webhook", "alert-channel", "inactive"),
    ] {
        let p = by_name(name);
        assert_eq!(p["kind"], kind, "{p}");
        assert_eq!(p["status"], status, "{p}");
        assert_eq!(p["wit_version"], "0.2.0", "{p}");
        assert_eq!(p["id"].as_str().unwrap().len(), 64, "sha-256 id: {p}");
        assert!(p["sdk"].as_str().unwrap().contains("\"wit\":\"0.2.0\""), "SDK stamp: {p}");
        assert!(p["config_schema"].is_object(), "{p}");
    }

    // Each active kind answers its fixture.
    let r = server.post("/admin/plugins/active/pricing/run", &key, json!({"input": rate_input()})).await;
    let run = r.assert_ok(200);
    assert_eq!(run["name"], "pricing-tiered");
    assert_eq!(run["ok"]["total_micros"], STARTER_TOTAL, "{run}");
    assert_eq!(run["plugin_id"], by_name("pricing-tiered")["id"]);
    assert!(run["activation_id"].is_string());
    assert!(run["stats"]["fuel_used"].as_u64().unwrap() > 0, "{run}");
    assert!(run["stats"]["duration_us"].as_u64().is_some(), "{run}");
    assert!(run["stats"]["peak_memory_bytes"].as_u64().unwrap() > 0, "{run}");

    let input = json!({"function": "rules", "plan": "free", "scopes": ["read"], "route": "/v1/memories"});
    let r = server.post("/admin/plugins/active/rate-limit/run", &key, json!({"input": input})).await;
    let rules = r.assert_ok(200)["ok"].as_array().unwrap().clone();
    let per_minute = rules.iter().find(|r| r["name"] == "per-minute").unwrap_or_else(|| panic!("{rules:?}"));
    assert_eq!(per_minute["scope"], "org");
    assert_eq!(per_minute["window_ms"], 60_000);
    assert_eq!(per_minute["limit"], 10, "free tier: 10 per minute; {rules:?}");

    let input =
        json!({"function": "extract", "turns": [{"role": "user", "content": "I love green tea. My name is Ada."}]});
    let r = server.post("/admin/plugins/active/extractor/run", &key, json!({"input": input})).await;
    assert!(!r.assert_ok(200)["ok"].as_array().unwrap().is_empty(), "{}", r.body);

    // No alert channel is active.
    let input = json!({"function": "deliver", "rule": "r", "title": "t"});
    let r = server.post("/admin/plugins/active/alert-channel/run", &key, json!({"input": input})).await;
    r.assert_error(404, "PLUGIN_NOT_FOUND");
    // A function of another kind is a clear 400.
    let r = server.post("/admin/plugins/active/pricing/run", &key, json!({"input": input})).await;
    r.assert_error(400, "INVALID_REQUEST");
    server
        .post("/admin/plugins/active/nope/run", &key, json!({"input": rate_input()}))
        .await
        .assert_error(400, "INVALID_REQUEST");
}

async fn upload_activate_rollback(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, key) = server.operator();
    let tiered = active_pricing(&server, &key).await;
    assert_eq!(tiered["name"], "pricing-tiered");

    let r = server.upload_plugin(&key, plugin_wasm("pricing-flat"), "kind=pricing").await;
    let up = r.assert_ok(201).clone();
    assert_eq!(up["created"], true);
    assert_eq!(up["name"], "pricing-flat");
    assert_eq!(up["version"], "2.0.0");
    assert_eq!(up["kind"], "pricing");
    assert!(up["self_check"]["fuel_used"].as_u64().unwrap() > 0, "{up}");
    let id = up["id"].as_str().unwrap().to_string();
    // The same bytes again: nothing changes.
    let again = server.upload_plugin(&key, plugin_wasm("pricing-flat"), "").await;
    assert_eq!(again.assert_ok(200)["created"], false);
    assert_eq!(again.data()["id"], id.as_str());

    // Uploaded is not active.
    let got = server.get(&format!("/admin/plugins/{}", &id[..12]), &key).await;
    assert_eq!(got.assert_ok(200)["status"], "inactive");
    assert_eq!(active_pricing(&server, &key).await["name"], "pricing-tiered");

    // Runs on demand with any config, without being active.
    let r = server
        .post(&format!("/admin/plugins/{id}/run"), &key, json!({"input": rate_input(), "config": {"fee_micros": 5}}))
        .await;
    assert_eq!(r.assert_ok(200)["ok"]["total_micros"], 5, "{}", r.body);
    assert!(r.data()["activation_id"].is_null());

    // A config its schema refuses.
    let r =
        server.post(&format!("/admin/plugins/{id}/activate"), &key, json!({"config": {"fee_micros": "lots"}})).await;
    r.assert_error(422, "INVALID_CONFIG");
    assert!(!r.body["error"]["details"]["errors"].as_array().unwrap().is_empty(), "{}", r.body);
    let r = server.post(&format!("/admin/plugins/{id}/activate"), &key, json!({"target": "galaxy"})).await;
    r.assert_error(400, "INVALID_REQUEST");
    let r = server.post(&format!("/admin/plugins/{id}/activate"), &key, json!({"target": "canary"})).await;
    r.assert_error(400, "INVALID_REQUEST");

    // Activate globally: the next call runs it.
    let r =
        server.post(&format!("/admin/plugins/{id}/activate"), &key, json!({"config": {"fee_micros": 7000000}})).await;
    let activation = r.assert_ok(200).clone();
    assert_eq!(activation["target"], "global");
    assert_eq!(activation["plugin_id"], id.as_str());
    let now = active_pricing(&server, &key).await;
    assert_eq!(now["name"], "pricing-flat");
    assert_eq!(now["ok"]["total_micros"], 7_000_000);
    assert_eq!(now["activation_id"], activation["id"]);

    // Per-org beats global; per-plan beats global.
    let (org, _) = server.tenant();
    let tiered_id = tiered["plugin_id"].as_str().unwrap();
    let r = server
        .post(&format!("/admin/plugins/{tiered_id}/activate"), &key, json!({"target": format!("org:{org}")}))
        .await;
    r.assert_ok(200);
    let input = json!({"input": rate_input(), "org_id": org});
    let r = server.post("/admin/plugins/active/pricing/run", &key, input).await;
    assert_eq!(r.assert_ok(200)["name"], "pricing-tiered", "{}", r.body);
    let input = json!({"input": rate_input(), "plan": "free"});
    assert_eq!(server.post("/admin/plugins/active/pricing/run", &key, input).await.data()["name"], "pricing-flat");
    let r = server
        .post(&format!("/admin/plugins/{tiered_id}/deactivate"), &key, json!({"target": format!("org:{org}")}))
        .await;
    r.assert_ok(200);
    let input = json!({"input": rate_input(), "org_id": org});
    assert_eq!(server.post("/admin/plugins/active/pricing/run", &key, input).await.data()["name"], "pricing-flat");

    // Roll back to the version before: the built-in, with its old config.
    let r = server.post(&format!("/admin/plugins/{id}/rollback"), &key, json!({})).await;
    assert_eq!(r.assert_ok(200)["plugin_id"], tiered_id);
    let back = active_pricing(&server, &key).await;
    assert_eq!(back["name"], "pricing-tiered");
    assert_eq!(back["ok"]["total_micros"], STARTER_TOTAL);
    // Nothing to roll back from a plugin that is no longer current.
    server.post(&format!("/admin/plugins/{id}/rollback"), &key, json!({})).await.assert_error(409, "CONFLICT");

    // History keeps every activation of the flat plugin.
    let detail = server.get(&format!("/admin/plugins/{id}"), &key).await;
    let detail = detail.assert_ok(200);
    assert_eq!(detail["status"], "inactive");
    let history = detail["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{detail}");
    assert!(history[0]["deactivated_at"].is_string(), "{detail}");

    // Roll forward again by activating; the config defaults to the current one's.
    server
        .post(&format!("/admin/plugins/{id}/activate"), &key, json!({"config": {"fee_micros": 1}}))
        .await
        .assert_ok(200);
    assert_eq!(active_pricing(&server, &key).await["ok"]["total_micros"], 1);
    // Deactivating the global pricing plugin leaves none.
    server.post(&format!("/admin/plugins/{id}/deactivate"), &key, Value::Null).await.assert_ok(200);
    let r = server.post("/admin/plugins/active/pricing/run", &key, json!({"input": rate_input()})).await;
    r.assert_error(404, "PLUGIN_NOT_FOUND");
    server.post(&format!("/admin/plugins/{id}/deactivate"), &key, json!({})).await.assert_error(409, "CONFLICT");

    // Lookups.
    server.get("/admin/plugins/0000000000000000", &key).await.assert_error(404, "PLUGIN_NOT_FOUND");
    server.get("/admin/plugins/xyz", &key).await.assert_error(404, "PLUGIN_NOT_FOUND");
    let list = server.get("/admin/plugins?kind=pricing", &key).await;
    assert_eq!(list.assert_ok(200)["plugins"].as_array().unwrap().len(), 2);
    server.get("/admin/plugins?kind=sorcery", &key).await.assert_error(400, "INVALID_REQUEST");
}

async fn active_pricing(server: &TestServer, key: &str) -> Value {
    let r = server.post("/admin/plugins/active/pricing/run", key, json!({"input": rate_input()})).await;
    r.assert_ok(200).clone()
}

/// Sends `wasm` as a chunked upload (no Content-Length) over a raw
/// connection; the status line's code, or None if the server reset the
/// connection before answering.
async fn chunked_upload_status(server: &TestServer, key: &str, wasm: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /admin/plugins HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/wasm\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    for chunk in wasm.chunks(64 << 10) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if stream.write_all(&framed).await.is_err() {
            break; // the server answered and closed; read what it said
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 512];
    let n = stream.read(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Bad uploads: each refused with its exact reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_with_the_reason() {
    // A 4 MiB plugin cap, so "too large" needs no 32 MiB test bodies.
    let server = TestServer::start_with(Backend::Sqlite, &[("MEMHOST_PLUGINS__MAX_PLUGIN_BYTES", "4194304")]).await;
    let (_, key) = server.operator();
    let refuse = |wasm: Vec<u8>, query: &'static str, code: &'static str| {
        let server = &server;
        let key = key.clone();
        async move {
            let r = server.upload_plugin(&key, wasm, query).await;
            r.assert_error(422, code);
            assert_eq!(r.body["error"]["details"]["reason"], code.to_ascii_lowercase(), "{}", r.body);
            r.body["error"]["message"].as_str().unwrap().to_string()
        }
    };

    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let m = refuse(garbage, "", "NOT_A_COMPONENT").await;
    assert!(m.contains("magic"), "{m}");
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let m = refuse(core_module, "", "NOT_A_COMPONENT").await;
    assert!(m.contains("core WebAssembly module"), "{m}");
    let mut truncated = plugin_wasm("pricing-flat");
    truncated.truncate(truncated.len() / 2);
    refuse(truncated, "", "INVALID_COMPONENT").await;

    let m = refuse(plugin_wasm("ratelimit-tiered"), "kind=pricing", "WRONG_WORLD").await;
    assert!(m.contains("rate-limit"), "{m}");
    let m = refuse(plugin_wasm("hostile-import"), "", "FORBIDDEN_IMPORT").await;
    assert!(m.contains("http-outbound"), "{m}");
    let m = refuse(plugin_wasm("hostile-wit-too-new"), "", "WIT_VERSION_UNSUPPORTED").await;
    assert!(m.contains("0.9.0") && m.contains("newer"), "{m}");
    let m = refuse(plugin_wasm("missing-describe"), "", "MISSING_EXPORT").await;
    assert!(m.contains("meta"), "{m}");

    // Over the cap: 413 PLUGIN_TOO_LARGE naming both sizes, whether the
    // client declared the length or streamed the body without one.
    let mut big = b"\0asm\x0d\0\x01\0".to_vec();
    big.resize(5 << 20, 0);
    let r = server.upload_plugin(&key, big.clone(), "").await;
    r.assert_error(413, "PLUGIN_TOO_LARGE");
    assert_eq!(r.body["error"]["details"]["size_bytes"], 5 << 20, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["limit_bytes"], 4 << 20, "{}", r.body);
    let m = r.body["error"]["message"].as_str().unwrap();
    assert!(m.contains("5.0 MiB") && m.contains("4.0 MiB") && m.contains("max_plugin_bytes"), "{m}");
    // Chunked, without a length: refused as soon as the cap is passed.
    assert_eq!(chunked_upload_status(&server, &key, &big[..(4 << 20) + 1]).await, Some(413));
    let once = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut huge = b"\0asm\x0d\0\x01\0".to_vec();
    huge.resize(40 << 20, 0);
    // The server answers 413 without reading the whole body and closes the
    // connection; a client still sending may see the reset instead of the
    // answer, so try a few times for the answer.
    // A client of its own, so no connection the server closed goes back to
    // the shared pool.
    let mut answered = None;
    for _ in 0..5 {
        let request = once
            .post(format!("{}/admin/plugins", server.base))
            .bearer_auth(&key)
            .header("content-type", "application/wasm")
            .body(huge.clone());
        if let Ok(response) = request.send().await {
            let connection = response.headers().get("connection").and_then(|v| v.to_str().ok()).map(str::to_string);
            answered = Some((response.status().as_u16(), connection, response.text().await.unwrap_or_default()));
            break;
        }
    }
    let (status, connection, body) = answered.expect("an answer to an oversized upload");
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("PLUGIN_TOO_LARGE") && body.contains(&(40u64 << 20).to_string()), "{body}");
    assert_eq!(connection.as_deref(), Some("close"), "a 413 must close the connection");

    server.upload_plugin(&key, Vec::new(), "").await.assert_error(400, "INVALID_REQUEST");
    server.upload_plugin(&key, plugin_wasm("pricing-flat"), "kind=magic").await.assert_error(400, "INVALID_REQUEST");
    server.upload_plugin(&key, plugin_wasm("pricing-flat"), "fuel=0").await.assert_error(400, "INVALID_REQUEST");
    server.upload_plugin(&key, plugin_wasm("pricing-flat"), "bogus=1").await.assert_error(400, "INVALID_REQUEST");

    // Nothing refused was stored: only the built-ins are there.
    let list = server.get("/admin/plugins", &key).await;
    let plugins = list.assert_ok(200)["plugins"].as_array().unwrap().clone();
    assert!(plugins.iter().all(|p| p["uploaded_by"] == "builtin"), "{}", list.body);
}

/// Hostile guests: stored (they behave on the self-check input), then
/// triggered. Activation with the triggering config is refused; a run is
/// stopped with the reason; the server keeps serving other requests the
/// whole time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained() {
    let server = Arc::new(TestServer::start(Backend::Sqlite).await);
    let (_, key) = server.operator();
    let (_, tenant) = server.tenant();

    // Ordinary traffic alongside, which must never fail.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (server, stop, tenant) = (server.clone(), stop.clone(), tenant.clone());
        tokio::spawn(async move {
            let mut served = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let r = server.post("/v1/memories", &tenant, json!({"text": format!("note {served}")})).await;
                assert_eq!(r.status.as_u16(), 201, "memory write during hostile run: {}", r.body);
                let r = server.get("/health", &tenant).await;
                assert_eq!(r.status.as_u16(), 200, "{}", r.body);
                served += 1;
            }
            served
        })
    };

    let misbehave = json!({"misbehave": true});
    for (fixture, trap) in [
        ("hostile-loop", "out_of_fuel"),
        ("hostile-memory", "memory_limit"),
        ("hostile-panic", "trap"),
        ("hostile-recursion", "stack_overflow"),
        ("hostile-output", "output_too_large"),
    ] {
        let up = server.upload_plugin(&key, plugin_wasm(fixture), "kind=pricing").await;
        let id = up.assert_ok(201)["id"].as_str().unwrap().to_string();

        // Refused as the active pricing plugin with the config that triggers it.
        let r = server
            .post(
                &format!("/admin/plugins/{id}/activate"),
                &key,
                json!({"target": "plan:starter", "config": misbehave}),
            )
            .await;
        r.assert_error(422, "SELF_CHECK_FAILED");
        assert_eq!(r.body["error"]["details"]["trap"], trap, "{fixture}: {}", r.body);

        // Contained when run.
        let started = Instant::now();
        let r = server
            .post(&format!("/admin/plugins/{id}/run"), &key, json!({"input": rate_input(), "config": misbehave}))
            .await;
        r.assert_error(422, "PLUGIN_FAILED");
        assert_eq!(r.body["error"]["details"]["trap"], trap, "{fixture}: {}", r.body);
        assert!(started.elapsed() < Duration::from_secs(10), "{fixture} took {:?}", started.elapsed());

        // And harmless with a calm config: the sandbox is fresh each call.
        let r =
            server.post(&format!("/admin/plugins/{id}/run"), &key, json!({"input": rate_input(), "config": {}})).await;
        assert_eq!(r.assert_ok(200)["ok"]["total_micros"], 0, "{fixture}: {}", r.body);
    }

    // The same bytes with other limits are not silently stored twice.
    let r = server.upload_plugin(&key, plugin_wasm("hostile-loop"), "fuel=20000000").await;
    r.assert_error(409, "CONFLICT");

    stop.store(true, Ordering::Relaxed);
    let served = background.await.expect("background traffic never failed");
    assert!(served > 0, "background traffic ran");
    // The active pricing plugin is still the built-in, untouched.
    assert_eq!(active_pricing(&server, &key).await["name"], "pricing-tiered");
}

/// Activating v2 and restoring v1 while requests run the active plugin
/// continuously: no request fails, and every request that starts after an
/// activation returns sees the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load() {
    let server = Arc::new(TestServer::start(Backend::Sqlite).await);
    let (_, key) = server.operator();
    let v2 = server.upload_plugin(&key, plugin_wasm("pricing-flat"), "").await;
    let v2_id = v2.assert_ok(201)["id"].as_str().unwrap().to_string();

    let admin = key.clone();
    let observe = move |server: Arc<TestServer>| {
        let key = key.clone();
        async move {
            let r = server.post("/admin/plugins/active/pricing/run", &key, json!({"input": rate_input()})).await;
            assert_eq!(r.status.as_u16(), 200, "request during hot swap failed: {}", r.body);
            r.data()["ok"]["total_micros"].as_i64().unwrap()
        }
    };
    hot_swap(&server, &admin, &v2_id, json!({"fee_micros": 7000000}), (STARTER_TOTAL, 7_000_000), observe).await;
}

/// Two instances on one PostgreSQL database: an activation made through one
/// is followed by the other within a second (LISTEN/NOTIFY change feed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_instances_follow_activations() {
    let a = TestServer::start(Backend::Postgres).await;
    let url = a.database_url().expect("postgres");
    let b = TestServer::start_with(Backend::Postgres, &[("DATABASE_URL", &url)]).await;
    let (_, key) = a.operator();
    let up = a.upload_plugin(&key, plugin_wasm("pricing-flat"), "").await;
    let id = up.assert_ok(201)["id"].as_str().unwrap().to_string();
    assert_eq!(active_pricing(&b, &key).await["name"], "pricing-tiered");

    let wait_for = |name: &'static str| {
        let b = &b;
        let key = key.clone();
        async move {
            let start = Instant::now();
            loop {
                if active_pricing(b, &key).await["name"] == name {
                    return start.elapsed();
                }
                assert!(start.elapsed() < Duration::from_secs(5), "instance b never switched to {name}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    a.post(&format!("/admin/plugins/{id}/activate"), &key, json!({"config": {"fee_micros": 3}})).await.assert_ok(200);
    let followed = wait_for("pricing-flat").await;
    assert!(followed < Duration::from_secs(1), "instance b followed the activation after {followed:?}");
    a.post(&format!("/admin/plugins/{id}/rollback"), &key, json!({})).await.assert_ok(200);
    let followed = wait_for("pricing-tiered").await;
    assert!(followed < Duration::from_secs(1), "instance b followed the rollback after {followed:?}");
}

/// Uploads compile in the background: with `wait=0` the answer is 202 with
/// the phase and a Location; polling shows `ready` (then the plugin itself)
/// or `refused` with the reason the synchronous answer would have given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_compile_in_the_background() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, key) = server.operator();
    let poll = |id: String| {
        let (server, key) = (&server, key.clone());
        async move {
            for _ in 0..600 {
                let r = server.get(&format!("/admin/plugins/{id}"), &key).await;
                let data = r.assert_ok(200).clone();
                if !matches!(data["state"].as_str(), Some("queued" | "compiling")) {
                    return data;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("upload {id} still compiling after a minute");
        }
    };

    let r = server.upload_plugin(&key, plugin_wasm("pricing-flat"), "wait=0").await;
    let id = if r.status.as_u16() == 202 {
        let pending = r.assert_ok(202);
        assert!(matches!(pending["state"].as_str(), Some("queued" | "compiling")), "{pending}");
        assert!(pending["elapsed_ms"].as_i64().is_some(), "{pending}");
        let id = pending["id"].as_str().unwrap().to_string();
        assert_eq!(r.headers["location"], format!("/admin/plugins/{id}").as_str());
        id
    } else {
        // A small plugin may already be done: that is the 201 answer.
        r.assert_ok(201)["id"].as_str().unwrap().to_string()
    };
    let ready = poll(id.clone()).await;
    assert_eq!(ready["state"], "ready", "{ready}");
    assert_eq!(ready["name"], "pricing-flat", "{ready}");
    assert_eq!(ready["id"], id.as_str());
    // Stored: the same bytes again are a 200 with nothing changed.
    let again = server.upload_plugin(&key, plugin_wasm("pricing-flat"), "").await;
    assert_eq!(again.assert_ok(200)["created"], false);

    // A refusal found only after compiling is shown to the poller.
    let r = server.upload_plugin(&key, plugin_wasm("missing-describe"), "wait=0").await;
    let refused = if r.status.as_u16() == 202 {
        poll(r.data()["id"].as_str().unwrap().to_string()).await
    } else {
        r.assert_error(422, "MISSING_EXPORT");
        let id = hex_sha256(&plugin_wasm("missing-describe"));
        poll(id).await
    };
    assert_eq!(refused["state"], "refused", "{refused}");
    assert_eq!(refused["error"]["code"], "MISSING_EXPORT", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("meta"), "{refused}");
    // Waiting (the default) gives the refusal itself.
    server.upload_plugin(&key, plugin_wasm("missing-describe"), "").await.assert_error(422, "MISSING_EXPORT");
    server.upload_plugin(&key, plugin_wasm("pricing-flat"), "wait=61").await.assert_error(400, "INVALID_REQUEST");
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Runs the active pricing plugin as for an org (its plan) and a key environment.
async fn price_as(server: &TestServer, key: &str, org: &str, env: &str) -> Value {
    let body = json!({"input": rate_input(), "org_id": org, "env": env});
    server.post("/admin/plugins/active/pricing/run", key, body).await.assert_ok(200).clone()
}

/// A canary chosen by a Rhai rule over org, plan, environment and bucket,
/// stored with the activation, refused with the reason when bad.
async fn canary_routing_rules(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, key) = server.operator();
    let up = server.upload_plugin(&key, plugin_wasm("pricing-flat"), "").await;
    let id = up.assert_ok(201)["id"].as_str().unwrap().to_string();
    let starter = server.create_org("starter");
    let free = server.create_org("free");

    let activate = |body: Value| {
        let (server, key, id) = (&server, &key, &id);
        async move { server.post(&format!("/admin/plugins/{id}/activate"), key, body).await }
    };
    // Refused with the reason: a misspelt variable, not a bool, rules off-canary.
    let r = activate(json!({"target": "canary", "rule": "plna == \"starter\"", "config": {"fee_micros": 1}})).await;
    r.assert_error(400, "INVALID_ROUTING_RULE");
    assert!(r.body["error"]["details"]["reason"].as_str().unwrap().contains("plna"), "{}", r.body);
    let r = activate(json!({"target": "canary", "rule": "plan", "config": {"fee_micros": 1}})).await;
    r.assert_error(400, "INVALID_ROUTING_RULE");
    let r = activate(json!({"target": "global", "rule": "true", "config": {"fee_micros": 1}})).await;
    r.assert_error(400, "INVALID_REQUEST");

    let rule = r#"plan == "starter" && env == "live""#;
    let r = activate(json!({"target": "canary", "rule": rule, "config": {"fee_micros": 5000000}})).await;
    let activation = r.assert_ok(200).clone();
    assert_eq!(activation["routing_rule"], rule, "{activation}");
    assert!(activation["canary_percent"].is_null());

    // Live starter calls go to the canary; test keys and other plans do not.
    let canary = price_as(&server, &key, &starter, "live").await;
    assert_eq!(canary["plugin_id"], id.as_str(), "{canary}");
    assert_eq!(canary["ok"]["total_micros"], 5_000_000);
    let test_env = price_as(&server, &key, &starter, "test").await;
    assert_ne!(test_env["plugin_id"], id.as_str(), "{test_env}");
    assert_eq!(test_env["ok"]["total_micros"], STARTER_TOTAL);
    let other_plan = price_as(&server, &key, &free, "live").await;
    assert_ne!(other_plan["plugin_id"], id.as_str(), "{other_plan}");

    // `bucket` is the org's stable bucket, the one `hash` gives for its id.
    let bucket_rule = format!(r#"plan == "starter" && bucket == hash("{starter}")"#);
    activate(json!({"target": "canary", "rule": bucket_rule, "config": {"fee_micros": 6000000}})).await.assert_ok(200);
    assert_eq!(price_as(&server, &key, &starter, "live").await["ok"]["total_micros"], 6_000_000);

    // Shown in the plugin's history; a rollback keeps the rule it had.
    let detail = server.get(&format!("/admin/plugins/{id}"), &key).await.assert_ok(200).clone();
    let history = detail["history"].as_array().unwrap();
    assert!(history.iter().any(|a| a["routing_rule"] == rule), "{detail}");
    let r = server.get("/admin/plugins?kind=pricing", &key).await;
    assert!(r.assert_ok(200)["plugins"].as_array().unwrap().iter().any(|p| p["id"] == id.as_str()));
    // Ends the canary: starter is priced by the global version again.
    server.post(&format!("/admin/plugins/{id}/deactivate"), &key, json!({"target": "canary"})).await.assert_ok(200);
    assert_eq!(price_as(&server, &key, &starter, "live").await["ok"]["total_micros"], STARTER_TOTAL);
}

/// The server keeps the last calls of each plugin; `plugin fixtures pull`
/// saves them, and `plugin test` replays them against the .wasm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_calls_become_fixtures() {
    let server = TestServer::start_with(Backend::Sqlite, &[("MEMHOST_PLUGINS__RECORDED_CALLS", "3")]).await;
    let (_, key) = server.operator();
    let list = server.get("/admin/plugins?kind=rate-limit", &key).await;
    let limiter = list.assert_ok(200)["plugins"].as_array().unwrap()[0]["id"].as_str().unwrap().to_string();
    // Real traffic: each request class the limiter has not answered yet is a call.
    let (_, tenant) = server.tenant();
    for path in ["/v1/memories", "/v1/usage", "/v1/account", "/v1/invoices"] {
        server.get(path, &tenant).await;
    }
    let r = server.get(&format!("/admin/plugins/{limiter}/calls"), &key).await;
    let calls = r.assert_ok(200)["calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 3, "the last 3 only: {}", r.body);
    for call in &calls {
        assert_eq!(call["input"]["function"], "rules", "{call}");
        assert!(call["expect"]["ok"].is_array(), "{call}");
        assert!(call["config"].is_object(), "rate-limit configs are kept: {call}");
    }
    // The oldest were dropped (this request itself may be the newest).
    let routes: Vec<&str> = calls.iter().map(|c| c["input"]["route"].as_str().unwrap()).collect();
    assert!(routes.contains(&"/v1/invoices") && !routes.contains(&"/v1/memories"), "{routes:?}");
    let times: Vec<&str> = calls.iter().map(|c| c["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    server.get("/admin/plugins/ffffffffffff/calls", &key).await.assert_error(404, "PLUGIN_NOT_FOUND");

    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures");
    let out = std::process::Command::new(crate::common::BIN)
        .args(["plugin", "fixtures", "pull", &limiter[..12], "--dir", fixtures.to_str().unwrap()])
        .env("MEMHOST_URL", &server.base)
        .env("MEMHOST_API_KEY", &key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3 fixture(s)"), "{stdout}");
    let wasm = dir.path().join("limiter.wasm");
    std::fs::write(&wasm, plugin_wasm("ratelimit-tiered")).unwrap();
    let out = std::process::Command::new(crate::common::BIN)
        .args(["plugin", "test", wasm.to_str().unwrap(), fixtures.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .env("MEMHOST_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3 fixtures: 3 passed, 0 failed"), "{stdout}");
}
