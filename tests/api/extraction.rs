//! Memories from dialogue: `POST /v1/memories` with `messages` runs the
//! org's extractor plugin (`extract-rules` by default) on the turns and the
//! prefiltered existing memories, and applies what it asks for. And many
//! memories at once: `POST /v1/batch/memories`.

use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(dialogue_becomes_memories, batches_report_each_item);

async fn dialogue_becomes_memories(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (org, key) = server.tenant();
    let dialogue = json!({
        "messages": [
            {"role": "user", "content": "Hi! I love green tea in the morning. My sister lives in Porto."},
            {"role": "assistant", "content": "I am glad to hear it."},
            {"role": "user", "content": "ok"}
        ],
        "user_id": "ada",
        "metadata": {"source": "chat"}
    });
    let r = server.post("/v1/memories", &key, dialogue).await;
    let result = r.assert_ok(200).clone();
    assert_eq!(result["extractor"]["name"], "extract-rules", "{result}");
    assert_eq!(result["existing_considered"], 0);
    let results = result["results"].as_array().unwrap();
    let added: Vec<&str> =
        results.iter().filter(|r| r["op"] == "add").map(|r| r["memory"]["text"].as_str().unwrap()).collect();
    assert_eq!(added, ["I love green tea in the morning.", "My sister lives in Porto."], "{result}");
    for r in results {
        assert_eq!(r["memory"]["user_id"], "ada", "the request's scopes: {r}");
        assert_eq!(r["memory"]["metadata"]["source"], "chat", "{r}");
    }
    let tea_id = results[0]["memory"]["id"].as_str().unwrap().to_string();

    // The history names the operation and the extractor.
    let history = server.get(&format!("/v1/memories/{tea_id}/history"), &key).await;
    let events = history.assert_ok(200)["events"].as_array().unwrap().clone();
    let source = events.iter().find_map(|e| e.get("source").filter(|s| !s.is_null())).cloned();
    let source = source.unwrap_or_else(|| panic!("a source in {}", history.body));
    assert_eq!(source["op"], "add");
    assert_eq!(source["extractor"]["name"], "extract-rules");
    assert_eq!(source["extractor"]["plugin_id"], result["extractor"]["plugin_id"]);

    // Said again: nothing new. A change of mind deletes the memory it
    // contradicts, which the prefilter handed over.
    let again =
        json!({"messages": [{"role": "user", "content": "I love green tea in the morning."}], "user_id": "ada"});
    let r = server.post("/v1/memories", &key, again).await;
    let data = r.assert_ok(200).clone();
    assert!(data["results"].as_array().unwrap().is_empty(), "a duplicate is not added: {data}");
    assert!(data["existing_considered"].as_u64().unwrap() >= 1, "{data}");
    let change = json!({"messages": [{"role": "user", "content": "I don't drink green tea in the morning anymore."}],
                        "user_id": "ada"});
    // Without the `delete` scope the extractor's delete is not applied.
    let no_delete = server.create_key(&org, "read,write", false);
    let r = server.post("/v1/memories", &no_delete, change.clone()).await;
    let data = r.assert_ok(200).clone();
    assert_eq!(data["results"][0]["op"], "skipped", "{data}");
    assert!(data["results"][0]["reason"].as_str().unwrap().contains("delete"), "{data}");
    // Extraction reads existing memories: a write-only key may not.
    let write_only = server.create_key(&org, "write", false);
    server.post("/v1/memories", &write_only, change.clone()).await.assert_error(403, "INSUFFICIENT_SCOPE");
    let r = server.post("/v1/memories", &key, change).await;
    let data = r.assert_ok(200).clone();
    let deleted: Vec<&Value> = data["results"].as_array().unwrap().iter().filter(|r| r["op"] == "delete").collect();
    assert_eq!(deleted.len(), 1, "{data}");
    assert_eq!(deleted[0]["id"], tea_id.as_str());
    assert_eq!(deleted[0]["previous_text"], "I love green tea in the morning.");
    server.get(&format!("/v1/memories/{tea_id}"), &key).await.assert_error(404, "MEMORY_NOT_FOUND");

    // Another user's memories are not shown to the extractor, so not touched.
    let other =
        json!({"messages": [{"role": "user", "content": "My sister no longer lives in Porto."}], "user_id": "bob"});
    let r = server.post("/v1/memories", &key, other).await;
    let data = r.assert_ok(200).clone();
    assert_eq!(data["existing_considered"], 0, "{data}");
    assert!(data["results"].as_array().unwrap().iter().all(|r| r["op"] != "delete"), "{data}");

    // Bad input is a clear 400, before anything runs.
    let bad = |body: Value| {
        let (server, key) = (&server, &key);
        async move { server.post("/v1/memories", key, body).await }
    };
    bad(json!({"text": "x", "messages": [{"role": "user", "content": "x"}]}))
        .await
        .assert_error(400, "INVALID_REQUEST");
    bad(json!({"user_id": "ada"})).await.assert_error(400, "INVALID_REQUEST");
    bad(json!({"messages": []})).await.assert_error(400, "INVALID_REQUEST");
    let r = bad(json!({"messages": [{"role": "robot", "content": "beep"}]})).await;
    r.assert_error(400, "INVALID_REQUEST");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("messages[0].role"), "{}", r.body);
    bad(json!({"messages": [{"role": "user", "content": "x", "extra": 1}]})).await.assert_error(400, "INVALID_REQUEST");

    // A read key may not extract.
    let org = server.create_org("free");
    let reader = server.create_key(&org, "read", false);
    let body = json!({"messages": [{"role": "user", "content": "I love tea."}]});
    server.post("/v1/memories", &reader, body).await.assert_error(403, "INSUFFICIENT_SCOPE");
}

