use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer};
use crate::fake_llm;

both_backends!(health_and_ready, sigterm_lets_in_flight_requests_finish);

async fn health_and_ready(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.call(Method::GET, "/health", None, None).await;
    assert_eq!(r.assert_ok(200)["status"], "ok");
    let r = s.call(Method::GET, "/ready", None, None).await;
    let data = r.assert_ok(200);
    assert_eq!(data["status"], "ready");
    assert_eq!(data["database"], if backend == Backend::Sqlite { "sqlite" } else { "postgres" });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_endpoint_and_docs_work_offline() {
    let s = TestServer::start(Backend::Sqlite).await;
    let spec: serde_json::Value =
        s.client.get(format!("{}/openapi.json", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/memories", &["get", "post", "delete"][..]),
        ("/v1/memories/{id}", &["get", "put", "delete"]),
        ("/v1/memories/{id}/history", &["get"]),
        ("/v1/retrieve", &["post"]),
        ("/v1/query", &["post"]),
        ("/v1/query/answer", &["post"]),
        ("/v1/account", &["get"]),
        ("/v1/account/api-keys", &["get", "post"]),
        ("/v1/account/api-keys/{key_id}", &["delete"]),
        ("/v1/account/api-keys/{key_id}/rotate", &["post"]),
        ("/health", &["get"]),
        ("/ready", &["get"]),
    ] {
        for m in methods {
            assert!(paths.get(path).and_then(|p| p.get(*m)).is_some(), "{m} {path} missing from OpenAPI");
        }
    }
    assert_eq!(spec["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    // The docs page and its assets come from the binary, not a CDN.
    let page = s.client.get(format!("{}/docs/", s.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html:.200}");
    assert!(!html.contains("https://"), "no external assets: {html}");
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css", "swagger-initializer.js"] {
        let r = s.client.get(format!("{}/docs/{asset}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.bytes().await.unwrap().len() > 100, "{asset}");
    }
    let init =
        s.client.get(format!("{}/docs/swagger-initializer.js", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(init.contains("/openapi.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_the_allow_list() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("MEMHOST_CORS_ORIGINS", "https://app.example.com, https://admin.example.com")],
    )
    .await;
    let preflight = |origin: &'static str| {
        s.client
            .request(Method::OPTIONS, format!("{}/v1/memories", s.base))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization, content-type")
    };
    let ok = preflight("https://app.example.com").send().await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
    let denied = preflight("https://evil.example.net").send().await.unwrap();
    assert!(denied.headers().get("access-control-allow-origin").is_none());
    let r =
        s.client.get(format!("{}/health", s.base)).header("Origin", "https://admin.example.com").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://admin.example.com");

    // Without configuration, no CORS headers at all.
    let plain = TestServer::start(Backend::Sqlite).await;
    let r = plain
        .client
        .get(format!("{}/health", plain.base))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

async fn sigterm_lets_in_flight_requests_finish(backend: Backend) {
    // A slow answer provider keeps a request in flight while we signal.
    let fake = fake_llm::start(Duration::from_millis(1500), 384).await;
    let mut s = TestServer::start_with(
        backend,
        &[("MEMHOST_ANSWERS__PROVIDER", "openai"), ("MEMHOST_ANSWERS__BASE_URL", fake.url.as_str())],
    )
    .await;
    let (_, key) = s.tenant();
    s.add(&key, "the meeting is on Friday", json!({})).await;

    let client = s.client.clone();
    let url = format!("{}/v1/query/answer", s.base);
    let k = key.clone();
    let in_flight = tokio::spawn(async move {
        client.post(url).bearer_auth(k).json(&json!({"context": "when is the meeting"})).send().await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.terminate();
    let response = in_flight.await.unwrap().expect("in-flight request completed");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"]["answer"], "FAKE ANSWER to: when is the meeting");
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0), "clean exit; log:\n{}", s.log());
    // And it no longer accepts connections.
    assert!(s.client.get(format!("{}/health", s.base)).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("memhost.toml");
    std::fs::write(&file, "cors_origins = [\"https://from-file.example.com\"]\nmax_body_bytes = 2048\n").unwrap();
    let path = file.display().to_string();
    // The file sets both; the environment overrides one of them.
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("MEMHOST_CONFIG", path.as_str()), ("MEMHOST_MAX_BODY_BYTES", "4096")],
    )
    .await;
    let r = s
        .client
        .get(format!("{}/health", s.base))
        .header("Origin", "https://from-file.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://from-file.example.com");
    let (_, key) = s.tenant();
    let r = s.post("/v1/memories", &key, json!({"text": "x".repeat(3000)})).await;
    r.assert_ok(201);
    let r = s.post("/v1/memories", &key, json!({"text": "x".repeat(5000)})).await;
    r.assert_error(413, "PAYLOAD_TOO_LARGE");

    // A bad configuration stops the process with a clear message.
    let out = std::process::Command::new(crate::common::BIN)
        .arg("serve")
        .env("MEMHOST_CONFIG", &path)
        .env("MEMHOST_LISTN", "oops")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"), "{}", String::from_utf8_lossy(&out.stderr));
}
