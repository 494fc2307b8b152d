//! Batch jobs: extraction, bulk creation and re-embedding off the request
//! path, in a durable queue that survives `kill -9` and runs each item's
//! work exactly once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(
    async_extraction_is_a_job,
    batch_extract_reports_each_item,
    jobs_queue_list_and_cancel,
    reembedding_job_keeps_retrieval_up
);

/// Polls a job until it is final.
pub async fn wait_job(server: &TestServer, key: &str, id: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let r = server.get(&format!("/v1/batch/{id}"), key).await;
        let job = r.assert_ok(200).clone();
        if ["completed", "failed", "canceled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(start.elapsed() < timeout, "job {id} not done in {timeout:?}: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn texts(server: &TestServer, key: &str, query: &str) -> Vec<String> {
    let listed = server.get(&format!("/v1/memories?limit=100{query}"), key).await;
    let mut texts: Vec<String> = listed.assert_ok(200)["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    texts
}

/// `POST /v1/memories` with `async: true` answers 202 at once with the job;
/// the job extracts, and the history names the turns by the caller's ids.
async fn async_extraction_is_a_job(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, key) = server.tenant();
    let body = json!({
        "messages": [
            {"role": "user", "content": "I love green tea in the morning.", "id": "turn-41"},
            {"role": "assistant", "content": "Noted!", "id": "turn-42"}
        ],
        "user_id": "ada",
        "async": true
    });
    let r = server.post("/v1/memories", &key, body).await;
    let job = r.assert_ok(202).clone();
    assert_eq!(job["kind"], "extract");
    assert_eq!(job["total_items"], 1);
    assert_eq!(job["lane"], "normal");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(r.headers.get("location").unwrap(), &format!("/v1/batch/{id}"));

    let job = wait_job(&server, &key, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!((job["done_items"].as_u64(), job["failed_items"].as_u64()), (Some(1), Some(0)), "{job}");
    let result = &job["results"][0];
    assert_eq!(result["status"], "done", "{job}");
    let added = &result["result"]["results"][0];
    assert_eq!(added["op"], "add", "{job}");
    assert_eq!(added["memory"]["text"], "I love green tea in the morning.");
    assert_eq!(added["memory"]["user_id"], "ada");

    let memory_id = added["memory"]["id"].as_str().unwrap();
    let history = server.get(&format!("/v1/memories/{memory_id}/history"), &key).await;
    let events = history.assert_ok(200)["events"].as_array().unwrap().clone();
    let source = events.iter().find_map(|e| e.get("source").filter(|s| !s.is_null())).cloned().unwrap();
    assert_eq!(source["turns"], json!(["turn-41", "turn-42"]), "{source}");
    assert_eq!(source["extractor"]["name"], "extract-rules");

    // `async` is for dialogue; a text memory is stored at once.
    let r = server.post("/v1/memories", &key, json!({"text": "x", "async": true})).await;
    r.assert_error(400, "INVALID_REQUEST");
}

/// A batch of dialogues: each item's outcome is reported on its own (a bad
/// one fails alone); a batch that cannot run is refused before it is queued.
async fn batch_extract_reports_each_item(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, key) = server.tenant();
    let dialogues = json!({"dialogues": [
        {"messages": [{"role": "user", "content": "I love jazz on Sundays."}], "user_id": "ada"},
        {"messages": [{"role": "user", "content": "My brother lives in Oslo."}], "user_id": "bob",
         "metadata": {"source": "import"}},
        {"messages": [{"role": "assistant", "content": "How can I help?"}]}
    ]});
    let tagged = server
        .client
        .post(format!("{}/v1/batch/extract", server.base))
        .bearer_auth(&key)
        .header("X-Usage-Tags", "team=ml")
        .json(&dialogues);
    let r = server.send(tagged).await;
    let id = r.assert_ok(202)["id"].as_str().unwrap().to_string();
    let job = wait_job(&server, &key, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["done_items"], 3, "{job}");
    // The request's usage tags go with every item's event.
    let tags =
        server.sql_rows(&format!("SELECT CAST(tags AS TEXT) FROM usage_events WHERE request_id LIKE '{id}:%'")).await;
    assert_eq!(tags.len(), 3, "{tags:?}");
    assert!(
        tags.iter()
            .all(|t| t[0].as_deref().unwrap_or("").contains("\"team\"") && t[0].as_deref().unwrap().contains("ml")),
        "{tags:?}"
    );
    let results = job["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["result"]["results"][0]["memory"]["metadata"]["source"], "import", "{job}");
    assert!(results[2]["result"]["results"].as_array().unwrap().is_empty(), "nothing in an assistant turn: {job}");
    assert_eq!(texts(&server, &key, "&user_id=ada").await, ["I love jazz on Sundays."]);
    assert_eq!(texts(&server, &key, "&user_id=bob").await, ["My brother lives in Oslo."]);

    // Each item is metered as a call on the batch route, once.
    let usage = server.get("/v1/usage/history?group_by=endpoint&granularity=day", &key).await;
    let body = usage.assert_ok(200).to_string();
    assert!(body.contains("/v1/batch/extract"), "item events on the batch route: {body}");

    // Refused before anything is queued: empty, too many, a bad dialogue.
    server.post("/v1/batch/extract", &key, json!({"dialogues": []})).await.assert_error(400, "INVALID_REQUEST");
    let many: Vec<Value> = (0..1001).map(|_| json!({"messages": [{"role": "user", "content": "hi"}]})).collect();
    server.post("/v1/batch/extract", &key, json!({"dialogues": many})).await.assert_error(400, "INVALID_REQUEST");
    let bad = json!({"dialogues": [{"messages": [{"role": "user", "content": "ok"}]},
                                   {"messages": [{"role": "robot", "content": "beep"}]}]});
    let r = server.post("/v1/batch/extract", &key, bad).await;
    r.assert_error(400, "INVALID_REQUEST");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("dialogues[1]"), "{}", r.body);
    let listed = server.get("/v1/batch", &key).await;
    assert_eq!(listed.assert_ok(200)["jobs"].as_array().unwrap().len(), 1, "only the first job was queued");
}

/// With no workers the queue holds jobs: they list newest first, cancel at
/// once while queued, and are invisible to other orgs. Per-org pending jobs
/// are capped.
async fn jobs_queue_list_and_cancel(backend: Backend) {
    let mut server =
        TestServer::start_with(backend, &[("MEMHOST_JOBS__WORKERS", "0"), ("MEMHOST_JOBS__MAX_PENDING_PER_ORG", "3")])
            .await;
    let (_, key) = server.tenant();
    let (_, other) = server.tenant();
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"memories": [{"text": format!("fact {i}")}], "async": true});
        let r = server.post("/v1/batch/memories", &key, body).await;
        let job = r.assert_ok(202).clone();
        assert_eq!(job["status"], "queued");
        assert_eq!(job["kind"], "memories");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let r = server.post("/v1/batch/memories", &key, json!({"memories": [{"text": "one more"}], "async": true})).await;
    r.assert_error(429, "TOO_MANY_JOBS");

    let listed = server.get("/v1/batch", &key).await;
    let jobs = listed.assert_ok(200)["jobs"].as_array().unwrap().clone();
    let listed_ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()], "newest first");
    let page = server.get("/v1/batch?limit=2", &key).await;
    let next = page.assert_ok(200)["next_before"].as_str().unwrap().to_string();
    let rest = server.get(&format!("/v1/batch?limit=2&before={next}"), &key).await;
    assert_eq!(rest.assert_ok(200)["jobs"][0]["id"], ids[0].as_str());
    server.get("/v1/batch?status=done", &key).await.assert_error(400, "INVALID_REQUEST");
    server.get("/v1/batch?limit=0", &key).await.assert_error(400, "INVALID_REQUEST");
    server.get("/v1/batch?limit=abc", &key).await.assert_error(400, "INVALID_REQUEST");
    server.get("/v1/batch?color=red", &key).await.assert_error(400, "INVALID_REQUEST");

    // Another org sees nothing of them.
    server.get(&format!("/v1/batch/{}", ids[0]), &other).await.assert_error(404, "JOB_NOT_FOUND");
    server.post(&format!("/v1/batch/{}/cancel", ids[0]), &other, json!({})).await.assert_error(404, "JOB_NOT_FOUND");
    assert!(server.get("/v1/batch", &other).await.assert_ok(200)["jobs"].as_array().unwrap().is_empty());

    let r = server.post(&format!("/v1/batch/{}/cancel", ids[0]), &key, json!({})).await;
    let job = r.assert_ok(200).clone();
    assert_eq!(job["status"], "canceled", "{job}");
    assert!(job["finished_at"].is_string());
    server.post(&format!("/v1/batch/{}/cancel", ids[0]), &key, json!({})).await.assert_error(409, "JOB_FINISHED");
    // A slot is free again.
    server.post("/v1/batch/memories", &key, json!({"memories": [{"text": "x"}], "async": true})).await.assert_ok(202);
    let canceled = server.get("/v1/batch?status=canceled", &key).await;
    assert_eq!(canceled.assert_ok(200)["jobs"].as_array().unwrap().len(), 1);
    server.get("/v1/batch/job_nope", &key).await.assert_error(404, "JOB_NOT_FOUND");

    // Finished jobs past `jobs.retention_days` are pruned (at start, then
    // hourly); unfinished ones stay.
    server
        .sql_exec(&format!("UPDATE batch_jobs SET finished_at = '2020-01-01T00:00:00.000000Z' WHERE id = '{}'", ids[0]))
        .await
        .unwrap();
    server.terminate();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    server.restart();
    let start = Instant::now();
    while server.get(&format!("/v1/batch/{}", ids[0]), &key).await.status.as_u16() != 404 {
        assert!(start.elapsed() < Duration::from_secs(10), "the old finished job is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.get(&format!("/v1/batch/{}", ids[1]), &key).await.assert_ok(200);
}

/// `POST /v1/batch/embeddings` re-embeds every memory of the org (and no
/// other org's) while retrieval keeps answering.
async fn reembedding_job_keeps_retrieval_up(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, key) = server.tenant();
    let (_, other) = server.tenant();
    let items: Vec<Value> = (0..150).map(|i| json!({"text": format!("memory number {i} about tea")})).collect();
    server.post("/v1/batch/memories", &key, json!({"memories": items})).await.assert_ok(200);
    server.add(&other, "another org's memory", json!({})).await;

    let r = server.post("/v1/batch/embeddings", &key, json!({})).await;
    let job = r.assert_ok(202).clone();
    assert_eq!(job["kind"], "embeddings");
    assert_eq!(job["total_items"], 150);
    let id = job["id"].as_str().unwrap().to_string();
    let r = server.post("/v1/retrieve", &key, json!({"query": "tea", "max_memories": 3})).await;
    assert_eq!(r.assert_ok(200)["memories"].as_array().unwrap().len(), 3, "retrieval answers meanwhile");
    let job = wait_job(&server, &key, &id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["done_items"], 150, "{job}");
    let r = server.post("/v1/retrieve", &key, json!({"query": "memory number 7", "max_memories": 1})).await;
    assert_eq!(r.assert_ok(200)["memories"][0]["text"], "memory number 7 about tea");
}