/// `extract-llm`, activated for one org, asks the LLM (a fake
/// OpenAI-compatible server on loopback) for operations against the
/// prefiltered memories: a move becomes an update, not a duplicate; an
/// answer that is not the JSON asked for fails cleanly and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_extractor_updates_and_fails_cleanly() {
    let fake = crate::fake_llm::start(std::time::Duration::ZERO, 384).await;
    let env = [
        ("MEMHOST_COMPLETIONS__PROVIDER", "openai".to_string()),
        ("MEMHOST_COMPLETIONS__BASE_URL", fake.url.clone()),
        ("MEMHOST_COMPLETIONS__MODEL", "fake-extract".to_string()),
        ("MEMHOST_COMPLETIONS__API_KEY", "sk-fake".to_string()),
    ];
    let server = TestServer::start_with(Backend::Sqlite, &crate::common::env_refs(&env)).await;
    let (_, admin) = server.operator();
    let list = server.get("/admin/plugins?kind=extractor", &admin).await;
    let plugins = list.assert_ok(200)["plugins"].as_array().unwrap().clone();
    let llm = plugins.iter().find(|p| p["name"] == "extract-llm").expect("extract-llm is built in");
    assert_eq!(llm["status"], "inactive", "not active until an operator says so: {llm}");
    let llm_id = llm["id"].as_str().unwrap().to_string();

    let (org, key) = server.tenant();
    let (_, other_key) = server.tenant();
    let body = json!({"target": format!("org:{org}"), "config": {"max_tokens": 256}});
    server.post(&format!("/admin/plugins/{llm_id}/activate"), &admin, body).await.assert_ok(200);

    let lisbon = json!({"text": "Lives in Lisbon.", "user_id": "ada"});
    let stored = server.post("/v1/memories", &key, lisbon).await.assert_ok(201)["id"].as_str().unwrap().to_string();
    let moved =
        json!({"messages": [{"role": "user", "content": "I moved from Lisbon to Porto last year."}], "user_id": "ada"});
    let r = server.post("/v1/memories", &key, moved).await;
    let data = r.assert_ok(200).clone();
    assert_eq!(data["extractor"]["name"], "extract-llm", "{data}");
    // The extractor's LLM call is metered to the org that extracted.
    let metered = &r.body["meta"]["usage"];
    assert_eq!(metered["model_calls"], 1, "{metered}");
    assert!(metered["tokens_processed"].as_u64().unwrap() >= 42, "the fake reports 30 + 12: {metered}");
    let results = data["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{data}");
    assert_eq!(results[0]["op"], "update");
    assert_eq!(results[0]["memory"]["id"], stored.as_str());
    assert_eq!(results[0]["memory"]["text"], "Lives in Porto.");
    assert_eq!(results[0]["previous_text"], "Lives in Lisbon.");
    let listed = server.get("/v1/memories?user_id=ada", &key).await;
    let texts: Vec<String> = listed.assert_ok(200)["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["Lives in Porto."], "updated, not duplicated");

    let before = tokens_used(&server, &key).await;
    let r = server
        .post("/v1/memories", &key, json!({"messages": [{"role": "user", "content": "MALFORMED, I like jazz"}]}))
        .await;
    // The LLM answered (and is billed), but not usably: refused, retryable.
    r.assert_error(422, "EXTRACTION_REFUSED");
    assert_eq!(r.body["error"]["details"]["retryable"], true, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["plugin_code"], "malformed-llm-answer", "{}", r.body);
    let after = tokens_used(&server, &key).await;
    assert!(after >= before + 42, "the LLM call is metered all the same: {before} -> {after}");
    let listed = server.get("/v1/memories", &key).await;
    assert_eq!(listed.assert_ok(200)["memories"].as_array().unwrap().len(), 1, "nothing written");

    let r = server
        .post("/v1/memories", &key, json!({"messages": [{"role": "user", "content": "I like jazz on Sundays."}]}))
        .await;
    let data = r.assert_ok(200).clone();
    assert_eq!(data["results"][0]["op"], "add", "{data}");

    // Other orgs keep the global extractor.
    let r = server
        .post("/v1/memories", &other_key, json!({"messages": [{"role": "user", "content": "I like long walks."}]}))
        .await;
    assert_eq!(r.assert_ok(200)["extractor"]["name"], "extract-rules");
    assert_eq!(fake.seen.lock().unwrap().chat_calls, 3, "one LLM call per extraction of that org");
    assert!(fake.seen.lock().unwrap().models.contains(&"fake-extract".to_string()));
}

