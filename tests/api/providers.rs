use std::time::Duration;

use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer, env_refs};
use crate::fake_llm;

both_backends!(openai_compatible_providers_are_used, provider_failures_are_502_and_store_nothing);

pub(crate) fn provider_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MEMHOST_EMBEDDINGS__PROVIDER", "openai".into()),
        ("MEMHOST_EMBEDDINGS__BASE_URL", url.into()),
        ("MEMHOST_EMBEDDINGS__MODEL", "fake-embed".into()),
        ("MEMHOST_EMBEDDINGS__API_KEY", "sk-fake-embed".into()),
        ("MEMHOST_ANSWERS__PROVIDER", "openai".into()),
        ("MEMHOST_ANSWERS__BASE_URL", url.into()),
        ("MEMHOST_ANSWERS__MODEL", "fake-chat".into()),
        ("MEMHOST_ANSWERS__API_KEY", "sk-fake-chat".into()),
    ]
}

async fn start(backend: Backend, url: &str) -> TestServer {
    TestServer::start_with(backend, &env_refs(&provider_env(url))).await
}

async fn openai_compatible_providers_are_used(backend: Backend) {
    let fake = fake_llm::start(Duration::ZERO, 384).await;
    let s = start(backend, &fake.url).await;
    let (_, key) = s.tenant();
    s.add(&key, "apples are red", json!({})).await;
    s.add(&key, "bananas are yellow", json!({})).await;

    let r = s.post("/v1/query/answer", &key, json!({"context": "about bananas", "relevance_threshold": 0.5})).await;
    let data = r.assert_ok(200).clone();
    assert_eq!(data["answer"], "FAKE ANSWER to: about bananas");
    assert_eq!(data["model"], "fake-chat");
    // The fake embeds by first letter: only the "a…" memory shares the axis of "about".
    assert_eq!(data["memories"][0]["text"], "apples are red");
    assert_eq!(data["memories"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["meta"]["usage"]["model_calls"], 2, "one embedding call and one chat call");
    assert!(r.body["meta"]["usage"]["tokens_processed"].as_u64().unwrap() >= 42);

    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.embedding_calls, 3);
    assert_eq!(seen.chat_calls, 1);
    assert!(seen.authorization.contains(&"Bearer sk-fake-embed".to_string()));
    assert!(seen.authorization.contains(&"Bearer sk-fake-chat".to_string()));
    assert!(seen.models.contains(&"fake-embed".to_string()));
}

async fn provider_failures_are_502_and_store_nothing(backend: Backend) {
    // Nothing listens on this port.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let s = start(backend, &dead).await;
    let (_, key) = s.tenant();
    let r = s.post("/v1/memories", &key, json!({"text": "will not be stored"})).await;
    r.assert_error(502, "PROVIDER_ERROR");
    assert!(!s.log().contains("sk-fake"), "provider keys are never logged");
    assert!(s.get("/v1/memories", &key).await.data()["memories"].as_array().unwrap().is_empty());

    // A model with the wrong dimension is refused clearly.
    let fake = fake_llm::start(Duration::ZERO, 1536).await;
    let s = start(backend, &fake.url).await;
    let (_, key) = s.tenant();
    let r = s.post("/v1/memories", &key, json!({"text": "x"})).await;
    r.assert_error(502, "PROVIDER_ERROR");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("1536"), "{}", r.body);
}
