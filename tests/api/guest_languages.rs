//! Plugins written in Python and JavaScript, as an author would: `plugin
//! new --lang`, `plugin build` with the pinned toolchains (componentize-py
//! from PyPI; jco from npm, installed by `.ci/install-guest-toolchains.sh`),
//! `plugin test` on the template's fixtures, then upload, global activation
//! and the same fixtures through the server; an alert channel in JavaScript
//! delivers to a receiver on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{BIN, Backend, TestServer};

/// The toolchains, installed once per test process (the script is idempotent).
fn toolchains() -> &'static (PathBuf, PathBuf) {
    static TOOLCHAINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    TOOLCHAINS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dest = root.join("target/guest-toolchains");
        let status = Command::new("bash")
            .arg(root.join(".ci/install-guest-toolchains.sh"))
            .arg(&dest)
            .status()
            .expect("run .ci/install-guest-toolchains.sh");
        assert!(status.success(), "installing the guest toolchains failed");
        (dest.join("py/bin/componentize-py"), dest.join("js/node_modules/.bin/jco"))
    })
}

fn memhost(args: &[&str], dir: &Path) -> (bool, String) {
    let (py, jco) = toolchains();
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("MEMHOST_DATA_DIR", dir.join("data"))
        .env("MEMHOST_COMPONENTIZE_PY", py)
        .env("MEMHOST_JCO", jco)
        .output()
        .expect("run memhost");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `plugin new` + `plugin build` + `plugin test`: the project's directory.
fn build_template(root: &Path, kind: &str, lang: &str) -> PathBuf {
    let name = format!("{lang}-{kind}");
    let (ok, out) = memhost(&["plugin", "new", kind, &name, "--lang", lang], root);
    assert!(ok, "{out}");
    let dir = root.join(&name);
    let (ok, out) = memhost(&["plugin", "build"], &dir);
    assert!(ok, "{lang} {kind} build: {out}");
    let (ok, out) = memhost(&["plugin", "test"], &dir);
    assert!(ok, "{lang} {kind} fixtures: {out}");
    assert!(out.contains("0 failed") && out.contains("fuel") && out.contains(" ms"), "{out}");
    dir
}

fn fixtures(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
        })
        .collect()
}

/// Every field `expected` names is in `actual` with the same value.
fn subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|x| subset(v, x))),
        (Value::Array(e), Value::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(v, x)| subset(v, x)),
        (e, a) => e == a,
    }
}

/// Uploads (following a background compile) and activates globally with
/// the template's example config; the plugin's id.
async fn upload_and_activate(server: &TestServer, key: &str, dir: &Path, config: Value) -> String {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let wasm = std::fs::read(dir.join(format!("{name}.wasm"))).unwrap();
    let r = server.upload_plugin(key, wasm, "wait=60").await;
    let mut data = r.data().clone();
    for _ in 0..1200 {
        if data["state"] != "queued" && data["state"] != "compiling" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        data = server.get(&format!("/admin/plugins/{}", data["id"].as_str().unwrap()), key).await.data().clone();
    }
    assert_eq!(data["state"], "ready", "{name}: {}", r.body);
    assert_eq!(data["name"], name.as_str(), "{data}");
    let id = data["id"].as_str().unwrap().to_string();
    let r = server.post(&format!("/admin/plugins/{id}/activate"), key, json!({"config": config})).await;
    r.assert_ok(200);
    id
}