async fn tokens_used(server: &TestServer, key: &str) -> u64 {
    let usage = server.get("/v1/usage", key).await;
    let metrics = usage.assert_ok(200)["metrics"].as_array().unwrap().clone();
    metrics.iter().find(|m| m["metric"] == "tokens_processed").map_or(0, |m| m["used"].as_u64().unwrap_or(0))
}

/// A batch creates each item on its own and reports each: a bad item fails
/// alone, with the reason, and the others are stored and metered.
async fn batches_report_each_item(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, key) = server.tenant();
    let body = json!({"memories": [
        {"text": "Ada likes green tea.", "user_id": "ada"},
        {"text": "   "},
        {"text": "Bob plays chess.", "user_id": "bob", "metadata": {"source": "import"}},
        {"text": "x", "metadata": {"nested": {"too": {"deep": {"for": {"a": {"filter": {"key": {"is": {"it": 1}}}}}}}}}}
    ]});
    let r = server.post("/v1/batch/memories", &key, body).await;
    let data = r.assert_ok(200).clone();
    let results = data["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{data}");
    assert_eq!((results[0]["index"].as_u64(), results[0]["status"].as_str()), (Some(0), Some("created")));
    assert_eq!(results[1]["status"], "failed", "{data}");
    assert_eq!(results[1]["error"]["code"], "INVALID_REQUEST");
    assert_eq!(results[1]["error"]["field"], "text");
    assert_eq!(results[2]["memory"]["user_id"], "bob");
    assert_eq!(results[2]["memory"]["metadata"]["source"], "import");
    let created = data["created"].as_u64().unwrap();
    assert_eq!(created + data["failed"].as_u64().unwrap(), 4);
    assert!(created >= 2, "{data}");
    assert_eq!(r.body["meta"]["usage"]["embeddings_generated"], created, "each stored item is metered: {}", r.body);
    let listed = server.get("/v1/memories", &key).await;
    assert_eq!(listed.assert_ok(200)["memories"].as_array().unwrap().len() as u64, created);

    // The whole request is refused, before anything is stored, when it is
    // empty, too big or malformed.
    let refused = |body: Value| {
        let (server, key) = (&server, &key);
        async move { server.post("/v1/batch/memories", key, body).await }
    };
    refused(json!({"memories": []})).await.assert_error(400, "INVALID_REQUEST");
    let many: Vec<Value> = (0..1001).map(|i| json!({"text": format!("m{i}")})).collect();
    let r = refused(json!({"memories": many})).await;
    r.assert_error(400, "INVALID_REQUEST");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("1001"), "{}", r.body);
    refused(json!({"memories": [{"text": "a", "messages": []}]})).await.assert_error(400, "INVALID_REQUEST");
    refused(json!({"items": []})).await.assert_error(400, "INVALID_REQUEST");
    let listed = server.get("/v1/memories", &key).await;
    assert_eq!(listed.assert_ok(200)["memories"].as_array().unwrap().len() as u64, created, "nothing more stored");
}

