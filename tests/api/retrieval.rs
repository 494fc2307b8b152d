use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(
    ranking_puts_the_relevant_memory_first,
    query_and_answer,
    limits_and_threshold,
    keyword_search_follows_the_text,
    filters_follow_the_grammar,
    common_words_leave_the_match_over_the_budget,
    context_reaches_the_turn_after_a_match
);

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
        let memories = data["memories"].as_array().unwrap();
        let fused: Vec<f64> = memories.iter().map(|m| m["scores"]["fused"].as_f64().unwrap()).collect();
        assert!(fused.windows(2).all(|w| w[0] >= w[1]), "fused scores descend: {fused:?}");
        assert!(memories.iter().all(|m| (0.0..=1.0).contains(&m["score"].as_f64().unwrap())));
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

fn ids(v: &Value) -> Vec<String> {
    v["memories"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

/// The full-text list: exact rare tokens, stemming, updates and deletes
/// followed, filters and tenants respected, and `mode` validated.
async fn keyword_search_follows_the_text(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    seed(&s, &key).await;
    let order = s.add(&key, "Parcel ZQ4471 was delivered to the back door.", json!({"kind": "order"})).await;
    let keyword = |q: &str| json!({"context": q, "mode": "keyword", "relevance_threshold": 0});

    let r = s.post("/v1/retrieve", &key, keyword("where did zq4471 go")).await;
    let data = r.assert_ok(200).clone();
    assert_eq!(ids(&data), vec![order.clone()]);
    assert!(data["memories"][0]["scores"]["keyword"].as_f64().unwrap() > 0.0);
    // Stemming: "learns" finds "learning".
    let r = s.post("/v1/retrieve", &key, keyword("who learns piano")).await;
    assert_eq!(texts(r.assert_ok(200))[0], CORPUS[3]);
    // Filters apply to the keyword list too.
    let r = s
        .post("/v1/retrieve", &key, json!({"context": "zq4471", "mode": "keyword", "filters": {"kind": "invoice"}}))
        .await;
    assert!(ids(r.assert_ok(200)).is_empty());
    // Another tenant's memories are never found.
    let (_, other) = s.tenant();
    let r = s.post("/v1/retrieve", &other, keyword("zq4471")).await;
    assert!(ids(r.assert_ok(200)).is_empty());
    // Updates and deletes are followed.
    s.put(&format!("/v1/memories/{order}"), &key, json!({"text": "Parcel XK9000 is still in transit."}))
        .await
        .assert_ok(200);
    assert!(ids(s.post("/v1/retrieve", &key, keyword("zq4471")).await.assert_ok(200)).is_empty());
    assert_eq!(ids(s.post("/v1/retrieve", &key, keyword("xk9000")).await.assert_ok(200)), vec![order.clone()]);
    s.delete(&format!("/v1/memories/{order}"), &key).await.assert_ok(200);
    assert!(ids(s.post("/v1/retrieve", &key, keyword("xk9000")).await.assert_ok(200)).is_empty());
    // Query syntax of the engines is not interpreted: operators are words.
    let r = s.post("/v1/retrieve", &key, keyword("\"NEAR(alice\" OR * AND -bob:")).await;
    r.assert_ok(200);
    let r = s.post("/v1/retrieve", &key, keyword("?!")).await;
    assert!(ids(r.assert_ok(200)).is_empty());
    // Hybrid finds the same as either list where they agree; bad modes are 400.
    let r = s.post("/v1/retrieve", &key, json!({"context": "Alice nurse hospital", "mode": "hybrid"})).await;
    assert_eq!(texts(r.assert_ok(200))[0], CORPUS[1]);
    let r = s.post("/v1/retrieve", &key, json!({"context": "x", "mode": "bm42"})).await;
    r.assert_error(400, "INVALID_REQUEST");
}

/// A directory holding the repository's policies with `retrieval.yaml` replaced.
fn policies_with(retrieval: &str) -> tempfile::TempDir {
    let policies = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in std::fs::read_dir(repo.join("policies")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&f, policies.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(policies.path().join("retrieval.yaml"), retrieval).unwrap();
    policies
}

/// Thread context: a dialogue stored one turn per memory, where the answer
/// shares no word with the question ("Which team …?" → "The Minnesota
/// Wolves!"). The turn that matches lends part of its score to the turn
/// written after it in the same thread (same `user_id`; a turn of another
/// user written in between is skipped), so the answer is retrieved; not
/// with `context_weights: []`, and never past the request's filters.
async fn context_reaches_the_turn_after_a_match(backend: Backend) {
    let off_policies = policies_with("ranking:\n  context_weights: []\n");
    let off_dir = off_policies.path().display().to_string();
    let on = TestServer::start(backend).await;
    let off = TestServer::start_with(backend, &[("MEMHOST_POLICIES_DIR", &off_dir)]).await;
    for s in [&on, &off] {
        let (_, key) = s.tenant();
        let add = |text: &'static str, user: &'static str, conv: &'static str| {
            let key = key.clone();
            async move {
                let body = json!({"text": text, "user_id": user, "metadata": {"conv": conv}});
                s.post("/v1/memories", &key, body).await.assert_ok(201)["id"].as_str().unwrap().to_string()
            }
        };
        for t in [
            "Ann: Our team trained hard today.",
            "Ann: The team bus was late again.",
            "Ann: Team dinner is at eight.",
            "Ann: The new team captain is kind.",
        ] {
            add(t, "u1", "c1").await;
        }
        let question = add("Sam: Congrats! Which team did you sign with?", "u1", "c1").await;
        let between = add("Bob: The weather is lovely in Lisbon.", "u2", "c1").await;
        let answer = add("Tim: The Minnesota Wolves! Can't wait to play.", "u1", "c2").await;
        add("Ann: See you next week.", "u1", "c1").await;

        let ask = |filters: Value| {
            let key = key.clone();
            async move {
                let body = json!({"context": "Which team was signed?", "max_memories": 4, "relevance_threshold": 0, "filters": filters});
                let r = s.post("/v1/retrieve", &key, body).await;
                r.assert_ok(200).clone()
            }
        };
        let data = ask(json!({"user_id": "u1"})).await;
        let found = ids(&data);
        assert_eq!(found.first(), Some(&question), "{data}");
        assert!(!found.contains(&between), "{data}");
        if std::ptr::eq(s, &on) {
            assert!(found.contains(&answer), "the answer rides on the question's match: {data}");
            let m = data["memories"].as_array().unwrap().iter().find(|m| m["id"] == answer.as_str()).unwrap();
            assert!(m["scores"]["keyword"].is_null(), "{m}");
            assert!((0.0..=1.0).contains(&m["score"].as_f64().unwrap()), "{m}");
        } else {
            assert!(!found.contains(&answer), "context off: {data}");
        }
        // A neighbour must pass the request's filters.
        let data = ask(json!({"conv": "c1"})).await;
        assert!(!ids(&data).contains(&answer), "{data}");
    }
}

/// `keyword_match_budget`: when the terms together match more rows than
/// the budget, the common ones leave the match and the rarest stays (with
/// the default budget, and with 0, every term matches).
async fn common_words_leave_the_match_over_the_budget(backend: Backend) {
    let policies = policies_with("ranking:\n  keyword_match_budget: 3\n");
    let dir = policies.path().display().to_string();
    let tight = TestServer::start_with(backend, &[("MEMHOST_POLICIES_DIR", &dir)]).await;
    let open = TestServer::start(backend).await;
    for s in [&tight, &open] {
        let (_, key) = s.tenant();
        let mut coffee = Vec::new();
        for t in ["Coffee at nine.", "Coffee with Ann.", "Coffee beans from Kenya.", "Coffee is cold.", "Coffee again."]
        {
            coffee.push(s.add(&key, t, json!({})).await);
        }
        let zebra = s.add(&key, "A zebra print coffee mug.", json!({})).await;
        let stripes = s.add(&key, "The zebra has stripes.", json!({})).await;
        // PostgreSQL reads term frequencies from ANALYZE's statistics.
        if backend == Backend::Postgres {
            s.sql_exec("ANALYZE memories").await.unwrap();
        }
        let r = s
            .post("/v1/retrieve", &key, json!({"context": "zebra coffee", "mode": "keyword", "relevance_threshold": 0}))
            .await;
        let mut found = ids(r.assert_ok(200));
        if std::ptr::eq(s, &tight) {
            // "coffee" (6 rows) is over the budget of 3: only "zebra" matches.
            found.sort();
            let mut expected = vec![zebra.clone(), stripes.clone()];
            expected.sort();
            assert_eq!(found, expected, "{:?}", r.body);
            // One term over the budget on its own: SQLite ranks the newest
            // `budget` (3) of its matches; PostgreSQL all of them.
            let r = s
                .post("/v1/retrieve", &key, json!({"context": "coffee", "mode": "keyword", "relevance_threshold": 0}))
                .await;
            let mut found = ids(r.assert_ok(200));
            found.sort();
            let mut expected = match backend {
                Backend::Sqlite => vec![coffee[3].clone(), coffee[4].clone(), zebra.clone()],
                Backend::Postgres => coffee.iter().cloned().chain([zebra.clone()]).collect(),
            };
            expected.sort();
            assert_eq!(found, expected, "{:?}", r.body);
        } else {
            // Every term matches; the rare one still ranks first.
            assert_eq!(found.len(), 7, "{:?}", r.body);
            let mut top = found[..2].to_vec();
            top.sort();
            let mut expected = vec![zebra.clone(), stripes.clone()];
            expected.sort();
            assert_eq!(top, expected, "{:?}", r.body);
        }
    }
}

/// mem0's v2 filter grammar, on retrieval (both lists), list and delete-all:
/// each operator, nesting, time ranges, entity scopes; bad filters are 400
/// naming their path.
async fn filters_follow_the_grammar(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    let add = |text: &'static str, body: Value| {
        let mut body = body;
        body["text"] = json!(text);
        let s = &s;
        let key = key.clone();
        async move { s.post("/v1/memories", &key, body).await.assert_ok(201)["id"].as_str().unwrap().to_string() }
    };
    let tea = add(
        "Alice drinks green tea every morning.",
        json!({"user_id": "alice", "metadata": {"topic": "food", "priority": 5}}),
    )
    .await;
    let ski = add(
        "Alice goes skiing in the Alps each winter.",
        json!({"user_id": "alice", "run_id": "r1", "metadata": {"topic": "travel", "priority": 2}}),
    )
    .await;
    let bob = add("Bob drinks black coffee, no sugar.", json!({"user_id": "bob", "agent_id": "planner", "metadata": {"topic": "food", "priority": "5", "note": "Strong Brew"}})).await;
    let old =
        add("Alice used to drink tea with lemon.", json!({"user_id": "alice", "metadata": {"topic": "food"}})).await;
    // One memory from last year (set before the first retrieval loads vectors).
    let past = if backend == Backend::Sqlite { "2025-06-01T00:00:00.000000Z" } else { "2025-06-01T00:00:00Z" };
    s.sql_exec(&format!("UPDATE memories SET created_at = '{past}' WHERE id = '{old}'")).await.unwrap();

    let created = s.get(&format!("/v1/memories/{ski}"), &key).await;
    let m = created.assert_ok(200);
    assert_eq!(
        (m["user_id"].as_str(), m["run_id"].as_str(), m["agent_id"].as_str()),
        (Some("alice"), Some("r1"), None)
    );

    let found = |filters: Value, mode: &'static str| {
        let s = &s;
        let key = key.clone();
        async move {
            let body = json!({"context": "what does someone drink or do", "max_memories": 10, "relevance_threshold": 0,
                              "mode": mode, "filters": filters});
            let mut got = ids(s.post("/v1/retrieve", &key, body).await.assert_ok(200));
            got.sort();
            got
        }
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    let cases: Vec<(Value, Vec<&String>)> = vec![
        (json!({"user_id": "alice"}), vec![&tea, &ski, &old]),
        (json!({"user_id": {"ne": "alice"}}), vec![&bob]),
        (json!({"user_id": {"in": ["bob", "carol"]}}), vec![&bob]),
        (json!({"user_id": {"nin": ["bob"]}}), vec![&tea, &ski, &old]),
        (json!({"run_id": "*"}), vec![&ski]),
        (json!({"NOT": {"run_id": "*"}}), vec![&tea, &bob, &old]),
        (json!({"agent_id": {"icontains": "PLAN"}}), vec![&bob]),
        (json!({"priority": 5}), vec![&tea, &bob]),
        (json!({"priority": {"gte": 3}}), vec![&tea]),
        (json!({"priority": {"lt": 3}}), vec![&ski]),
        (json!({"priority": {"ne": 5}}), vec![&ski, &old]),
        (json!({"note": {"contains": "Brew"}}), vec![&bob]),
        (json!({"note": {"contains": "brew"}}), vec![]),
        (json!({"metadata.note": {"icontains": "strong"}}), vec![&bob]),
        (json!({"created_at": {"lt": "2026-01-01"}}), vec![&old]),
        (json!({"created_at": {"gte": "2026-01-01T00:00:00Z"}, "topic": "food"}), vec![&tea, &bob]),
        (
            json!({"OR": [{"topic": "travel"}, {"AND": [{"user_id": "bob"}, {"NOT": [{"priority": 1}]}]}]}),
            vec![&ski, &bob],
        ),
        (json!({"AND": []}), vec![&tea, &ski, &bob, &old]),
    ];
    for (filters, want) in cases {
        let want = sorted(want);
        for mode in ["vector", "hybrid"] {
            assert_eq!(found(filters.clone(), mode).await, want, "{mode} {filters}");
        }
        // The list endpoint takes the same grammar as a query parameter.
        let encoded: String = url_encode(&filters.to_string());
        let mut listed = ids(s.get(&format!("/v1/memories?limit=100&filters={encoded}"), &key).await.assert_ok(200));
        listed.sort();
        assert_eq!(listed, want, "list {filters}");
    }
    // Keyword mode filters too.
    let r = s
        .post("/v1/retrieve", &key, json!({"context": "drinks", "mode": "keyword", "filters": {"user_id": "bob"}}))
        .await;
    assert_eq!(ids(r.assert_ok(200)), vec![bob.clone()]);
    // Shorthand on lists.
    let r = s.get("/v1/memories?user_id=alice&metadata.topic=travel", &key).await;
    assert_eq!(ids(r.assert_ok(200)), vec![ski.clone()]);

    // Bad filters: 400 naming the path, on every endpoint.
    for (filters, path) in [
        (json!({"AND": [{"user_id": "alice"}, {"created_at": {"gte": "last week"}}]}), "filters.AND[1].created_at.gte"),
        (json!({"priority": {"between": [1, 2]}}), "filters.priority"),
        (json!({"user_id": {"gt": "a"}}), "filters.user_id.gt"),
        (json!({"OR": {"a": 1}}), "filters.OR"),
        (json!({"topic": {"in": "food"}}), "filters.topic.in"),
        (json!({"topic": ["food"]}), "filters.topic"),
        (json!("alice"), "filters"),
    ] {
        let r = s.post("/v1/retrieve", &key, json!({"context": "x", "filters": filters})).await;
        r.assert_error(400, "INVALID_REQUEST");
        assert!(r.body["error"]["message"].as_str().unwrap().starts_with(path), "{}", r.body);
        let r = s.get(&format!("/v1/memories?filters={}", url_encode(&filters.to_string())), &key).await;
        r.assert_error(400, "INVALID_REQUEST");
    }
    let r = s.get("/v1/memories?filters=%7Bnot-json", &key).await;
    r.assert_error(400, "INVALID_REQUEST");
    let r = s.post("/v1/memories", &key, json!({"text": "x", "user_id": ""})).await;
    r.assert_error(400, "INVALID_REQUEST");

    // Delete-all with a filter removes exactly those.
    let f = url_encode(&json!({"user_id": "alice", "topic": "food"}).to_string());
    let r = s.delete(&format!("/v1/memories?confirm=true&filters={f}"), &key).await;
    assert_eq!(r.assert_ok(200)["deleted"], 2);
    let mut left = ids(s.get("/v1/memories", &key).await.assert_ok(200));
    left.sort();
    assert_eq!(left, sorted(vec![&ski, &bob]));
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `rerank: true` reorders the best candidates with the configured reranker
/// (a fake cross-encoder on loopback that prefers longer texts), is metered
/// as a model call, and is refused when no reranker is configured.
#[tokio::test]
async fn rerank_reorders_with_the_configured_reranker() {
    let fake = crate::fake_llm::start(std::time::Duration::ZERO, 384).await;
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("MEMHOST_RERANK__PROVIDER", "openai"),
            ("MEMHOST_RERANK__BASE_URL", &fake.url),
            ("MEMHOST_RERANK__MODEL", "bge-reranker"),
        ],
    )
    .await;
    let (_, key) = s.tenant();
    seed(&s, &key).await;
    let body = json!({"context": "the user", "max_memories": 3, "relevance_threshold": 0, "rerank": true});
    let r = s.post("/v1/retrieve", &key, body).await;
    let data = r.assert_ok(200).clone();
    let got = texts(&data);
    let mut longest: Vec<&str> = CORPUS.to_vec();
    longest.sort_by_key(|t| std::cmp::Reverse(t.len()));
    assert_eq!(got.len(), 3);
    // Every candidate was reranked: the three longest texts, longest first.
    assert_eq!(got, longest[..3].iter().map(|t| t.to_string()).collect::<Vec<_>>());
    assert!(data["memories"][0]["scores"]["rerank"].as_f64().unwrap() > 0.0);
    assert_eq!(r.body["meta"]["usage"]["model_calls"], 1);
    assert_eq!(fake.seen.lock().unwrap().models.last().map(String::as_str), Some("bge-reranker"));

    let plain = TestServer::start(Backend::Sqlite).await;
    let (_, key) = plain.tenant();
    let r = plain.post("/v1/retrieve", &key, json!({"context": "x", "rerank": true})).await;
    r.assert_error(400, "INVALID_REQUEST");
}
