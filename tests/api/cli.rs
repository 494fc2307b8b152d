use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(admin_cli_manages_orgs_and_keys, db_info_reports_the_backend);

async fn admin_cli_manages_orgs_and_keys(backend: Backend) {
    let s = TestServer::start(backend).await;
    let out = s.cli_ok(&["orgs", "create", "--name", "Acme Corp", "--plan", "professional"]);
    assert!(out.contains("Org created") && out.contains("Acme Corp") && out.contains("professional"), "{out}");
    let orgs = s.cli_json(&["orgs", "list"]);
    let org = orgs[0]["id"].as_str().unwrap().to_string();
    assert!(org.starts_with("org_"));
    let table = s.cli_ok(&["orgs", "list"]);
    assert!(table.contains(&org) && table.contains("1 org(s)"), "{table}");

    let bad = s.cli(&["orgs", "create", "--name", "x", "--plan", "no spaces allowed"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("plan"));

    // create: the key is shown once, with a warning
    let out = s.cli_ok(&["keys", "create", "--org", &org, "--name", "backend", "--scopes", "read,write"]);
    let key = out.split_whitespace().find(|w| w.starts_with("mem_live_")).expect("key printed").to_string();
    assert!(out.contains("cannot be shown again"), "{out}");
    let bad = s.cli(&["keys", "create", "--org", &org, "--scopes", "read,root"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("root"));
    let bad = s.cli(&["keys", "create", "--org", "org_missing"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not found"));

    // list never shows the key itself
    let list = s.cli_ok(&["keys", "list", "--org", &org]);
    assert!(list.contains(&key[..13]) && !list.contains(&key[13..]), "{list}");
    assert!(list.contains("backend") && list.contains("read,write"), "{list}");

    // verify: valid key details; invalid → exit 1 with reason
    let v = s.cli_json(&["keys", "verify", &key]);
    assert_eq!(v["valid"], true);
    assert_eq!(v["org"]["plan"], "professional");
    assert_eq!(v["key"]["scopes"], serde_json::json!(["read", "write"]));
    let human = s.cli_ok(&["keys", "verify", &key]);
    assert!(human.contains("VALID") && human.contains("Acme Corp"), "{human}");
    let bad = s.cli(&["keys", "verify", "mem_live_0123456789abcdefghijABCDEFGHIJ01"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("INVALID: unknown API key"));

    // rotate by id: new key valid, old one valid during grace
    let key_id = v["key"]["id"].as_str().unwrap().to_string();
    let rotated = s.cli_json(&["keys", "rotate", &key_id, "--grace", "1h"]);
    let new_key = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(rotated["rotated_from"], key_id.as_str());
    assert_eq!(s.cli_json(&["keys", "verify", &new_key])["valid"], true);
    assert_eq!(s.cli_json(&["keys", "verify", &key])["valid"], true);
    let bad = s.cli(&["keys", "rotate", &key_id, "--grace", "5 weeks"]);
    assert!(!bad.status.success());

    // deactivate / activate / revoke, by key or id
    assert_eq!(s.cli_json(&["keys", "deactivate", &new_key])["status"], "inactive");
    let bad = s.cli(&["keys", "verify", &new_key, "--json"]);
    assert_eq!(bad.status.code(), Some(1));
    let reason: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(reason["reason"], "inactive");
    assert_eq!(s.cli_json(&["keys", "activate", &new_key])["status"], "active");
    assert_eq!(s.cli_json(&["keys", "revoke", rotated["id"].as_str().unwrap()])["status"], "revoked");
    let all = s.cli_json(&["keys", "list"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
}

async fn db_info_reports_the_backend(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    s.add(&key, "one", serde_json::json!({})).await;
    let info = s.cli_json(&["db", "info"]);
    assert_eq!(info["backend"], if backend == Backend::Sqlite { "sqlite" } else { "postgres" });
    assert_eq!(info["orgs"], 1);
    assert_eq!(info["api_keys"], 1);
    assert_eq!(info["memories"], 1);
    assert_eq!(info["memory_history"], 1);
    assert!(info["migrations_applied"].as_i64().unwrap() >= 1);
    if backend == Backend::Postgres {
        assert!(info["vector_extension"].as_str().unwrap().starts_with("pgvector"));
    }
    let table = s.cli_ok(&["db", "info"]);
    assert!(table.contains("backend") && table.contains("memories"), "{table}");
}
