use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(
    auth_failures_are_401_with_reason,
    scopes_are_enforced,
    key_in_url_is_refused,
    rotation_keeps_old_key_for_grace,
    cli_status_changes_take_effect
);

async fn assert_401(s: &TestServer, auth: Option<&str>, reason: &str) {
    let mut req = s.client.get(format!("{}/v1/memories", s.base));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let r = s.send(req).await;
    r.assert_error(401, "INVALID_API_KEY");
    assert_eq!(r.body["error"]["details"]["reason"], reason, "{auth:?}: {}", r.body);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
}

async fn auth_failures_are_401_with_reason(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (org, key) = s.tenant();
    assert_401(&s, None, "missing").await;
    assert_401(&s, Some("Basic abc"), "malformed").await;
    assert_401(&s, Some("Bearer"), "malformed").await;
    assert_401(&s, Some("Bearer not-a-key"), "malformed").await;
    assert_401(&s, Some("Bearer mem_live_short"), "malformed").await;
    assert_401(&s, Some("Bearer mem_live_0123456789abcdefghijABCDEFGHIJ01"), "unknown").await;
    // A key from another installation (other secret) is unknown here.
    let foreign = key[..key.len() - 1].to_string() + if key.ends_with('A') { "B" } else { "A" };
    assert_401(&s, Some(&format!("Bearer {foreign}")), "unknown").await;
    // lower-case scheme is fine
    let r =
        s.send(s.client.get(format!("{}/v1/memories", s.base)).header("Authorization", format!("bearer {key}"))).await;
    r.assert_ok(200);

    let revoked = s.create_key(&org, "read", false);
    s.cli_ok(&["keys", "revoke", &revoked]);
    assert_401(&s, Some(&format!("Bearer {revoked}")), "revoked").await;

    let inactive = s.create_key(&org, "read", false);
    s.cli_ok(&["keys", "deactivate", &inactive]);
    assert_401(&s, Some(&format!("Bearer {inactive}")), "inactive").await;

    // Expired: rotate with a 1 s grace and wait it out.
    let old = s.create_key(&org, "read", false);
    s.cli_ok(&["keys", "rotate", &old, "--grace", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_401(&s, Some(&format!("Bearer {old}")), "expired").await;
}

async fn scopes_are_enforced(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (org, admin) = s.tenant();
    let id = s.add(&admin, "a memory", json!({})).await;
    let read = s.create_key(&org, "read", false);
    let write = s.create_key(&org, "write", false);
    let delete = s.create_key(&org, "delete", false);

    let forbidden = |r: crate::common::Resp, scope: &str| {
        r.assert_error(403, "INSUFFICIENT_SCOPE");
        assert_eq!(r.body["error"]["details"]["required_scope"], scope);
    };
    s.get(&format!("/v1/memories/{id}"), &read).await.assert_ok(200);
    s.post("/v1/retrieve", &read, json!({"context": "memory"})).await.assert_ok(200);
    forbidden(s.post("/v1/memories", &read, json!({"text": "x"})).await, "write");
    forbidden(s.put(&format!("/v1/memories/{id}"), &read, json!({"text": "x"})).await, "write");
    forbidden(s.delete(&format!("/v1/memories/{id}"), &read).await, "delete");
    forbidden(s.delete("/v1/memories?confirm=true", &write).await, "delete");
    forbidden(s.get("/v1/memories", &write).await, "read");
    forbidden(s.get("/v1/account/api-keys", &read).await, "admin");
    forbidden(s.post("/v1/account/api-keys", &write, json!({})).await, "admin");
    s.post("/v1/memories", &write, json!({"text": "written"})).await.assert_ok(201);
    s.delete(&format!("/v1/memories/{id}"), &delete).await.assert_ok(200);
    // Every key may see its own account.
    s.get("/v1/account", &write).await.assert_ok(200);
}

async fn key_in_url_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    for path in [
        format!("/v1/memories?api_key={key}"),
        format!("/v1/memories?key={key}"),
        "/v1/memories?token=abc".to_string(),
        format!("/v1/memories?x={key}"),
        format!("/v1/memories/{key}"),
    ] {
        // Even with a valid header: a key in a URL is refused outright.
        let r = s.get(&path, &key).await;
        r.assert_error(400, "INVALID_REQUEST");
        assert_eq!(r.body["error"]["details"]["reason"], "api_key_in_url", "{path}");
        let r = s.call(Method::GET, &path, None, None).await;
        r.assert_error(400, "INVALID_REQUEST");
        assert!(!r.body.to_string().contains(&key[9..]), "the key is not echoed back");
    }
}

async fn rotation_keeps_old_key_for_grace(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, admin) = s.tenant();
    let r = s.post("/v1/account/api-keys", &admin, json!({"name": "ci", "scopes": ["read"]})).await;
    let created = r.assert_ok(201).clone();
    let old_key = created["key"].as_str().unwrap().to_string();
    let old_id = created["id"].as_str().unwrap().to_string();

    let r = s.post(&format!("/v1/account/api-keys/{old_id}/rotate"), &admin, json!({"grace_period_seconds": 2})).await;
    let rotated = r.assert_ok(201).clone();
    let new_key = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key);
    assert_eq!(rotated["rotated_from"], old_id.as_str());
    assert_eq!(rotated["scopes"], json!(["read"]));
    assert_eq!(rotated["name"], "ci");

    // Both work during the grace period.
    s.get("/v1/memories", &new_key).await.assert_ok(200);
    s.get("/v1/memories", &old_key).await.assert_ok(200);
    // A rotated key cannot be rotated again.
    s.post(&format!("/v1/account/api-keys/{old_id}/rotate"), &admin, json!({})).await.assert_error(409, "CONFLICT");
    let keys = s.get("/v1/account/api-keys", &admin).await;
    let old = keys.data()["api_keys"].as_array().unwrap().iter().find(|k| k["id"] == old_id.as_str()).unwrap().clone();
    assert_eq!(old["rotated_to"], rotated["id"]);
    assert!(old["expires_at"].is_string());

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = s.get("/v1/memories", &old_key).await;
    r.assert_error(401, "INVALID_API_KEY");
    assert_eq!(r.body["error"]["details"]["reason"], "expired");
    s.get("/v1/memories", &new_key).await.assert_ok(200);

    let r = s
        .post(
            &format!("/v1/account/api-keys/{}/rotate", rotated["id"].as_str().unwrap()),
            &admin,
            json!({"grace_period_seconds": 99_999_999}),
        )
        .await;
    r.assert_error(400, "INVALID_REQUEST");
}

/// The CLI writes to the database directly; the server trusts a verified key
/// for `auth_cache_ttl_ms` (default 1 s), so a CLI change applies within that.
async fn cli_status_changes_take_effect(backend: Backend) {
    let s = TestServer::start(backend).await;
    let org = s.create_org("starter");
    let key = s.create_key(&org, "read", false);
    let within_cache_ttl = |want: u16| {
        let (s, key) = (&s, key.clone());
        async move {
            let deadline = std::time::Instant::now() + Duration::from_millis(1500);
            loop {
                let got = s.get("/v1/memories", &key).await.status.as_u16();
                if got == want {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "still {got}, want {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    s.get("/v1/memories", &key).await.assert_ok(200);
    s.cli_ok(&["keys", "deactivate", &key]);
    within_cache_ttl(401).await;
    s.cli_ok(&["keys", "activate", &key]);
    within_cache_ttl(200).await;
    s.cli_ok(&["keys", "revoke", &key]);
    within_cache_ttl(401).await;
    // Revocation is permanent.
    let out = s.cli(&["keys", "activate", &key]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.get("/v1/memories", &key).await.assert_error(401, "INVALID_API_KEY");
}
