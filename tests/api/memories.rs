use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(crud_and_history, list_paginates_newest_first, metadata_filters, delete_all_needs_confirmation);

async fn crud_and_history(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();

    let r = s.post("/v1/memories", &key, json!({"text": "Alice likes green tea", "metadata": {"user": "alice"}})).await;
    let created = r.assert_ok(201).clone();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(created["text"], "Alice likes green tea");
    assert_eq!(created["metadata"], json!({"user": "alice"}));
    assert_eq!(created["created_at"], created["updated_at"]);
    assert_eq!(r.body["meta"]["usage"]["memories_accessed"], 1);
    assert!(r.body["meta"]["usage"]["tokens_processed"].as_u64().unwrap() > 0);

    let got = s.get(&format!("/v1/memories/{id}"), &key).await;
    assert_eq!(got.assert_ok(200), &created);

    let updated = s.put(&format!("/v1/memories/{id}"), &key, json!({"text": "Alice now prefers coffee"})).await;
    let updated = updated.assert_ok(200).clone();
    assert_eq!(updated["text"], "Alice now prefers coffee");
    assert_eq!(updated["metadata"], json!({"user": "alice"}), "metadata kept when not given");
    assert_ne!(updated["updated_at"], created["updated_at"]);

    let meta_only = s.put(&format!("/v1/memories/{id}"), &key, json!({"metadata": {"user": "alice", "v": 2}})).await;
    assert_eq!(meta_only.assert_ok(200)["text"], "Alice now prefers coffee");

    s.put(&format!("/v1/memories/{id}"), &key, json!({})).await.assert_error(400, "INVALID_REQUEST");

    let del = s.delete(&format!("/v1/memories/{id}"), &key).await;
    assert_eq!(del.assert_ok(200)["deleted"], 1);
    s.get(&format!("/v1/memories/{id}"), &key).await.assert_error(404, "MEMORY_NOT_FOUND");
    s.delete(&format!("/v1/memories/{id}"), &key).await.assert_error(404, "MEMORY_NOT_FOUND");
    s.put(&format!("/v1/memories/{id}"), &key, json!({"text": "x"})).await.assert_error(404, "MEMORY_NOT_FOUND");

    // History survives deletion: ADD, UPDATE, UPDATE, DELETE with old and new values.
    let h = s.get(&format!("/v1/memories/{id}/history"), &key).await;
    let events = h.assert_ok(200)["events"].as_array().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ADD", "UPDATE", "UPDATE", "DELETE"]);
    assert_eq!(events[0]["new_text"], "Alice likes green tea");
    assert_eq!(events[0]["old_text"], Value::Null);
    assert_eq!(events[1]["old_text"], "Alice likes green tea");
    assert_eq!(events[1]["new_text"], "Alice now prefers coffee");
    assert_eq!(events[2]["new_metadata"], json!({"user": "alice", "v": 2}));
    assert_eq!(events[3]["old_text"], "Alice now prefers coffee");
    assert_eq!(events[3]["new_text"], Value::Null);
    assert!(events.iter().all(|e| e["actor_key_id"].as_str().unwrap().starts_with("key_")));
    assert!(events.iter().all(|e| e["request_id"].as_str().unwrap().starts_with("req_")));

    // Unknown and malformed ids are simply not found.
    s.get("/v1/memories/not-a-uuid", &key).await.assert_error(404, "MEMORY_NOT_FOUND");
    s.get(&format!("/v1/memories/{}/history", uuid::Uuid::now_v7()), &key).await.assert_error(404, "MEMORY_NOT_FOUND");
}

async fn list_paginates_newest_first(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(s.add(&key, &format!("memory number {i}"), json!({"i": i})).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/memories?limit=10&cursor={c}"),
            None => "/v1/memories?limit=10".to_string(),
        };
        let r = s.get(&path, &key).await;
        let page = r.assert_ok(200).clone();
        pages += 1;
        for m in page["memories"].as_array().unwrap() {
            seen.push(m["id"].as_str().unwrap().to_string());
        }
        if page["has_more"] == json!(false) {
            assert_eq!(page["next_cursor"], Value::Null);
            break;
        }
        cursor = Some(page["next_cursor"].as_str().unwrap().to_string());
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "every memory once, newest first");

    let default = s.get("/v1/memories", &key).await;
    assert_eq!(default.assert_ok(200)["memories"].as_array().unwrap().len(), 20);

    for (path, field) in [
        ("/v1/memories?limit=0", "limit"),
        ("/v1/memories?limit=101", "limit"),
        ("/v1/memories?limit=ten", "limit"),
        ("/v1/memories?cursor=garbage!", "cursor"),
        ("/v1/memories?colour=blue", "colour"),
    ] {
        let r = s.get(path, &key).await;
        r.assert_error(400, "INVALID_REQUEST");
        assert_eq!(r.body["error"]["details"]["field"], field, "{path}: {}", r.body);
    }
}