/// Each fixture through the server's sandbox, on the active plugin.
async fn server_matches_fixtures(server: &TestServer, key: &str, dir: &Path, kind: &str, id: &str) {
    for (name, fixture) in fixtures(dir) {
        let mut body = json!({"input": fixture["input"]});
        if let Some(config) = fixture.get("config") {
            body["config"] = config.clone();
        }
        // A fixture with its own config runs on the stored plugin with it;
        // the others on the active plugin with the activation's config.
        let path = if fixture.get("config").is_some() {
            format!("/admin/plugins/{id}/run")
        } else {
            format!("/admin/plugins/active/{kind}/run")
        };
        let r = server.post(&path, key, body).await;
        let run = r.assert_ok(200);
        assert_eq!(run["plugin_id"], id, "{name}: {run}");
        let answer = match (run.get("ok"), run.get("error")) {
            (Some(ok), _) => json!({"ok": ok}),
            (_, Some(err)) => json!({"error": err}),
            _ => panic!("{name}: {run}"),
        };
        assert!(subset(&fixture["expect"], &answer), "{name}: expected {}, got {answer}", fixture["expect"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_pricing_from_the_templates() {
    let root = tempfile::tempdir().unwrap();
    let python = build_template(root.path(), "pricing", "python");
    let js = build_template(root.path(), "pricing", "js");

    // `plugin test` fails with a diff when an expected value is changed.
    let fixture = js.join("fixtures/starter-overage.json");
    let text = std::fs::read_to_string(&fixture).unwrap();
    std::fs::write(&fixture, text.replace("\"total_micros\": 11000000", "\"total_micros\": 11000001")).unwrap();
    let (ok, out) = memhost(&["plugin", "test"], &js);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  starter-overage") && out.contains("1 failed"), "{out}");
    let diff_line = |sign: &str, value: &str| {
        out.lines().any(|l| l.trim_start().starts_with(sign) && l.contains(&format!("\"total_micros\": {value}")))
    };
    assert!(diff_line("-", "11000001") && diff_line("+", "11000000"), "{out}");
    std::fs::write(&fixture, text).unwrap();

    // jco's QuickJS output as its README builds it, without
    // `--backend-qjs-disable-async` (async ABI built-ins in it): accepted too.
    let (_, jco) = toolchains();
    let plain = root.path().join("quickjs-plain.wasm");
    let out = Command::new(jco)
        .args(["componentize", "app.js", "--wit", "wit/0.2.0", "--world-name", "pricing", "--backend", "quickjs", "-o"])
        .arg(&plain)
        .current_dir(&js)
        .output()
        .expect("run jco");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (plain_s, fixtures_s) = (plain.display().to_string(), js.join("fixtures").display().to_string());
    let (ok, out) = memhost(&["plugin", "test", &plain_s, &fixtures_s, "--plugin-config", "config.example.json"], &js);
    assert!(ok && out.contains("0 failed"), "{out}");

    let server = TestServer::start(Backend::Sqlite).await;
    let (_, key) = server.operator();
    for dir in [&python, &js] {
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.example.json")).unwrap()).unwrap();
        let id = upload_and_activate(&server, &key, dir, config).await;
        // A rate (`rate` fixtures) and a quota (`limits` fixtures).
        server_matches_fixtures(&server, &key, dir, "pricing", &id).await;
        // The quota a customer on the free plan sees is the plugin's.
        let org = server.create_org("free");
        let customer = server.create_key(&org, "read", false);
        let quotas = server.get("/v1/account/limits", &customer).await.assert_ok(200)["quotas"].clone();
        let calls = quotas.as_array().unwrap().iter().find(|q| q["metric"] == "api_calls").cloned();
        let calls = calls.unwrap_or_else(|| panic!("{}: an api_calls quota in {quotas}", dir.display()));
        assert_eq!((calls["included"].as_u64(), calls["hard_limit"].as_u64()), (Some(1000), Some(1000)), "{calls}");
        assert_eq!(calls["overage_allowed"], false, "{calls}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_alert_channel_delivers_to_a_local_receiver() {
    let root = tempfile::tempdir().unwrap();
    let dir = build_template(root.path(), "alert-channel", "js");

    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = receiver.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    "ok"
                }
            }),
        );
        axum::serve(receiver, app).await.unwrap();
    });

    let server =
        TestServer::start_with(Backend::Sqlite, &[("MEMHOST_PLUGINS__HTTP_ALLOW_HOSTS", "[\"127.0.0.1\"]")]).await;
    let (_, key) = server.operator();
    let url = format!("http://127.0.0.1:{port}/hook");
    upload_and_activate(&server, &key, &dir, json!({"url": url})).await;
    let input = json!({"function": "deliver", "rule": "usage-80-percent", "severity": "critical",
        "title": "80% used", "message": "8 000 of 10 000 API calls", "data": {"used": 8000}});
    let r = server.post("/admin/plugins/active/alert-channel/run", &key, json!({"input": input})).await;
    let run = r.assert_ok(200);
    assert_eq!(run["ok"]["delivered"], true, "{run}");
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["rule"], "usage-80-percent");
    assert_eq!(got[0]["severity"], "critical");
    assert_eq!(got[0]["data"]["used"], 8000);
}
