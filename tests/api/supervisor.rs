//! The background loops: listed in `/ready` with their restarts, and
//! drained on SIGTERM (the usage meter writes what it holds, so no
//! acknowledged request goes unmetered).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer, UNLIMITED};

both_backends!(background_loops_are_listed_and_drained_on_sigterm);

async fn background_loops_are_listed_and_drained_on_sigterm(backend: Backend) {
    let mut s = TestServer::start(backend).await;
    let ready = s.call(Method::GET, "/ready", None, None).await;
    let loops = ready.assert_ok(200)["background"].as_array().unwrap().clone();
    let names: Vec<&str> = loops.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"usage-writer"), "{loops:?}");
    // Only PostgreSQL has other instances whose activations to follow.
    assert_eq!(names.contains(&"plugin-change-feed"), backend == Backend::Postgres, "{loops:?}");
    assert!(loops.iter().all(|l| l["running"] == true && l["restarts"] == 0), "{loops:?}");

    let org = s.create_org_with("starter", UNLIMITED, false);
    let key = s.create_key(&org, "read,write", false);
    for i in 0..5 {
        s.post("/v1/memories", &key, json!({ "text": format!("memory {i}") })).await.assert_ok(201);
    }
    // Straight away: each of the five was acknowledged only once its usage event committed.
    s.terminate();
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0), "a clean exit:\n{}", s.log());

    s.restart();
    let limits = s.get("/v1/account/limits", &key).await;
    let quotas = limits.assert_ok(200)["quotas"].as_array().unwrap().clone();
    let calls = quotas.iter().find(|q| q["metric"] == "api_calls").expect("api_calls quota");
    assert_eq!(calls["used"], 5, "every acknowledged request was metered before the exit: {quotas:?}");
}
