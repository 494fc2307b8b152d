use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(account_shows_org_and_key, api_keys_self_service);

async fn account_shows_org_and_key(backend: Backend) {
    let s = TestServer::start(backend).await;
    let org = s.create_org("starter");
    let key = s.create_key(&org, "read", true);
    let r = s.get("/v1/account", &key).await;
    let data = r.assert_ok(200);
    assert_eq!(data["org"]["id"], org.as_str());
    assert_eq!(data["org"]["plan"], "starter");
    assert_eq!(data["api_key"]["environment"], "test");
    assert_eq!(data["api_key"]["scopes"], json!(["read"]));
    assert_eq!(data["api_key"]["prefix"], &key[..13]);
    assert!(!r.body.to_string().contains(&key[13..]), "the key itself is never returned");
}

async fn api_keys_self_service(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (org, admin) = s.tenant();

    let r = s
        .post(
            "/v1/account/api-keys",
            &admin,
            json!({"name": "worker", "scopes": ["read", "write"], "expires_in_days": 30}),
        )
        .await;
    let created = r.assert_ok(201).clone();
    let new_key = created["key"].as_str().unwrap().to_string();
    assert!(new_key.starts_with("mem_live_") && new_key.len() == 41);
    assert_eq!(created["org_id"], org.as_str());
    assert_eq!(created["scopes"], json!(["read", "write"]));
    assert_eq!(created["status"], "active");
    assert!(created["expires_at"].is_string());
    s.post("/v1/memories", &new_key, json!({"text": "hello"})).await.assert_ok(201);

    // Defaults: read+write, caller's environment.
    let r = s.post("/v1/account/api-keys", &admin, json!({})).await;
    assert_eq!(r.assert_ok(201)["scopes"], json!(["read", "write"]));
    let r = s.post("/v1/account/api-keys", &admin, json!({"environment": "test"})).await;
    let test_admin_created = r.assert_ok(201)["key"].as_str().unwrap().to_string();
    assert!(test_admin_created.starts_with("mem_test_"));

    // Bad input.
    for (body, field) in [
        (json!({"scopes": ["read", "superuser"]}), "scopes[1]"),
        (json!({"scopes": []}), "body"),
        (json!({"environment": "prod"}), "environment"),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "body"),
        (json!({"expires_at": "yesterday"}), "expires_at"),
        (json!({"expires_in_days": 0}), "expires_in_days"),
        (json!({"expires_in_days": 3651}), "expires_in_days"),
    ] {
        let r = s.post("/v1/account/api-keys", &admin, body.clone()).await;
        r.assert_error(400, "INVALID_REQUEST");
        let got = r.body["error"]["details"]["field"].as_str().unwrap_or("body");
        assert_eq!(got, field, "{body}: {}", r.body);
    }

    // A test key cannot mint live keys.
    let test_admin = s.create_key(&org, "admin", true);
    let r = s.post("/v1/account/api-keys", &test_admin, json!({"environment": "live"})).await;
    r.assert_error(403, "FORBIDDEN");

    let list = s.get("/v1/account/api-keys", &admin).await;
    let keys = list.assert_ok(200)["api_keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 5);
    assert!(!list.body.to_string().contains(&new_key[13..]));

    // Revoke: immediate, permanent, and idempotent to look at.
    let r = s.delete(&format!("/v1/account/api-keys/{}", created["id"].as_str().unwrap()), &admin).await;
    assert_eq!(r.assert_ok(200)["status"], "revoked");
    s.get("/v1/memories", &new_key).await.assert_error(401, "INVALID_API_KEY");
    s.delete("/v1/account/api-keys/key_doesnotexist", &admin).await.assert_error(404, "KEY_NOT_FOUND");
}
