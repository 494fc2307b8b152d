//! The request path's own guarantees: limits before authentication, keys in
//! URLs however encoded, panics that answer in the envelope, and a request
//! id on every log line of a request.

use reqwest::Method;
use serde_json::Value;

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(
    wrong_keys_from_one_address_get_429_after_the_per_address_limit,
    concurrent_guesses_do_not_slip_past_the_per_address_limit,
    encoded_keys_in_urls_are_refused,
    multibyte_key_ids_are_404_not_a_dropped_connection,
    a_panicking_handler_answers_500_and_the_server_serves_on,
);

const WRONG_KEY: &str = "mem_live_0123456789abcdefghijABCDEFGHIJ01";

async fn wrong_keys_from_one_address_get_429_after_the_per_address_limit(backend: Backend) {
    // The default rule: 600 failed authentications a minute per address.
    let s = TestServer::start(backend).await;
    let (_, good_key) = s.tenant();
    s.get("/v1/account", &good_key).await.assert_ok(200);

    // 700 wrong-key requests from this address, 10 at a time (the case).
    let mut statuses = Vec::new();
    for _ in 0..70 {
        let batch = (0..10).map(|i| {
            let key = if i % 5 == 0 { None } else { Some(WRONG_KEY) };
            s.call(Method::GET, "/v1/memories", key, None)
        });
        for r in futures_util::future::join_all(batch).await {
            statuses.push(r.status.as_u16());
        }
    }
    let unauthorized = statuses.iter().filter(|&&c| c == 401).count();
    let limited = statuses.iter().filter(|&&c| c == 429).count();
    assert_eq!(unauthorized, 600, "the first 600 failures are answered 401");
    assert_eq!(limited, 100, "the rest are refused before any key lookup");

    // Refused in the envelope, with when to come back; from this address
    // even a valid key waits until the window frees (its key is not looked up).
    let r = s.call(Method::GET, "/v1/memories", Some(WRONG_KEY), None).await;
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(r.body["error"]["details"]["rule"], "unauthenticated-per-address", "{}", r.body);
    assert_eq!(r.body["error"]["details"]["limit"], 600);
    assert!(r.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    s.get("/v1/account", &good_key).await.assert_error(429, "RATE_LIMIT_EXCEEDED");

    let ready = s.call(Method::GET, "/ready", None, None).await;
    assert!(ready.data()["limits"]["unauthenticated_refusals"].as_u64().unwrap() >= 102, "{}", ready.body);
}

async fn concurrent_guesses_do_not_slip_past_the_per_address_limit(backend: Backend) {
    // 32 connections guessing at once: once the address has failed, no more
    // of its requests reach the key lookup at a time than it has failures
    // left, so the lookups stop at the limit (give or take what the sliding
    // window frees if the test crosses a minute boundary). (Requests already
    // in flight when an address first fails were not checked yet: the
    // bound holds from its first failure on, hence one guess first.)
    let s = std::sync::Arc::new(
        TestServer::start_with(backend, &[("MEMHOST_LIMITS__UNAUTHENTICATED_PER_ADDRESS_PER_MINUTE", "100")]).await,
    );
    s.call(Method::GET, "/v1/memories", Some(WRONG_KEY), None).await.assert_error(401, "INVALID_API_KEY");
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..40 {
                    seen.push(s.call(Method::GET, "/v1/memories", Some(WRONG_KEY), None).await.status.as_u16());
                }
                seen
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for w in workers {
        statuses.extend(w.await.unwrap());
    }
    let unauthorized = statuses.iter().filter(|&&c| c == 401).count();
    let looked_up = unauthorized + 1;
    assert!((100..=104).contains(&looked_up), "{looked_up} of 1281 guesses reached the key lookup");
    assert_eq!(statuses.iter().filter(|&&c| c == 429).count(), 1280 - unauthorized, "the rest were refused");
}

async fn encoded_keys_in_urls_are_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    let encoded: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
    let tail = &key[1..];
    for path in [
        format!("/v1/memories/{encoded}"),
        format!("/v1/memories/%6D{tail}"),
        format!("/v1/memories?x=%6D{tail}"),
        "/v1/memories?%61pi_key=abc".to_string(),
        "/v1/memories?%74oken=abc".to_string(),
    ] {
        // Even with a valid header: a key in a URL is refused outright.
        let r = s.get(&path, &key).await;
        r.assert_error(400, "INVALID_REQUEST");
        assert_eq!(r.body["error"]["details"]["reason"], "api_key_in_url", "{path}: {}", r.body);
    }
    // A percent-encoded path that is not a key still works.
    s.get("/v1/memories/%30", &key).await.assert_error(404, "MEMORY_NOT_FOUND");
}

