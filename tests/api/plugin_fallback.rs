//! A plugin whose call fails in the sandbox: the version active before it
//! for that target answers instead (`plugins.fallback_to_previous`, on by
//! default); with fallback off, the kind's failure policy applies (rate
//! limits: fail-open by default).

use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer, plugin_wasm};

both_backends!(a_failing_plugin_falls_back_to_its_previous_version);

async fn a_failing_plugin_falls_back_to_its_previous_version(backend: Backend) {
    for fallback in [true, false] {
        let flag = if fallback { "true" } else { "false" };
        let s = TestServer::start_with(backend, &[("MEMHOST_PLUGINS__FALLBACK_TO_PREVIOUS", flag)]).await;
        let (_, admin) = s.operator();
        let (_, key) = s.tenant();
        // `ratelimit-flaky` answers GETs and traps on anything else; it
        // replaces the built-in `ratelimit-tiered` globally.
        let up = s.upload_plugin(&admin, plugin_wasm("ratelimit-flaky"), "").await;
        let id = up.assert_ok(201)["id"].as_str().unwrap().to_string();
        s.post(&format!("/admin/plugins/{id}/activate"), &admin, json!({})).await.assert_ok(200);

        let r = s.get("/v1/memories", &key).await;
        r.assert_ok(200);
        assert_eq!(r.headers["ratelimit-limit"], "7777", "the flaky version decides GETs");

        for _ in 0..3 {
            let r = s.post("/v1/memories", &key, json!({"text": "served although the plugin traps"})).await;
            r.assert_ok(201);
            if fallback {
                // ratelimit-tiered's tightest rule for this org: the global rail.
                assert_eq!(r.headers["ratelimit-limit"], "50000", "the previous version decided");
            } else {
                assert!(r.headers.get("ratelimit-limit").is_none(), "fail-open: no rules applied");
            }
        }
        // GETs are still the flaky version's (its answers are its own).
        assert_eq!(s.get("/v1/memories", &key).await.headers["ratelimit-limit"], "7777");

        let ready = s.call(reqwest::Method::GET, "/ready", None, None).await;
        let plugins = &ready.data()["plugins"];
        assert!(plugins["failures"].as_u64().unwrap() >= 1, "{}", ready.body);
        let limits = &ready.data()["limits"];
        if fallback {
            assert!(plugins["fallbacks"].as_u64().unwrap() >= 3, "{}", ready.body);
            assert_eq!(limits["plugin_failures"], 0, "no request went without rules: {}", ready.body);
        } else {
            assert_eq!(plugins["fallbacks"], 0, "{}", ready.body);
            assert!(limits["plugin_failures"].as_u64().unwrap() >= 3, "{}", ready.body);
        }
        assert!(s.log().contains("plugin call failed"), "the failure is logged");
    }
}
