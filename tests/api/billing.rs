//! Billing: the pricing plugin's golden fixtures give the same invoices
//! through `memhost plugin test` (the author's loop) and through the server.

use std::path::{Path, PathBuf};
use std::process::Command;

use memhost::plugins::calls::Fixture;
use serde_json::{Value, json};

use crate::common::{BIN, Backend, PLUGINS_DIR, TestServer};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is in the repository").to_path_buf()
}

/// Each golden fixture: its name, the fixture, and its input as written
/// (a parsed `CallInput` is not serializable).
fn fixtures() -> Vec<(String, Fixture, Value)> {
    let dir = repo().join("plugins/pricing-tiered/fixtures");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let raw: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).expect("JSON");
            let fixture: Fixture = serde_json::from_value(raw.clone()).expect("a fixture");
            (p.file_stem().unwrap().to_string_lossy().into_owned(), fixture, raw["input"].clone())
        })
        .collect()
}

fn bundled_pricing() -> Value {
    let text = std::fs::read_to_string(repo().join("policies/pricing.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("pricing.yaml is YAML")
}

/// `memhost plugin test` of the built-in pricing plugin on a fixture directory.
fn plugin_test(cwd: &Path, fixtures: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["plugin", "test", &format!("{PLUGINS_DIR}/pricing_tiered.wasm")])
        .arg(fixtures)
        .arg("--plugin-config")
        .arg(repo().join("policies/pricing.yaml"))
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env("MEMHOST_DATA_DIR", cwd.join("data"))
        .output()
        .unwrap()
}

#[test]
fn pricing_goldens_pass_with_plugin_test() {
    let dir = tempfile::tempdir().unwrap();
    let out = plugin_test(dir.path(), &repo().join("plugins/pricing-tiered/fixtures"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n = fixtures().len();
    assert!(n >= 20, "the goldens are there: {n}");
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{n} fixtures: {n} passed, 0 failed")), "{stdout}");

    // A wrong expectation is caught, with where it differs.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("wrong.json"),
        json!({"input": {"function": "rate", "plan": "starter"}, "expect": {"ok": {"total_micros": 1}}}).to_string(),
    )
    .unwrap();
    let out = plugin_test(dir.path(), &bad);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL  wrong: .ok.total_micros: got 49000000, expected 1"), "{stdout}");
}

#[tokio::test]
async fn pricing_goldens_match_through_the_server() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, key) = server.operator();
    let list = server.get("/admin/plugins", &key).await;
    let plugins = list.assert_ok(200)["plugins"].as_array().unwrap().clone();
    let tiered = plugins.iter().find(|p| p["name"] == "pricing-tiered").expect("built in");
    let id = tiered["id"].as_str().unwrap();
    let bundled = bundled_pricing();
    let all = fixtures();
    for (name, fixture, input) in &all {
        let config = fixture.config.clone().unwrap_or_else(|| bundled.clone());
        let r = server.post(&format!("/admin/plugins/{id}/run"), &key, json!({"input": input, "config": config})).await;
        // The run report carries `ok` or `error` beside its stats: the
        // expectation names only the former.
        assert_eq!(fixture.mismatch(r.assert_ok(200)), None, "{name}: {}", fixture.description);
    }
    // The bundled config is what the built-in plugin was activated with.
    let addons = &all.iter().find(|(name, ..)| name == "addons").expect("the addons fixture").2;
    let r = server.post("/admin/plugins/active/pricing/run", &key, json!({"input": addons})).await;
    assert_eq!(r.assert_ok(200)["ok"]["total_micros"], 324_000_000);
}

#[tokio::test]
async fn a_pricing_plugin_built_against_wit_0_1_still_runs() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, key) = server.operator();
    let wasm = crate::common::plugin_wasm("pricing-wit-0-1");
    let up = server.upload_plugin(&key, wasm, "kind=pricing").await;
    let plugin = up.assert_ok(201).clone();
    assert_eq!(plugin["wit_version"], "0.1.0", "{plugin}");
    let id = plugin["id"].as_str().unwrap();
    let input = json!({"function": "rate", "plan": "starter", "usage": {"api_calls": 3},
        "credits": [{"id": "c1", "source": "manual", "remaining": 5_000_000}]});
    let r = server.post(&format!("/admin/plugins/{id}/run"), &key, json!({"input": input})).await;
    let ok = r.assert_ok(200)["ok"].clone();
    // The 0.2.0 context (credits) is not given to it, so none is drawn.
    assert_eq!(ok["total_micros"], 2_000_000, "{ok}");
    assert_eq!(ok["lines"][0]["kind"], "usage", "{ok}");
    assert_eq!(ok["lines"][1]["kind"], "discount", "{ok}");
    let r = server
        .post(&format!("/admin/plugins/{id}/run"), &key, json!({"input": {"function": "limits", "plan": "x"}}))
        .await;
    assert_eq!(r.assert_ok(200)["ok"][0]["included"], 7);
}