async fn metadata_filters(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    let a = s.add(&key, "Alice likes tea", json!({"user": "alice", "age": 30, "vip": true})).await;
    let b = s.add(&key, "Bob likes tea too", json!({"user": "bob", "age": 41, "vip": false})).await;
    s.add(&key, "No owner", json!({})).await;

    let ids = |r: &crate::common::Resp| -> Vec<String> {
        r.data()["memories"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&s.get("/v1/memories?metadata.user=alice", &key).await), vec![a.clone()]);
    assert_eq!(ids(&s.get("/v1/memories?metadata.age=41", &key).await), vec![b.clone()]);
    assert_eq!(ids(&s.get("/v1/memories?metadata.vip=true", &key).await), vec![a.clone()]);
    assert_eq!(ids(&s.get("/v1/memories?metadata.user=bob&metadata.vip=false", &key).await), vec![b.clone()]);
    assert!(ids(&s.get("/v1/memories?metadata.user=carol", &key).await).is_empty());

    let r = s.post("/v1/retrieve", &key, json!({"context": "who likes tea", "filters": {"user": "bob"}})).await;
    let hits: Vec<&str> =
        r.assert_ok(200)["memories"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(hits, vec![b.as_str()]);
    let r = s.post("/v1/retrieve", &key, json!({"context": "who likes tea", "filters": {"age": 30}})).await;
    assert_eq!(r.assert_ok(200)["memories"][0]["id"], a.as_str());

    let r = s.post("/v1/retrieve", &key, json!({"context": "tea", "filters": {"user": ["a", "b"]}})).await;
    r.assert_error(400, "INVALID_REQUEST");
    assert_eq!(r.body["error"]["details"]["field"], "filters");
    let r = s.get("/v1/memories?metadata.=x", &key).await;
    r.assert_error(400, "INVALID_REQUEST");
}

async fn delete_all_needs_confirmation(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    for i in 0..3 {
        s.add(&key, &format!("alice memory {i}"), json!({"user": "alice"})).await;
    }
    let bob = s.add(&key, "bob memory", json!({"user": "bob"})).await;

    let r = s.call(Method::DELETE, "/v1/memories", Some(&key), None).await;
    r.assert_error(400, "INVALID_REQUEST");
    assert_eq!(r.body["error"]["details"]["field"], "confirm");
    s.call(Method::DELETE, "/v1/memories?confirm=yes", Some(&key), None).await.assert_error(400, "INVALID_REQUEST");
    assert_eq!(s.get("/v1/memories", &key).await.data()["memories"].as_array().unwrap().len(), 4, "nothing deleted");

    let r = s.delete("/v1/memories?confirm=true&metadata.user=alice", &key).await;
    assert_eq!(r.assert_ok(200)["deleted"], 3);
    let left = s.get("/v1/memories", &key).await;
    assert_eq!(left.data()["memories"][0]["id"], bob.as_str());
    // Retrieval no longer finds the deleted ones (the embedded index follows).
    let r = s.post("/v1/retrieve", &key, json!({"context": "alice memory"})).await;
    assert!(r.assert_ok(200)["memories"].as_array().unwrap().iter().all(|m| m["id"] == bob.as_str()));

    let r = s.delete("/v1/memories?confirm=true", &key).await;
    assert_eq!(r.assert_ok(200)["deleted"], 1);
    assert!(s.get("/v1/memories", &key).await.data()["memories"].as_array().unwrap().is_empty());
    // Each deletion is in the history.
    let h = s.get(&format!("/v1/memories/{bob}/history"), &key).await;
    assert_eq!(h.assert_ok(200)["events"].as_array().unwrap().last().unwrap()["event"], "DELETE");
}