/// An LLM extractor on a server with no LLM provider: it cannot reach its
/// LLM, nothing was spent, so the answer is 502 (retry later), not the
/// caller's fault, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extractor_without_its_llm_is_502() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, admin) = server.operator();
    let list = server.get("/admin/plugins?kind=extractor", &admin).await;
    let plugins = list.assert_ok(200)["plugins"].as_array().unwrap().clone();
    let llm = plugins.iter().find(|p| p["name"] == "extract-llm").unwrap()["id"].as_str().unwrap().to_string();
    let (org, key) = server.tenant();
    let body = json!({"target": format!("org:{org}"), "config": {}});
    server.post(&format!("/admin/plugins/{llm}/activate"), &admin, body).await.assert_ok(200);
    let r = server.post("/v1/memories", &key, json!({"messages": [{"role": "user", "content": "I like jazz."}]})).await;
    r.assert_error(502, "EXTRACTOR_FAILED");
    assert_eq!(r.body["error"]["details"]["plugin_code"], "llm-unavailable", "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("[completions]"), "says what is missing: {}", r.body);
    assert_eq!(server.get("/v1/memories", &key).await.assert_ok(200)["memories"].as_array().unwrap().len(), 0);
}

/// A request may name its extractor (`strategy`) among those offered to
/// its org (activated for the org, its plan or globally), synchronously or
/// in a job; anything else is a 400 naming what is offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_picks_its_extractor_among_those_offered() {
    let fake = crate::fake_llm::start(std::time::Duration::ZERO, 384).await;
    let env = crate::fake_llm::completions_env(&fake.url);
    let server = TestServer::start_with(Backend::Sqlite, &crate::common::env_refs(&env)).await;
    let (org, key) = server.tenant();
    let (_, other) = server.tenant();
    crate::fake_llm::activate_llm_extractor(&server, &org).await;

    let said = |strategy: Option<&str>| {
        let mut b = json!({"messages": [{"role": "user", "content": "I like chess problems."}]});
        if let Some(s) = strategy {
            b["strategy"] = json!(s);
        }
        b
    };
    let r = server.post("/v1/memories", &key, said(None)).await;
    assert_eq!(r.assert_ok(200)["extractor"]["name"], "extract-llm", "the org's own by default");
    let r = server.post("/v1/memories", &key, said(Some("extract-rules"))).await;
    assert_eq!(r.assert_ok(200)["extractor"]["name"], "extract-rules", "the global one, by name");
    let r = server.post("/v1/memories", &key, said(Some("extract-magic"))).await;
    r.assert_error(400, "INVALID_REQUEST");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("extract-llm") && message.contains("extract-rules"), "names what is offered: {message}");
    // Another org is not offered the first org's extractor.
    server.post("/v1/memories", &other, said(Some("extract-llm"))).await.assert_error(400, "INVALID_REQUEST");
    server
        .post("/v1/memories", &key, json!({"text": "x", "strategy": "extract-rules"}))
        .await
        .assert_error(400, "INVALID_REQUEST");

    // In a job: checked when submitted, used for every item.
    let bad = json!({"dialogues": [{"messages": [{"role": "user", "content": "I like go."}]}], "strategy": "nope"});
    server.post("/v1/batch/extract", &key, bad).await.assert_error(400, "INVALID_REQUEST");
    let job =
        json!({"dialogues": [{"messages": [{"role": "user", "content": "I like go."}]}], "strategy": "extract-rules"});
    let id = server.post("/v1/batch/extract", &key, job).await.assert_ok(202)["id"].as_str().unwrap().to_string();
    let done = crate::jobs::wait_job(&server, &key, &id, std::time::Duration::from_secs(30)).await;
    assert_eq!(done["results"][0]["result"]["extractor"]["name"], "extract-rules", "{done}");
    assert_eq!(fake.seen.lock().unwrap().chat_calls, 1, "only the default extraction asked the LLM");
}
