use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(other_orgs_memories_are_not_found, test_and_live_data_are_separate);

async fn other_orgs_memories_are_not_found(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key_a) = s.tenant();
    let (_, key_b) = s.tenant();
    let id = s.add(&key_a, "Org A's secret plan: launch on Tuesday", json!({"team": "a"})).await;

    s.get(&format!("/v1/memories/{id}"), &key_b).await.assert_error(404, "MEMORY_NOT_FOUND");
    s.put(&format!("/v1/memories/{id}"), &key_b, json!({"text": "hijacked"}))
        .await
        .assert_error(404, "MEMORY_NOT_FOUND");
    s.delete(&format!("/v1/memories/{id}"), &key_b).await.assert_error(404, "MEMORY_NOT_FOUND");
    s.get(&format!("/v1/memories/{id}/history"), &key_b).await.assert_error(404, "MEMORY_NOT_FOUND");
    assert!(s.get("/v1/memories", &key_b).await.data()["memories"].as_array().unwrap().is_empty());
    assert!(s.get("/v1/memories?metadata.team=a", &key_b).await.data()["memories"].as_array().unwrap().is_empty());
    let r = s
        .post("/v1/retrieve", &key_b, json!({"context": "secret plan launch Tuesday", "relevance_threshold": 0}))
        .await;
    assert!(r.assert_ok(200)["memories"].as_array().unwrap().is_empty());
    let r = s.delete("/v1/memories?confirm=true", &key_b).await;
    assert_eq!(r.assert_ok(200)["deleted"], 0);

    // Org A still has it, unchanged.
    let r = s.get(&format!("/v1/memories/{id}"), &key_a).await;
    assert_eq!(r.assert_ok(200)["text"], "Org A's secret plan: launch on Tuesday");
    // Keys of another org cannot be revoked either.
    let a_keys = s.get("/v1/account/api-keys", &key_a).await;
    let a_key_id = a_keys.data()["api_keys"][0]["id"].as_str().unwrap().to_string();
    s.delete(&format!("/v1/account/api-keys/{a_key_id}"), &key_b).await.assert_error(404, "KEY_NOT_FOUND");
    s.get("/v1/memories", &key_a).await.assert_ok(200);
}

async fn test_and_live_data_are_separate(backend: Backend) {
    let s = TestServer::start(backend).await;
    let org = s.create_org("free");
    let live = s.create_key(&org, "read,write,delete", false);
    let test = s.create_key(&org, "read,write,delete", true);
    assert!(live.starts_with("mem_live_") && test.starts_with("mem_test_"));

    let live_id = s.add(&live, "production fact about tea", json!({})).await;
    let test_id = s.add(&test, "sandbox fact about tea", json!({})).await;

    s.get(&format!("/v1/memories/{live_id}"), &test).await.assert_error(404, "MEMORY_NOT_FOUND");
    s.get(&format!("/v1/memories/{test_id}"), &live).await.assert_error(404, "MEMORY_NOT_FOUND");
    let only = |r: crate::common::Resp| -> Vec<String> {
        r.data()["memories"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(only(s.get("/v1/memories", &live).await), vec![live_id.clone()]);
    assert_eq!(only(s.get("/v1/memories", &test).await), vec![test_id.clone()]);
    assert_eq!(only(s.post("/v1/retrieve", &test, json!({"context": "fact about tea"})).await), vec![test_id.clone()]);
    assert_eq!(only(s.post("/v1/retrieve", &live, json!({"context": "fact about tea"})).await), vec![live_id.clone()]);

    // Clearing the sandbox leaves live data alone.
    let r = s.delete("/v1/memories?confirm=true", &test).await;
    assert_eq!(r.assert_ok(200)["deleted"], 1);
    s.get(&format!("/v1/memories/{live_id}"), &live).await.assert_ok(200);
}

/// PostgreSQL: row-level security confines the tenant role to its org even
/// for a query with no org filter at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_level_security() {
    use sqlx::Connection;
    let s = TestServer::start(Backend::Postgres).await;
    let (org_a, key_a) = s.tenant();
    let (org_b, key_b) = s.tenant();
    s.add(&key_a, "a1", json!({})).await;
    s.add(&key_a, "a2", json!({})).await;
    s.add(&key_b, "b1", json!({})).await;

    let mut conn = sqlx::PgConnection::connect(&s.database_url().unwrap()).await.unwrap();
    // A tenant transaction as the server opens it, optionally without an org.
    let count_as = |org: Option<String>| match org {
        Some(o) => format!("BEGIN; SET LOCAL ROLE memhost_tenant; SELECT set_config('memhost.org_id', '{o}', true);"),
        None => "BEGIN; SET LOCAL ROLE memhost_tenant;".to_string(),
    };
    let mut counts = Vec::new();
    for org in [Some(org_a.clone()), Some(org_b.clone()), None] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(count_as(org))).execute(&mut conn).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM memories").fetch_one(&mut conn).await.unwrap();
        let h: i64 = sqlx::query_scalar("SELECT count(*) FROM memory_history").fetch_one(&mut conn).await.unwrap();
        sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
        counts.push((n, h));
    }
    assert_eq!(counts, vec![(2, 2), (1, 1), (0, 0)]);

    sqlx::raw_sql(sqlx::AssertSqlSafe(count_as(Some(org_a.clone())))).execute(&mut conn).await.unwrap();
    let err = sqlx::query(
        "INSERT INTO memories (id, org_id, environment, text, embedding, created_at, updated_at) \
         VALUES (gen_random_uuid(), $1, 'live', 'x', array_fill(0.1::real, ARRAY[384])::vector, now(), now())",
    )
    .bind(&org_b)
    .execute(&mut conn)
    .await
    .expect_err("RLS refuses a row of another org");
    assert!(err.to_string().contains("row-level security"), "{err}");
    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
}
