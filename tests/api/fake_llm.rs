//! A small OpenAI-compatible server on loopback standing in for a paid LLM
//! provider: `/v1/embeddings`, `/v1/chat/completions` and `/v1/rerank`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Default)]
pub struct Seen {
    pub embedding_calls: usize,
    pub chat_calls: usize,
    pub chats_in_flight: usize,
    /// The most chat requests ever in flight at once.
    pub max_chats_in_flight: usize,
    pub authorization: Vec<String>,
    pub models: Vec<String>,
}

#[derive(Clone)]
pub struct Fake {
    pub seen: Arc<Mutex<Seen>>,
    /// Delay before answering chat requests.
    pub chat_delay: Duration,
    /// Dimensions of returned embeddings.
    pub dims: usize,
}

pub struct FakeLlm {
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
}

pub async fn start(chat_delay: Duration, dims: usize) -> FakeLlm {
    let fake = Fake { seen: Default::default(), chat_delay, dims };
    let seen = fake.seen.clone();
    let app = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/rerank", post(rerank))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeLlm { url: format!("http://{addr}/v1"), seen }
}

fn record(fake: &Fake, headers: &axum::http::HeaderMap, body: &Value) {
    let mut seen = fake.seen.lock().unwrap();
    if let Some(a) = headers.get("authorization") {
        seen.authorization.push(a.to_str().unwrap().to_string());
    }
    seen.models.push(body["model"].as_str().unwrap_or("").to_string());
}

async fn embeddings(State(fake): State<Fake>, headers: axum::http::HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&fake, &headers, &body);
    fake.seen.lock().unwrap().embedding_calls += 1;
    let inputs = body["input"].as_array().cloned().unwrap_or_default();
    // A "model" that puts each text on the axis of its first letter.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let first = t.as_str().unwrap_or("").bytes().next().unwrap_or(0) as usize;
            let mut v = vec![0.0f32; fake.dims];
            v[first % fake.dims] = 1.0;
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    Json(json!({"object": "list", "data": data, "model": body["model"]}))
}

/// A "cross-encoder" that prefers longer documents: an order no vector or
/// keyword ranking would produce, so a test can see it was applied.
async fn rerank(State(fake): State<Fake>, headers: axum::http::HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&fake, &headers, &body);
    let docs = body["documents"].as_array().cloned().unwrap_or_default();
    let results: Vec<Value> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"index": i, "relevance_score": d.as_str().unwrap_or("").len() as f64 / 100.0}))
        .collect();
    Json(json!({"model": body["model"], "results": results}))
}

async fn chat(State(fake): State<Fake>, headers: axum::http::HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&fake, &headers, &body);
    {
        let mut seen = fake.seen.lock().unwrap();
        seen.chat_calls += 1;
        seen.chats_in_flight += 1;
        seen.max_chats_in_flight = seen.max_chats_in_flight.max(seen.chats_in_flight);
    }
    tokio::time::sleep(fake.chat_delay).await;
    fake.seen.lock().unwrap().chats_in_flight -= 1;
    let prompt = body["messages"][1]["content"].as_str().unwrap_or("").to_string();
    let system = body["messages"][0]["content"].as_str().unwrap_or("");
    if system.contains("MEMORY OPERATIONS") {
        return Json(completion(&body, &extraction_answer(&prompt)));
    }
    let question = prompt.rsplit("Question: ").next().unwrap_or("").to_string();
    Json(json!({
        "id": "chatcmpl-1",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("FAKE ANSWER to: {question}")}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
    }))
}

fn completion(body: &Value, content: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
    })
}

/// What a memory-extraction model would answer `extract-llm`'s prompt
/// ("Existing memories:\n[id] text…\n\nConversation:\nrole: text…"), by
/// rules: "moved from X to Y" updates the memory naming X; "I like …" is
/// added; a turn saying MALFORMED gets prose instead of JSON.
fn extraction_answer(prompt: &str) -> String {
    let (memories, conversation) = prompt.split_once("\nConversation:\n").unwrap_or(("", prompt));
    if conversation.contains("MALFORMED") {
        return "Sure! The user seems to like many things.".into();
    }
    let existing: Vec<(&str, &str)> = memories.lines().filter_map(|l| l.strip_prefix('[')?.split_once("] ")).collect();
    let mut ops = Vec::new();
    for line in conversation.lines().filter_map(|l| l.strip_prefix("user: ")) {
        if let Some(rest) = line.split("moved from ").nth(1)
            && let Some((from, to)) = rest.split_once(" to ")
        {
            let to = to.split(['.', ' ']).next().unwrap_or(to);
            match existing.iter().find(|(_, text)| text.contains(from)) {
                Some((id, _)) => ops.push(json!({"op": "update", "id": id, "text": format!("Lives in {to}.")})),
                None => ops.push(json!({"op": "add", "text": format!("Lives in {to}.")})),
            }
        } else if line.contains("I like") {
            ops.push(json!({"op": "add", "text": line.trim()}));
        } else {
            ops.push(json!({"op": "none"}));
        }
    }
    format!("```json\n{}\n```", json!({"operations": ops}))
}

/// The environment that points the host's completions provider (the LLM
/// extractor plugins' `llm` import) at the fake, model `fake-extract`.
pub fn completions_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MEMHOST_COMPLETIONS__PROVIDER", "openai".to_string()),
        ("MEMHOST_COMPLETIONS__BASE_URL", url.to_string()),
        ("MEMHOST_COMPLETIONS__MODEL", "fake-extract".to_string()),
        ("MEMHOST_COMPLETIONS__API_KEY", "sk-fake".to_string()),
    ]
}

/// Activates the built-in `extract-llm` for one org.
pub async fn activate_llm_extractor(server: &crate::common::TestServer, org: &str) {
    let (_, admin) = server.operator();
    let list = server.get("/admin/plugins?kind=extractor", &admin).await;
    let plugins = list.assert_ok(200)["plugins"].as_array().unwrap().clone();
    let llm = plugins.iter().find(|p| p["name"] == "extract-llm").unwrap()["id"].as_str().unwrap().to_string();
    let body = json!({"target": format!("org:{org}"), "config": {}});
    server.post(&format!("/admin/plugins/{llm}/activate"), &admin, body).await.assert_ok(200);
}
