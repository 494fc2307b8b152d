//! `memhost plugin …`: the author's loop (new, build, check, run) and the
//! operator's (upload, list, activate, rollback, deactivate) on a live server.

use std::process::Command;

use serde_json::Value;

use crate::common::{BIN, Backend, PLUGINS_DIR, TestServer};

fn wasm_path(name: &str) -> String {
    format!("{PLUGINS_DIR}/{}.wasm", name.replace('-', "_"))
}

fn memhost(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("MEMHOST_DATA_DIR", dir.join("data"))
        .output()
        .expect("run memhost")
}

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_and_run_locally() {
    let dir = tempfile::tempdir().unwrap();
    // check: a valid plugin, as a table and as JSON.
    let out = memhost(&["plugin", "check", &wasm_path("pricing-tiered")], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ok: pricing-tiered") && stdout.contains("memhost:plugin@0.2.0"), "{stdout}");
    let out = memhost(&["plugin", "check", &wasm_path("pricing-flat"), "--json"], dir.path());
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["kind"], "pricing");
    assert_eq!(report["version"], "2.0.0");
    assert!(report["self_check"]["fuel_used"].as_u64().unwrap() > 0);

    // check: refusals carry the same codes as the server's.
    for (fixture, kind, code) in [
        ("hostile-import", None, "FORBIDDEN_IMPORT"),
        ("hostile-wit-too-new", None, "WIT_VERSION_UNSUPPORTED"),
        ("ratelimit-tiered", Some("pricing"), "WRONG_WORLD"),
    ] {
        let path = wasm_path(fixture);
        let mut args = vec!["plugin", "check", path.as_str()];
        if let Some(k) = kind {
            args.extend(["--kind", k]);
        }
        let out = memhost(&args, dir.path());
        let (_, stderr) = text(&out);
        assert!(!out.status.success() && stderr.contains(code), "{fixture}: {stderr}");
    }

    // run: output on stdout, cost on stderr.
    let input = dir.path().join("rate.json");
    std::fs::write(&input, r#"{"function": "rate", "plan": "starter", "usage": {"api_calls": 12000}}"#).unwrap();
    let config = dir.path().join("flat.yaml");
    std::fs::write(&config, "fee_micros: 1234\n").unwrap();
    let input_s = input.display().to_string();
    let config_s = config.display().to_string();
    let out = memhost(
        &["plugin", "run", &wasm_path("pricing-flat"), "--input", &input_s, "--plugin-config", &config_s],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let answer: Value = serde_json::from_str(&stdout).expect("JSON answer");
    assert_eq!(answer["ok"]["total_micros"], 1234);
    assert!(stderr.contains("fuel") && stderr.contains("peak memory") && stderr.contains("µs"), "{stderr}");

    // run: a hostile plugin is stopped, and the reason printed; a tighter
    // deadline with ample fuel stops it on time instead.
    let misbehave = dir.path().join("misbehave.json");
    std::fs::write(&misbehave, r#"{"misbehave": true}"#).unwrap();
    let m = misbehave.display().to_string();
    let out =
        memhost(&["plugin", "run", &wasm_path("hostile-loop"), "--input", &input_s, "--plugin-config", &m], dir.path());
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("out_of_fuel"), "{stderr}");
    let out = memhost(
        &[
            "plugin",
            "run",
            &wasm_path("hostile-loop"),
            "--input",
            &input_s,
            "--plugin-config",
            &m,
            "--fuel",
            "10000000000",
            "--deadline-ms",
            "100",
        ],
        dir.path(),
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("deadline_exceeded"), "{stderr}");

    // run: input of another kind is a clear error.
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, r#"{"function": "rules", "plan": "free"}"#).unwrap();
    let out =
        memhost(&["plugin", "run", &wasm_path("pricing-flat"), "--input", &rules.display().to_string()], dir.path());
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("WRONG_WORLD"), "{stderr}");
}

/// `plugin new` for every kind writes a crate that `plugin build` turns into
/// a component `plugin check` accepts.
#[test]
fn scaffold_builds_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    // Shared between runs so a rerun does not rebuild wit-bindgen.
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target");
    for (kind, name) in [
        ("pricing", "my-pricing"),
        ("rate-limit", "my-limits"),
        ("alert-channel", "my-alerts"),
        ("extractor", "my-extractor"),
    ] {
        let out = memhost(&["plugin", "new", kind, name], dir.path());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        let crate_dir = dir.path().join(name);
        assert!(crate_dir.join("fixture.json").is_file() && crate_dir.join("wit/0.2.0/types.wit").is_file());

        let out = Command::new(BIN)
            .args(["plugin", "build"])
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .output()
            .expect("build");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{kind}: {stdout}{stderr}");
        let wasm = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
        let out = memhost(&["plugin", "check", &wasm.display().to_string(), "--kind", kind, "--json"], dir.path());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{kind}: {stdout}{stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["name"], name);
        assert_eq!(report["kind"], kind);

        let fixture = crate_dir.join("fixture.json").display().to_string();
        let out = memhost(&["plugin", "run", &wasm.display().to_string(), "--input", &fixture], dir.path());
        let (stdout, stderr) = text(&out);
        // The pricing and alert scaffolds need a config; the answer is then a
        // deliberate `invalid-config` error, which is still a clean run.
        assert!(stdout.contains("\"ok\"") || stdout.contains("invalid-config"), "{kind}: {stdout}{stderr}");
    }
    // Names are checked; an existing directory is not overwritten.
    let out = memhost(&["plugin", "new", "pricing", "Bad Name"], dir.path());
    assert!(!out.status.success());
    let out = memhost(&["plugin", "new", "pricing", "my-pricing"], dir.path());
    assert!(!out.status.success() && text(&out).1.contains("not empty"));
    let out = memhost(&["plugin", "new", "sorcery", "x"], dir.path());
    assert!(!out.status.success() && text(&out).1.contains("unknown plugin kind"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_a_server() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, key) = server.operator();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("MEMHOST_URL", &server.base)
            .env("MEMHOST_API_KEY", &key)
            .output()
            .expect("run memhost");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, stdout, stderr) = run(&["plugin", "upload", &wasm_path("pricing-flat"), "--json"]);
    assert!(ok, "{stdout}{stderr}");
    let up: Value = serde_json::from_str(&stdout).unwrap();
    let id = up["id"].as_str().unwrap().to_string();
    let (ok, stdout, _) = run(&["plugin", "upload", &wasm_path("pricing-flat")]);
    assert!(ok && stdout.contains("already stored"), "{stdout}");
    let (ok, _, stderr) = run(&["plugin", "upload", &wasm_path("hostile-import")]);
    assert!(!ok && stderr.contains("422 FORBIDDEN_IMPORT"), "{stderr}");

    let (ok, stdout, stderr) = run(&["plugin", "list"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("pricing-flat") && stdout.contains(&id[..12]) && stdout.contains("inactive"), "{stdout}");

    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "fee_micros: 2500000\n").unwrap();
    let (ok, stdout, stderr) =
        run(&["plugin", "activate", &id[..12], "--plugin-config", &config.path().display().to_string()]);
    assert!(ok && stdout.contains("activated") && stdout.contains("global"), "{stdout}{stderr}");
    let r = server
        .post(
            "/admin/plugins/active/pricing/run",
            &key,
            serde_json::json!({"input": {"function": "rate", "plan": "starter"}}),
        )
        .await;
    assert_eq!(r.assert_ok(200)["ok"]["total_micros"], 2_500_000);

    let (ok, stdout, stderr) = run(&["plugin", "rollback", &id[..12]]);
    assert!(ok && stdout.contains("rolled back"), "{stdout}{stderr}");
    let r = server
        .post(
            "/admin/plugins/active/pricing/run",
            &key,
            serde_json::json!({"input": {"function": "rate", "plan": "starter"}}),
        )
        .await;
    assert_eq!(r.assert_ok(200)["name"], "pricing-tiered");

    let (ok, _, stderr) = run(&["plugin", "deactivate", &id[..12]]);
    assert!(!ok && stderr.contains("409 CONFLICT"), "{stderr}");
    let (ok, _, stderr) = run(&["plugin", "activate", "ffffffffffff"]);
    assert!(!ok && stderr.contains("404 PLUGIN_NOT_FOUND"), "{stderr}");
}