/// A job whose host is killed (`kill -9`) mid-way is claimed again after
/// its lease and completes exactly once: every dialogue's memory exists
/// once, each item is metered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_kill_9_exactly_once() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        job_survives_kill_9(backend).await;
    }
}

async fn job_survives_kill_9(backend: Backend) {
    // A slow LLM, so the kill lands while items are in flight.
    let fake = crate::fake_llm::start(Duration::from_millis(250), 384).await;
    let mut env = crate::fake_llm::completions_env(&fake.url);
    env.extend([("MEMHOST_JOBS__LEASE_SECS", "2".to_string()), ("MEMHOST_JOBS__WORKERS", "1".to_string())]);
    let mut server = TestServer::start_with(backend, &crate::common::env_refs(&env)).await;
    let (org, key) = server.tenant();
    crate::fake_llm::activate_llm_extractor(&server, &org).await;

    const N: usize = 12;
    let dialogues: Vec<Value> = (0..N)
        .map(|i| json!({"messages": [{"role": "user", "content": format!("I like hobby number {i}.")}]}))
        .collect();
    let r = server.post("/v1/batch/extract", &key, json!({"dialogues": dialogues})).await;
    let id = r.assert_ok(202)["id"].as_str().unwrap().to_string();

    // Kill once a few items are done, and more are still to come.
    let start = Instant::now();
    loop {
        let job = server.get(&format!("/v1/batch/{id}"), &key).await.assert_ok(200).clone();
        let done = job["done_items"].as_u64().unwrap();
        if done >= 3 {
            assert!(done < N as u64, "the job ran too fast to kill mid-way: {job}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill_hard();
    server.restart();

    let job = wait_job(&server, &key, &id, Duration::from_secs(90)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["done_items"], N as u64, "{job}");
    assert_eq!(job["failed_items"], 0, "{job}");
    assert!(job["attempts"].as_u64().unwrap() >= 2, "claimed again after the kill: {job}");

    // Exactly once: one memory per dialogue, one usage event per item.
    let mut expected: Vec<String> = (0..N).map(|i| format!("I like hobby number {i}.")).collect();
    expected.sort();
    assert_eq!(texts(&server, &key, "").await, expected, "[{backend:?}] each dialogue's memory once");
    let events = server
        .sql_rows(&format!(
            "SELECT request_id FROM usage_events WHERE org_id = '{org}' AND route = '/v1/batch/extract' \
             AND request_id LIKE '{id}:%'"
        ))
        .await;
    let mut ids: Vec<String> = events.into_iter().map(|r| r[0].clone().unwrap()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("{id}:{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "[{backend:?}] one usage event per item");
}

/// Orgs with the `priority_queue` add-on go first: with one worker, a job
/// submitted later in the priority lane starts before an earlier normal one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_priority_lane_goes_first() {
    let mut server = TestServer::start_with(Backend::Sqlite, &[("MEMHOST_JOBS__WORKERS", "0")]).await;
    let (_, admin) = server.operator();
    let (_, normal) = server.tenant();
    let vip_org = server.create_org("starter");
    let vip = server.create_key(&vip_org, "read,write", false);
    server
        .put(&format!("/admin/customers/{vip_org}/addons/priority_queue"), &admin, json!({"quantity": 1}))
        .await
        .assert_ok(200);
    let body = json!({"memories": [{"text": "a fact"}], "async": true});
    let first = server.post("/v1/batch/memories", &normal, body.clone()).await.assert_ok(202)["id"].clone();
    let second = server.post("/v1/batch/memories", &vip, body).await.assert_ok(202).clone();
    assert_eq!(second["lane"], "priority");
    let (first, second) = (first.as_str().unwrap().to_string(), second["id"].as_str().unwrap().to_string());

    server.terminate();
    let _ = server.wait_exit(Duration::from_secs(20));
    server.set_env("MEMHOST_JOBS__WORKERS", "1");
    server.restart();
    let a = wait_job(&server, &normal, &first, Duration::from_secs(30)).await;
    let b = wait_job(&server, &vip, &second, Duration::from_secs(30)).await;
    let started = |j: &Value| j["started_at"].as_str().unwrap().to_string();
    assert!(started(&b) <= started(&a), "priority first: {b} vs {a}");
}

/// Items that keep failing with a retryable error (an LLM extractor whose
/// LLM is unreachable) are retried up to `jobs.max_attempts` each and then
/// fail alone, with their error: the job completes, however many items
/// needed retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_items_fail_alone_not_the_job() {
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[("MEMHOST_JOBS__MAX_ATTEMPTS", "2"), ("MEMHOST_JOBS__BACKOFF_MS", "10")],
    )
    .await;
    let (org, key) = server.tenant();
    // No [completions] provider: extract-llm answers llm-unavailable, retryable.
    crate::fake_llm::activate_llm_extractor(&server, &org).await;
    let dialogues: Vec<Value> =
        (0..3).map(|i| json!({"messages": [{"role": "user", "content": format!("I like puzzle {i}.")}]})).collect();
    let r = server.post("/v1/batch/extract", &key, json!({"dialogues": dialogues})).await;
    let id = r.assert_ok(202)["id"].as_str().unwrap().to_string();
    let job = wait_job(&server, &key, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!((job["done_items"].as_u64(), job["failed_items"].as_u64()), (Some(0), Some(3)), "{job}");
    for item in job["results"].as_array().unwrap() {
        assert_eq!(item["status"], "failed", "{job}");
        assert_eq!(item["attempts"], 2, "each item tried max_attempts times: {job}");
        assert_eq!(item["error"]["code"], "EXTRACTOR_FAILED", "{job}");
        assert_eq!(item["error"]["retryable"], true, "{job}");
    }
}