async fn multibyte_key_ids_are_404_not_a_dropped_connection(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, admin) = s.tenant();
    let r = s.delete("/v1/account/api-keys/%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9x", &admin).await;
    r.assert_error(404, "KEY_NOT_FOUND");
    assert_eq!(r.body["error"]["details"]["id"], "ééééééééx");
    // The address of the issue: a key-shaped id (once decoded) with a
    // multi-byte character where a key prefix would be cut.
    let r = s.delete("/v1/account/api-keys/%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%6Dem_live_x", &admin).await;
    r.assert_error(400, "INVALID_REQUEST");
    assert_eq!(r.body["error"]["details"]["reason"], "api_key_in_url");
    // The server is still there and serving.
    s.get("/v1/account", &admin).await.assert_ok(200);
}

async fn a_panicking_handler_answers_500_and_the_server_serves_on(backend: Backend) {
    // Off by default: the route does not exist.
    let plain = TestServer::start(backend).await;
    let (_, key) = plain.tenant();
    plain.get("/v1/debug/panic", &key).await.assert_error(404, "NOT_FOUND");
    drop(plain);

    let s = TestServer::start_with(backend, &[("MEMHOST_FAULT_INJECTION", "true")]).await;
    let (_, key) = s.tenant();
    for i in 0..3 {
        let id = format!("req_panic_{i}");
        let req = s.client.get(format!("{}/v1/debug/panic", s.base)).bearer_auth(&key).header("x-request-id", &id);
        let r = s.send(req).await;
        r.assert_error(500, "INTERNAL_ERROR");
        assert_eq!(r.body["meta"]["request_id"], id.as_str());
        assert_eq!(r.headers["x-request-id"], id.as_str());
        assert!(r.body["error"]["message"].as_str().unwrap().contains("request_id"));
        assert!(!r.body.to_string().contains("on purpose"), "panic text is not shown to clients: {}", r.body);
        // The next request on the same server is served as usual.
        s.add(&key, "still serving", serde_json::json!({})).await;
    }
    let ready = s.call(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.data()["requests"]["panics"], 3, "{}", ready.body);
    // Logged, with the request id the client was given.
    let log = s.log();
    assert!(
        log.lines().any(|l| l.contains("req_panic_1") && l.contains("on purpose")),
        "the panic is logged with its request id:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_log_lines_carry_its_request_id() {
    for format in ["text", "json"] {
        let s = TestServer::start_with(
            Backend::Sqlite,
            &[("MEMHOST_LOG", "info,memhost::access=debug"), ("MEMHOST_LOG_FORMAT", format)],
        )
        .await;
        let (org, key) = s.tenant();
        let id = format!("req_trace_{format}");
        let req = s.client.get(format!("{}/v1/memories", s.base)).bearer_auth(&key).header("x-request-id", &id);
        s.send(req).await.assert_ok(200);
        // A request whose key fails also has its id on its lines.
        let bad = s.client.get(format!("{}/v1/memories", s.base)).bearer_auth(WRONG_KEY);
        let bad = s.send(bad.header("x-request-id", "req_trace_bad")).await;
        bad.assert_error(401, "INVALID_API_KEY");

        let log = s.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
        assert!(!lines.is_empty(), "{format}: no line names {id}:\n{log}");
        let served = lines.iter().find(|l| l.contains("request served")).expect("the access line");
        assert!(served.contains(&org), "{format}: the org is on the line: {served}");
        assert!(served.contains("/v1/memories"), "{format}: the route is on the line: {served}");
        assert!(!served.contains(&key[9..]), "{format}: never the key: {served}");
        if format == "json" {
            let v: Value = serde_json::from_str(served).expect("JSON log line");
            assert_eq!(v["span"]["request_id"], id.as_str(), "{v}");
            assert_eq!(v["span"]["org"], org.as_str(), "{v}");
            assert_eq!(v["span"]["status"], 200, "{v}");
            assert!(v["span"]["key_id"].as_str().is_some_and(|k| k.starts_with("key_")), "{v}");
        }
        assert!(
            log.lines().any(|l| l.contains("req_trace_bad") && l.contains("401")),
            "{format}: the refused request's line:\n{log}"
        );
    }
}
