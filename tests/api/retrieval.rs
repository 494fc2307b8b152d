use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(ranking_puts_the_relevant_memory_first, query_and_answer, limits_and_threshold);

const CORPUS: &[&str] = &[
    "Alice is allergic to peanuts and carries an epipen.",
    "Alice works as a nurse at the city hospital.",
    "Bob's favourite football team is Arsenal.",
    "Bob is learning to play the piano on weekends.",
    "The user's daughter Emma starts school in September.",
    "The user prefers window seats on long flights.",
    "The user's car is a blue Volvo estate.",
    "Meeting with the accountant is every first Monday of the month.",
    "The user drinks oat milk in coffee, never dairy.",
    "The wifi password at the cabin is written on the fridge.",
];

async fn seed(s: &TestServer, key: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for t in CORPUS {
        ids.push(s.add(key, t, json!({})).await);
    }
    ids
}

fn texts(v: &Value) -> Vec<String> {
    v["memories"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_string()).collect()
}

async fn ranking_puts_the_relevant_memory_first(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    seed(&s, &key).await;
    let cases = [
        ("Is Alice allergic to anything?", 0),
        ("Where does Alice work?", 1),
        ("Which football team does Bob support?", 2),
        ("What instrument is Bob learning?", 3),
        ("When does Emma start school?", 4),
        ("Does the user like window or aisle seats on flights?", 5),
        ("What car does the user drive?", 6),
        ("When is the accountant meeting?", 7),
        ("What milk does the user take in coffee?", 8),
        ("Where is the cabin wifi password?", 9),
    ];
    for (question, expected) in cases {
        let r = s.post("/v1/retrieve", &key, json!({"context": question, "max_memories": 3})).await;
        let data = r.assert_ok(200);
        let got = texts(data);
        assert_eq!(got.first().map(String::as_str), Some(CORPUS[expected]), "{question} -> {got:?}");
        let scores: Vec<f64> =
            data["memories"].as_array().unwrap().iter().map(|m| m["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "scores descend: {scores:?}");
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    }
}

async fn query_and_answer(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    seed(&s, &key).await;

    let r = s.post("/v1/query", &key, json!({"context": "What car does the user drive?", "max_memories": 2})).await;
    let data = r.assert_ok(200).clone();
    assert_eq!(texts(&data)[0], CORPUS[6]);
    assert!(data["context"].as_str().unwrap().starts_with(&format!("1. {}", CORPUS[6])));
    assert_eq!(r.body["meta"]["usage"]["memories_accessed"], data["memories"].as_array().unwrap().len());

    // `query` is accepted as an alias of `context`.
    let r = s.post("/v1/retrieve", &key, json!({"query": "Bob piano"})).await;
    assert_eq!(texts(r.assert_ok(200))[0], CORPUS[3]);

    let r = s.post("/v1/query/answer", &key, json!({"context": "Where does Alice work?"})).await;
    let data = r.assert_ok(200).clone();
    assert_eq!(data["answer"], CORPUS[1]);
    assert_eq!(data["model"], "memhost-extractive");
    assert_eq!(texts(&data)[0], CORPUS[1]);

    let r = s.post("/v1/query/answer", &key, json!({"context": "quantum chromodynamics lecture notes"})).await;
    let data = r.assert_ok(200);
    assert!(data["answer"].as_str().unwrap().contains("don't have any memories"), "{data}");
}

async fn limits_and_threshold(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    seed(&s, &key).await;
    let r =
        s.post("/v1/retrieve", &key, json!({"context": "the user", "max_memories": 2, "relevance_threshold": 0})).await;
    assert_eq!(texts(r.assert_ok(200)).len(), 2);
    let r = s
        .post("/v1/retrieve", &key, json!({"context": "the user", "max_memories": 100, "relevance_threshold": 0}))
        .await;
    assert_eq!(texts(r.assert_ok(200)).len(), CORPUS.len());
    let r =
        s.post("/v1/retrieve", &key, json!({"context": "Alice allergic peanuts", "relevance_threshold": 0.99})).await;
    assert!(texts(r.assert_ok(200)).is_empty());
    // An empty org is fine.
    let (_, other) = s.tenant();
    let r = s.post("/v1/retrieve", &other, json!({"context": "anything"})).await;
    assert!(texts(r.assert_ok(200)).is_empty());
    // Updated text is what retrieval sees.
    let id = s.add(&key, "The user's boat is called Seagull.", json!({})).await;
    s.put(&format!("/v1/memories/{id}"), &key, json!({"text": "The user's boat is called Albatross."}))
        .await
        .assert_ok(200);
    let r =
        s.post("/v1/retrieve", &key, json!({"context": "What is the boat called? Albatross", "max_memories": 1})).await;
    assert_eq!(texts(r.assert_ok(200))[0], "The user's boat is called Albatross.");
}
