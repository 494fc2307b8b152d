use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(
    envelope_on_every_error,
    request_id_echoed_or_generated,
    body_validation_names_the_field,
    oversized_body_is_413
);

async fn envelope_on_every_error(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    s.call(Method::GET, "/v1/nowhere", Some(&key), None).await.assert_error(404, "NOT_FOUND");
    s.call(Method::GET, "/", None, None).await.assert_error(404, "NOT_FOUND");
    let r = s.call(Method::PATCH, "/v1/memories", Some(&key), None).await;
    r.assert_error(405, "METHOD_NOT_ALLOWED");
    assert!(r.headers.get("allow").is_some(), "405 keeps the Allow header");
    s.call(Method::POST, "/v1/account", Some(&key), None).await.assert_error(405, "METHOD_NOT_ALLOWED");
    s.call(Method::GET, "/v1/memories", None, None).await.assert_error(401, "INVALID_API_KEY");
}

async fn request_id_echoed_or_generated(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    let r = s
        .send(s.client.get(format!("{}/v1/memories", s.base)).bearer_auth(&key).header("X-Request-ID", "trace-abc-123"))
        .await;
    assert_eq!(r.body["meta"]["request_id"], "trace-abc-123");
    assert_eq!(r.headers["x-request-id"], "trace-abc-123");
    // also on errors
    let r = s.send(s.client.get(format!("{}/v1/memories", s.base)).header("X-Request-ID", "trace-err-1")).await;
    assert_eq!(r.body["meta"]["request_id"], "trace-err-1");
    // generated when absent or unusable
    let r = s.get("/v1/memories", &key).await;
    let id = r.body["meta"]["request_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(r.headers["x-request-id"].to_str().unwrap(), id);
    let r = s
        .send(s.client.get(format!("{}/v1/memories", s.base)).bearer_auth(&key).header("X-Request-ID", "x".repeat(300)))
        .await;
    assert!(r.body["meta"]["request_id"].as_str().unwrap().starts_with("req_"));
}

async fn body_validation_names_the_field(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    let cases = [
        (json!({"text": 5}), "text"),
        (json!({"metadata": {}}), "text"),
        (json!({"text": ""}), "text"),
        (json!({"text": "   "}), "text"),
        (json!({"text": "ok", "metadata": "not an object"}), "metadata"),
        (json!({"text": "ok", "metadata": [1, 2]}), "metadata"),
        (json!({"text": "ok", "colour": "blue"}), "colour"),
        (json!({"text": "x".repeat(100_001)}), "text"),
        (json!({"text": "ok", "metadata": {"big": "y".repeat(70_000)}}), "metadata"),
    ];
    for (body, field) in cases {
        let r = s.post("/v1/memories", &key, body.clone()).await;
        r.assert_error(400, "INVALID_REQUEST");
        assert_eq!(r.body["error"]["details"]["field"], field, "{body:.80}: {}", r.body);
    }
    for (body, field) in [
        (json!({"context": "tea", "max_memories": 0}), "max_memories"),
        (json!({"context": "tea", "max_memories": 101}), "max_memories"),
        (json!({"context": "tea", "max_memories": "ten"}), "max_memories"),
        (json!({"context": "tea", "relevance_threshold": 1.5}), "relevance_threshold"),
        (json!({"context": ""}), "query"),
        (json!({"max_memories": 3}), "context"),
    ] {
        let r = s.post("/v1/retrieve", &key, body.clone()).await;
        r.assert_error(400, "INVALID_REQUEST");
        assert_eq!(r.body["error"]["details"]["field"], field, "{body}: {}", r.body);
    }
    // Not JSON at all, and JSON without the content type.
    let r = s
        .send(
            s.client
                .post(format!("{}/v1/memories", s.base))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body("{oops"),
        )
        .await;
    r.assert_error(400, "INVALID_REQUEST");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("not valid JSON"));
    let r = s.send(s.client.post(format!("{}/v1/memories", s.base)).bearer_auth(&key).body(r#"{"text":"hi"}"#)).await;
    r.assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    // Nothing was stored by any of these.
    assert!(s.get("/v1/memories", &key).await.data()["memories"].as_array().unwrap().is_empty());
}

async fn oversized_body_is_413(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    let big = format!(r#"{{"text": "{}"}}"#, "a".repeat(10 * 1024 * 1024 + 1));
    let r = s
        .send(
            s.client
                .post(format!("{}/v1/memories", s.base))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    r.assert_error(413, "PAYLOAD_TOO_LARGE");
    // The server is fine afterwards.
    s.get("/v1/memories", &key).await.assert_ok(200);
}
