//! Billing: the pricing plugin's golden fixtures give the same invoices
//! through `memhost plugin test` (the author's loop) and through the server.

use std::path::{Path, PathBuf};
use std::process::Command;

use memhost::plugins::calls::Fixture;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{BIN, Backend, PLUGINS_DIR, TestServer};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is in the repository").to_path_buf()
}

/// Each golden fixture: its name, the fixture, and its input as written
/// (a parsed `CallInput` is not serializable).
fn fixtures() -> Vec<(String, Fixture, Value)> {
    fixtures_of("pricing-tiered")
}

/// A plugin's golden fixtures (`plugins/<plugin>/fixtures`).
fn fixtures_of(plugin: &str) -> Vec<(String, Fixture, Value)> {
    let dir = repo().join(format!("plugins/{plugin}/fixtures"));
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

/// The id of the built-in pricing plugin.
async fn tiered_id(server: &TestServer, admin: &str) -> String {
    let list = server.get("/admin/plugins?kind=pricing", admin).await;
    let plugins = list.assert_ok(200)["plugins"].as_array().unwrap().clone();
    let tiered = plugins.iter().find(|p| p["name"] == "pricing-tiered").expect("built in");
    tiered["id"].as_str().unwrap().to_string()
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
    assert!(stdout.contains("FAIL  wrong"), "{stdout}");
    assert!(stdout.contains(".ok.total_micros: got 49000000, expected 1"), "{stdout}");
    assert!(
        stdout.contains("-     \"total_micros\": 1\n") || stdout.contains("\"total_micros\": 1"),
        "a diff: {stdout}"
    );
}

#[tokio::test]
async fn pricing_goldens_match_through_the_server() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, key) = server.operator();
    let id = &tiered_id(&server, &key).await;
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

/// `(previous, current)` billing periods, `YYYY-MM`.
fn periods() -> (String, String) {
    use chrono::Datelike;
    let now = chrono::Utc::now();
    let (y, m) = if now.month() == 1 { (now.year() - 1, 12) } else { (now.year(), now.month() - 1) };
    (format!("{y:04}-{m:02}"), format!("{:04}-{:02}", now.year(), now.month()))
}

/// Waits until the meter has counted `n` of `metric` for the org this period.
async fn counted(s: &TestServer, org: &str, env: &str, metric: &str, n: i64) {
    let q = format!(
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS TEXT) FROM usage_counters \
         WHERE org_id = '{org}' AND environment = '{env}' AND metric = '{metric}'"
    );
    for _ in 0..100 {
        if s.sql_number(&q).await >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{org} never counted {n} {metric}");
}

/// Customers since the current period began (a customer who joined
/// mid-period pays part of the base price: that is proration's business).
async fn since_the_period_began(s: &TestServer, orgs: &[&str]) {
    let (_, current) = periods();
    let list = orgs.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(", ");
    let since = format!("{current}-01T00:00:00.000000Z");
    for statement in [
        format!("UPDATE orgs SET created_at = '{since}' WHERE id IN ({list})"),
        format!("UPDATE plan_changes SET effective_at = '{since}' WHERE org_id IN ({list})"),
    ] {
        s.sql_exec(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Moves everything the orgs did this period into the previous one, as if
/// a month had passed (the only way to close a period inside a test).
async fn a_month_passes(s: &TestServer, orgs: &[&str], previous: &str, current: &str) {
    let list = orgs.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(", ");
    let start = format!("{previous}-01T00:00:00.000000Z");
    for statement in [
        format!("UPDATE usage_counters SET period = '{previous}' WHERE period = '{current}' AND org_id IN ({list})"),
        format!("UPDATE orgs SET created_at = '{start}' WHERE id IN ({list})"),
        format!("UPDATE plan_changes SET effective_at = '{start}' WHERE org_id IN ({list})"),
    ] {
        s.sql_exec(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

fn total(v: &Value) -> i64 {
    v["total_micros"].as_i64().unwrap_or_else(|| panic!("no total: {v}"))
}

/// Usage through the API for orgs on different plans ─▶ preview ─▶ close
/// the period ─▶ close it again (nothing changes, credits drawn once) ─▶
/// replay matches; a pricing swap changes previews at once and finalized
/// invoices never; a late event goes on the next invoice; test usage is
/// never invoiced.
async fn invoices_end_to_end(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, admin) = server.operator();
    let (previous, current) = periods();

    // Starter with a per-call overage above 2 calls, so amounts show.
    let starter = server.create_org_with(
        "starter",
        r#"{"pricing": {"limits": {"api_calls": 2}, "overage": {"api_calls": {"price": 1.00, "per": 1}}}}"#,
        false,
    );
    let pro = server.create_org("professional");
    let free = server.create_org("free");
    // Enterprise without a negotiated price: it cannot be priced.
    let unpriced = server.create_org("enterprise");
    let (starter_key, pro_key, free_test_key) = (
        server.create_key(&starter, "read,write", false),
        server.create_key(&pro, "read,write", false),
        server.create_key(&free, "read,write", true),
    );
    since_the_period_began(&server, &[&starter, &pro, &free, &unpriced]).await;
    for i in 0..5 {
        server.add(&starter_key, &format!("starter fact {i}"), json!({})).await;
    }
    server.add(&pro_key, "pro fact", json!({})).await;
    for i in 0..3 {
        server.add(&free_test_key, &format!("sandbox fact {i}"), json!({})).await;
    }
    counted(&server, &starter, "live", "api_calls", 5).await;
    counted(&server, &pro, "live", "api_calls", 1).await;
    counted(&server, &free, "test", "api_calls", 3).await;

    // The live preview: base 49 + 3 calls over the 2 included at 1.00.
    let preview = server.get("/v1/invoices/upcoming", &starter_key).await;
    let p = preview.assert_ok(200).clone();
    assert_eq!((p["status"].as_str(), p["livemode"].as_bool()), (Some("draft"), Some(true)), "{p}");
    assert_eq!(p["usage"]["api_calls"], 5, "{p}");
    assert_eq!(total(&p), 52_000_000, "{p}");
    assert_eq!(p["total"], "52.00");
    let csv = server.get("/v1/invoices/upcoming?format=csv", &starter_key).await;
    assert_eq!(csv.status, 200);
    let text = csv.body.as_str().unwrap().to_string();
    assert!(text.starts_with("invoice_id,org_id,period,kind"), "{text}");
    assert!(text.contains("Total due,,52.00,USD"), "{text}");
    let html = server.get("/v1/invoices/upcoming?format=html", &starter_key).await;
    assert!(html.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(html.body.as_str().unwrap().contains("52.00 USD"));
    server.get("/v1/invoices/upcoming?format=pdf", &starter_key).await.assert_error(400, "INVALID_REQUEST");
    // A test key previews its sandbox, marked as not live.
    let sandbox = server.get("/v1/invoices/upcoming", &free_test_key).await;
    assert_eq!(sandbox.assert_ok(200)["livemode"], false);
    assert_eq!(sandbox.data()["usage"]["api_calls"], 3);

    // The current period cannot be closed.
    let open = server.post("/admin/invoices/finalize", &admin, json!({"period": current})).await;
    open.assert_error(409, "PERIOD_NOT_CLOSED");
    server
        .post("/admin/invoices/finalize", &admin, json!({"period": "2025-13"}))
        .await
        .assert_error(400, "INVALID_REQUEST");

    // A month passes; the starter org holds a 10.00 credit.
    a_month_passes(&server, &[&starter, &pro, &free, &unpriced], &previous, &current).await;
    server
        .sql_exec(&format!(
            "INSERT INTO customer_credits (id, org_id, source, amount, remaining, created_at) \
             VALUES ('cr_e2e', '{starter}', 'manual', 10000000, 10000000, '{previous}-02T00:00:00.000000Z')"
        ))
        .await
        .unwrap();

    let orgs = json!([starter, pro, free]);
    let first = server.post("/admin/invoices/finalize", &admin, json!({"period": previous, "orgs": orgs})).await;
    let report = first.assert_ok(200).clone();
    assert_eq!((report["created"].as_u64(), report["unchanged"].as_u64()), (Some(3), Some(0)), "{report}");
    assert_eq!(report["failed"], json!([]), "{report}");
    // 42.00 (52 less the credit) + 299.00 + 0.00 (test usage is not invoiced).
    assert_eq!(report["totals_micros"]["USD"], 341_000_000, "{report}");

    let again = server.post("/admin/invoices/finalize", &admin, json!({"period": previous, "orgs": orgs})).await;
    let report = again.assert_ok(200).clone();
    assert_eq!((report["created"].as_u64(), report["unchanged"].as_u64()), (Some(0), Some(3)), "{report}");
    let left = "SELECT CAST(remaining AS TEXT) FROM customer_credits WHERE id = 'cr_e2e'";
    assert_eq!(server.sql_number(left).await, 0, "the credit is drawn once");
    let events = "SELECT CAST(COUNT(*) AS TEXT) FROM billing_events WHERE type = 'invoice.created'";
    assert_eq!(server.sql_number(events).await, 3);

    // Every org that existed in the period (not the operator's, made this
    // month): the unpriced one fails with the plugin's reason, the rest are
    // unchanged.
    let all = server.post("/admin/invoices/finalize", &admin, json!({"period": previous})).await;
    let report = all.assert_ok(200).clone();
    assert_eq!((report["created"].as_u64(), report["unchanged"].as_u64()), (Some(0), Some(3)), "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!((failed.len(), failed[0]["org_id"].as_str()), (1, Some(unpriced.as_str())), "{report}");
    assert!(failed[0]["error"].as_str().unwrap().contains("custom-price-missing"), "{report}");

    // The customer's invoices.
    let list = server.get("/v1/invoices", &starter_key).await;
    let list = list.assert_ok(200).as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    let invoice = list[0].clone();
    let id = invoice["id"].as_str().unwrap().to_string();
    assert_eq!((invoice["status"].as_str(), invoice["period"].as_str()), (Some("finalized"), Some(previous.as_str())));
    assert_eq!(total(&invoice), 42_000_000, "{invoice}");
    assert_eq!(invoice["credits_applied_micros"], -10_000_000, "{invoice}");
    assert_eq!(invoice["subtotal_micros"], 52_000_000, "{invoice}");
    assert_eq!(invoice["pricing"]["pricing_version"], "2026-12", "{invoice}");
    let one = server.get(&format!("/v1/invoices/{id}"), &starter_key).await;
    assert_eq!(one.assert_ok(200)["lines"], invoice["lines"]);
    server.get(&format!("/v1/invoices/{id}"), &pro_key).await.assert_error(404, "INVOICE_NOT_FOUND");
    let free_invoice = server.get(&format!("/admin/invoices?org={free}"), &admin).await;
    let free_invoice = free_invoice.assert_ok(200)[0].clone();
    assert_eq!((total(&free_invoice), free_invoice["usage"].clone()), (0, json!({})), "{free_invoice}");
    let csv = server.get(&format!("/v1/invoices/{id}?format=csv"), &starter_key).await;
    assert!(
        csv.body.as_str().unwrap().contains(&format!("{id},{starter},{previous},credit,,cr_e2e")),
        "{:?}",
        csv.body
    );

    // Replay matches, through the API and the CLI.
    let v = server.post(&format!("/admin/invoices/{id}/verify"), &admin, json!({})).await;
    assert_eq!(v.assert_ok(200)["matches"], true, "{}", v.body);
    let out = server.cli(&["invoices", "verify", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Swap the pricing config while serving: starter's base is now 99.
    let tiered = tiered_id(&server, &admin).await;
    let mut config = bundled_pricing();
    config["plans"]["starter"]["base_price"] = json!(99);
    config["pricing_version"] = json!("2026-12-b");
    let swap = server.post(&format!("/admin/plugins/{tiered}/activate"), &admin, json!({"config": config})).await;
    swap.assert_ok(200);
    // A late event for the closed period: two more calls counted after it closed.
    server
        .sql_exec(&format!(
            "UPDATE usage_counters SET quantity = quantity + 2 \
             WHERE org_id = '{starter}' AND environment = 'live' AND period = '{previous}' AND metric = 'api_calls'"
        ))
        .await
        .unwrap();
    let preview = server.get("/v1/invoices/upcoming", &starter_key).await;
    let p = preview.assert_ok(200).clone();
    assert_eq!(p["late_usage"], json!([{"period": previous, "metric": "api_calls", "quantity": 2}]), "{p}");
    // 99 + the 2 late calls (within the 2 included this period).
    assert_eq!(total(&p), 99_000_000, "{p}");
    assert_eq!(p["pricing"]["pricing_version"], "2026-12-b");
    let after = server.get(&format!("/v1/invoices/{id}"), &starter_key).await;
    assert_eq!(after.assert_ok(200)["total_micros"], 42_000_000, "a finalized invoice never changes");
    let v = server.post(&format!("/admin/invoices/{id}/verify"), &admin, json!({})).await;
    assert_eq!(v.assert_ok(200)["matches"], true, "replayed with the config it recorded: {}", v.body);

    // Swap the pricing plugin itself: pay as you go. Previews follow at
    // once (the 2 late calls at 0.0004 round to nothing; the monthly
    // minimum is owed); the finalized invoice neither changes nor stops
    // replaying (by the digest of the plugin that priced it).
    let payg = server.upload_plugin(&admin, crate::common::plugin_wasm("pricing-payg"), "kind=pricing").await;
    let payg = payg.assert_ok(201)["id"].as_str().unwrap().to_string();
    let payg_config: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("plugins/pricing-payg/config.example.yaml")).unwrap(),
    )
    .unwrap();
    let swap = server.post(&format!("/admin/plugins/{payg}/activate"), &admin, json!({"config": payg_config})).await;
    swap.assert_ok(200);
    let p = server.get("/v1/invoices/upcoming", &starter_key).await.assert_ok(200).clone();
    assert_eq!((p["pricing"]["plugin_name"].as_str(), total(&p)), (Some("pricing-payg"), 5_000_000), "{p}");
    let after = server.get(&format!("/v1/invoices/{id}"), &starter_key).await;
    assert_eq!(after.assert_ok(200)["total_micros"], 42_000_000);
    assert_eq!(after.data()["pricing"]["plugin_name"], "pricing-tiered");
    let v = server.post(&format!("/admin/invoices/{id}/verify"), &admin, json!({})).await;
    assert_eq!(v.assert_ok(200)["matches"], true, "{}", v.body);

    // Tampering is caught by the replay.
    server.sql_exec(&format!("UPDATE invoices SET total = total + 1 WHERE id = '{id}'")).await.unwrap();
    let v = server.post(&format!("/admin/invoices/{id}/verify"), &admin, json!({})).await;
    assert_eq!(v.assert_ok(200)["matches"], false, "{}", v.body);
    let out = server.cli(&["invoices", "verify", &id]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn invoices_end_to_end_sqlite() {
    invoices_end_to_end(Backend::Sqlite).await;
}

#[tokio::test]
async fn invoices_end_to_end_postgres() {
    invoices_end_to_end(Backend::Postgres).await;
}

/// The admin preview of an org's current period.
async fn preview(s: &TestServer, admin: &str, org: &str) -> Value {
    let r = s.get(&format!("/admin/invoices/upcoming?org={org}"), admin).await;
    r.assert_ok(200).clone()
}

/// The amounts of the preview's lines of one kind.
fn line(p: &Value, kind: &str) -> Vec<i64> {
    p["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == kind)
        .map(|l| l["amount_micros"].as_i64().unwrap())
        .collect()
}

/// Customer pricing and plan versions through the admin API: each change
/// is tried on the pricing plugin (refusals named), audited, and shows in
/// the preview at once; a plan change is a new version that the plan's
/// existing customers do not get until they are moved.
#[tokio::test]
async fn pricing_admin_validates_versions_and_grandfathers() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, admin) = server.operator();
    let a = server.create_org("starter");
    let b = server.create_org("starter");
    since_the_period_began(&server, &[&a, &b]).await;
    let path = |org: &str, rest: &str| format!("/admin/customers/{org}/{rest}");

    let c = server.get(&path(&a, "pricing"), &admin).await;
    assert_eq!(c.assert_ok(200)["plan"], "starter");
    assert_eq!(line(&preview(&server, &admin, &a).await, "base"), vec![49_000_000]);

    // Regions must be priced by the config first.
    let r = server.put(&path(&a, "pricing"), &admin, json!({"region": "eu"})).await;
    r.assert_error(400, "INVALID_REQUEST");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("unknown region `eu`"), "{}", r.body);
    let mut starter = bundled_pricing()["plans"]["starter"].clone();
    starter["regions"] = json!({"eu": {"currency": "EUR", "base_price": 45}});
    let v =
        server.put("/admin/pricing/plans/starter", &admin, json!({"definition": starter, "grandfather": false})).await;
    let v = v.assert_ok(200).clone();
    assert_eq!((v["pricing_version"].as_str(), v["grandfathered"].as_u64()), (Some("2026-12.1"), Some(0)), "{v}");
    server.put(&path(&a, "pricing"), &admin, json!({"region": "eu"})).await.assert_ok(200);
    let p = preview(&server, &admin, &a).await;
    assert_eq!((p["currency"].as_str(), line(&p, "base")), (Some("EUR"), vec![45_000_000]), "{p}");
    server.put(&path(&a, "pricing"), &admin, json!({"region": null})).await.assert_ok(200);

    // A malformed plan names its field; nothing changes.
    let bad = server.put("/admin/pricing/plans/starter", &admin, json!({"definition": {"base_price": "lots"}})).await;
    bad.assert_error(422, "INVALID_CONFIG");
    assert!(bad.body["error"]["details"]["errors"].to_string().contains("base_price"), "{}", bad.body);

    // Add-ons: an unknown one is refused by the plugin.
    let r = server.put(&path(&a, "addons/nope"), &admin, json!({})).await;
    r.assert_error(422, "PRICING_REJECTED");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("unknown-addon"), "{}", r.body);
    server.put(&path(&a, "addons/priority_queue"), &admin, json!({"quantity": 2})).await.assert_ok(200);
    assert_eq!(line(&preview(&server, &admin, &a).await, "addon"), vec![100_000_000]);

    // Credits, and promotions by code.
    server.post(&path(&a, "credits"), &admin, json!({"amount": "abc"})).await.assert_error(400, "INVALID_REQUEST");
    let credit = server.post(&path(&a, "credits"), &admin, json!({"amount": "25.50", "note": "goodwill"})).await;
    assert_eq!(credit.assert_ok(201)["remaining_micros"], 25_500_000);
    assert_eq!(line(&preview(&server, &admin, &a).await, "credit"), vec![-25_500_000]);
    let promo = server.post(&path(&a, "promotions"), &admin, json!({"code": "startup_program"})).await;
    let credits = promo.assert_ok(200)["credits"].as_array().unwrap().clone();
    let startup = credits.iter().find(|c| c["source"] == "promotion").expect("a promotion credit");
    assert_eq!(
        (startup["amount_micros"].as_i64(), startup["reference"].as_str()),
        (Some(500_000_000), Some("startup_program"))
    );
    assert!(startup["expires_at"].as_str().unwrap() > "2027-11", "12 months: {startup}");
    server
        .post(&path(&a, "promotions"), &admin, json!({"code": "startup_program"}))
        .await
        .assert_error(409, "CONFLICT");
    server.post(&path(&a, "promotions"), &admin, json!({"code": "nope"})).await.assert_error(400, "INVALID_REQUEST");
    let annual = server.post(&path(&a, "promotions"), &admin, json!({"code": "annual_discount"})).await;
    assert_eq!(annual.assert_ok(200)["promotions"][0]["promotion_id"], "annual_discount");
    // 49 + 100, less 20 %, is 119.20; the credits cover all of it.
    let p = preview(&server, &admin, &a).await;
    assert_eq!((line(&p, "discount"), p["total_micros"].as_i64()), (vec![-29_800_000], Some(0)), "{p}");

    // A price change: b keeps the definition it had; a customer who joins
    // now gets the new one; b moved gets it too; any may be held to a
    // stored version.
    let mut dearer = bundled_pricing()["plans"]["starter"].clone();
    dearer["base_price"] = json!(59);
    let v = server.put("/admin/pricing/plans/starter", &admin, json!({"definition": dearer})).await;
    let v = v.assert_ok(200).clone();
    assert_eq!((v["pricing_version"].as_str(), v["grandfathered"].as_u64()), (Some("2026-12.2"), Some(2)), "{v}");
    assert_eq!(line(&preview(&server, &admin, &b).await, "base"), vec![49_000_000]);
    let held = server.get(&path(&b, "pricing"), &admin).await;
    assert_eq!(held.assert_ok(200)["plan_version"]["pricing_version"], "2026-12.1");
    let newcomer = server.create_org("starter");
    since_the_period_began(&server, &[&newcomer]).await;
    assert_eq!(line(&preview(&server, &admin, &newcomer).await, "base"), vec![59_000_000]);
    server.delete(&path(&b, "plan-version"), &admin).await.assert_ok(200);
    assert_eq!(line(&preview(&server, &admin, &b).await, "base"), vec![59_000_000]);
    let hold = server.put(&path(&newcomer, "plan-version"), &admin, json!({"pricing_version": "2026-12"})).await;
    hold.assert_ok(200);
    assert_eq!(line(&preview(&server, &admin, &newcomer).await, "base"), vec![49_000_000]);
    server
        .put(&path(&newcomer, "plan-version"), &admin, json!({"pricing_version": "1999-01"}))
        .await
        .assert_error(400, "INVALID_REQUEST");
    // An A/B variant held inline: its limits are the customer's quotas too.
    let mut variant = bundled_pricing()["plans"]["starter"].clone();
    variant["limits"]["api_calls"] = json!(5);
    let hold = json!({"definition": variant, "label": "starter-b"});
    server.put(&path(&newcomer, "plan-version"), &admin, hold).await.assert_ok(200);
    let newcomer_key = server.create_key(&newcomer, "read,write", false);
    let limits = server.get("/v1/account/limits", &newcomer_key).await;
    let quotas = limits.assert_ok(200)["quotas"].as_array().unwrap().clone();
    let calls = quotas.iter().find(|q| q["metric"] == "api_calls").expect("an api_calls quota");
    assert_eq!(calls["included"], 5, "{quotas:?}");

    let view = server.get("/admin/pricing", &admin).await;
    let view = view.assert_ok(200).clone();
    assert_eq!(view["pricing_version"], "2026-12.2");
    assert!(view["history"].as_array().unwrap().len() >= 3, "{view}");
    let audited = "SELECT CAST(COUNT(*) AS TEXT) FROM audit_log WHERE action LIKE 'pricing.%'";
    assert!(server.sql_number(audited).await >= 9);

    // A deprecated plan keeps its customers and takes no new ones.
    let plans = server.post("/admin/pricing/plans/starter/deprecate", &admin, json!({})).await;
    let plans = plans.assert_ok(200).as_array().unwrap().clone();
    let starter_view = plans.iter().find(|p| p["plan"] == "starter").unwrap();
    assert_eq!((starter_view["deprecated"].as_bool(), starter_view["customers"].as_i64()), (Some(true), Some(3)));
    let refused = server.cli(&["orgs", "create", "--name", "Late", "--plan", "starter"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("deprecated"));
    assert_eq!(line(&preview(&server, &admin, &a).await, "base").len(), 1, "its customers are still priced");
    server.delete("/admin/pricing/plans/starter/deprecate", &admin).await.assert_ok(200);
    server.create_org("starter");

    // A new add-on in the catalogue is a new version, then sold at once.
    let addon = json!({"definition": {"display_name": "Audit export", "price": 15, "billing": "monthly"}});
    let v = server.put("/admin/pricing/addons/audit_export", &admin, addon).await;
    assert_eq!(v.assert_ok(200)["pricing_version"], "2026-12.3");
    server.put(&path(&b, "addons/audit_export"), &admin, json!({})).await.assert_ok(200);
    assert_eq!(line(&preview(&server, &admin, &b).await, "addon"), vec![15_000_000]);
    server
        .put("/admin/pricing/currencies/x", &admin, json!({"definition": {}}))
        .await
        .assert_error(400, "INVALID_REQUEST");

    // The same through the CLI.
    let shown = server.cli_json(&["pricing", "customer", &a]);
    assert_eq!(shown["addons"][0]["addon_id"], "priority_queue");
    let made = server.cli_json(&["pricing", "credit", &b, "--amount", "10"]);
    assert_eq!(made["amount_micros"], 10_000_000);
}

async fn pricing_view_when(server: &TestServer, admin: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let v = server.get("/admin/pricing", admin).await.assert_ok(200).clone();
        if check(&v) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the pricing policy was not picked up");
}

/// The pricing policy file is applied when it changes: a new version; an
/// invalid edit is refused with the field named and the running config stays.
#[tokio::test]
async fn an_edit_of_the_pricing_policy_file_is_a_new_version() {
    let policies = tempfile::tempdir().unwrap();
    let repo = repo();
    std::fs::copy(repo.join("policies/metrics.yaml"), policies.path().join("metrics.yaml")).unwrap();
    let file = policies.path().join("pricing.yaml");
    let bundled = std::fs::read_to_string(repo.join("policies/pricing.yaml")).unwrap();
    std::fs::write(&file, &bundled).unwrap();
    let dir = policies.path().display().to_string();
    let mut server = TestServer::start_with(Backend::Sqlite, &[("MEMHOST_POLICIES_DIR", &dir)]).await;
    let (_, admin) = server.operator();
    let org = server.create_org("starter");
    since_the_period_began(&server, &[&org]).await;
    let v = server.get("/admin/pricing", &admin).await;
    assert_eq!(v.assert_ok(200)["pricing_version"], "2026-12");

    let edited = bundled
        .replace("pricing_version: \"2026-12\"", "pricing_version: \"2027-01\"")
        .replace("base_price: 49", "base_price: 39");
    std::fs::write(&file, &edited).unwrap();
    let v = pricing_view_when(&server, &admin, |v| v["pricing_version"] == "2027-01").await;
    assert_eq!(v["config"]["plans"]["starter"]["base_price"], 39);
    // The org was a starter customer before: it keeps 49 until moved.
    assert_eq!(line(&preview(&server, &admin, &org).await, "base"), vec![49_000_000]);

    std::fs::write(&file, edited.replace("base_price: 39", "base_price: lots")).unwrap();
    let v = pricing_view_when(&server, &admin, |v| !v["policy_error"].is_null()).await;
    assert!(v["policy_error"].as_str().unwrap().contains("base_price"), "{v}");
    assert_eq!(v["pricing_version"], "2027-01", "the running config stays");

    // Fixed again (the version it already is), then a change through the
    // API: a restart does not undo it with the unchanged file.
    std::fs::write(&file, &edited).unwrap();
    pricing_view_when(&server, &admin, |v| v["policy_error"].is_null()).await;
    let mut dearer = v["config"]["plans"]["starter"].clone();
    dearer["base_price"] = json!(45);
    let r = server.put("/admin/pricing/plans/starter", &admin, json!({"definition": dearer})).await;
    assert_eq!(r.assert_ok(200)["pricing_version"], "2027-01.1");
    server.terminate();
    assert_eq!(server.wait_exit(std::time::Duration::from_secs(20)), Some(0), "{}", server.log());
    server.restart();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let v = server.get("/admin/pricing", &admin).await.assert_ok(200).clone();
    assert_eq!((v["pricing_version"].as_str(), v["policy_error"].is_null()), (Some("2027-01.1"), true), "{v}");
}

/// A candidate pricing config is simulated over a closed (invoiced) period
/// and an open one before anyone activates it, through the API and the
/// CLI; in shadow mode it prices live previews beside the active plugin.
#[tokio::test]
async fn a_candidate_is_simulated_and_shadowed_before_activation() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, admin) = server.operator();
    let (previous, current) = periods();
    let a = server.create_org("starter");
    let b = server.create_org("professional");
    let a_key = server.create_key(&a, "read,write", false);
    server.add(&a_key, "a fact", json!({})).await;
    counted(&server, &a, "live", "api_calls", 1).await;
    a_month_passes(&server, &[&a, &b], &previous, &current).await;
    let orgs = json!([a, b]);
    let r = server.post("/admin/invoices/finalize", &admin, json!({"period": previous, "orgs": orgs})).await;
    assert_eq!(r.assert_ok(200)["created"], 2);

    let tiered = tiered_id(&server, &admin).await;
    let mut candidate = bundled_pricing();
    candidate["plans"]["starter"]["base_price"] = json!(59);
    let sim = server
        .post(
            &format!("/admin/plugins/{tiered}/simulate"),
            &admin,
            json!({"periods": [previous, current], "orgs": orgs, "config": candidate}),
        )
        .await;
    let report = sim.assert_ok(200).clone();
    let s = &report["summary"];
    assert_eq!(
        (s["priced"].as_u64(), s["up"].as_u64(), s["unchanged"].as_u64()),
        (Some(4), Some(2), Some(2)),
        "{report}"
    );
    assert_eq!(s["revenue_delta_micros"]["USD"], 20_000_000, "{report}");
    let results = report["results"].as_array().unwrap();
    let closed = results.iter().find(|r| r["period"] == previous.as_str()).expect("the closed period");
    assert_eq!((closed["org_id"].as_str(), closed["basis"].as_str()), (Some(a.as_str()), Some("invoice")), "{report}");
    assert_eq!(
        (closed["before_micros"].as_i64(), closed["after_micros"].as_i64()),
        (Some(49_000_000), Some(59_000_000))
    );
    assert_eq!(closed["changed_lines"].as_array().unwrap().len(), 1, "{closed}");
    let open = results.iter().find(|r| r["period"] == current.as_str()).expect("the open period");
    assert_eq!(open["basis"], "usage");
    // Nothing was activated or stored.
    let v = server.get("/admin/pricing", &admin).await;
    assert_eq!(v.assert_ok(200)["config"]["plans"]["starter"]["base_price"], 49);
    server
        .post(&format!("/admin/plugins/{tiered}/simulate"), &admin, json!({"periods": ["soon"]}))
        .await
        .assert_error(400, "INVALID_REQUEST");
    server
        .post("/admin/plugins/0000000000000000/simulate", &admin, json!({"periods": [previous]}))
        .await
        .assert_error(404, "PLUGIN_NOT_FOUND");

    // The CLI: the candidate as a file, its config as YAML.
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("candidate.yaml");
    std::fs::write(&config_file, serde_yaml_ng::to_string(&candidate).unwrap()).unwrap();
    let out = server.cli_json(&[
        "plugin",
        "simulate",
        &format!("{PLUGINS_DIR}/pricing_tiered.wasm"),
        "--periods",
        &previous,
        "--orgs",
        &format!("{a},{b}"),
        "--plugin-config",
        config_file.to_str().unwrap(),
    ]);
    assert_eq!((out["summary"]["up"].as_u64(), out["summary"]["unchanged"].as_u64()), (Some(1), Some(1)), "{out}");

    // Shadow mode: live previews are priced by both.
    let start = server.post(&format!("/admin/plugins/{tiered}/shadow"), &admin, json!({"config": candidate})).await;
    start.assert_ok(200);
    server.get("/v1/invoices/upcoming", &a_key).await.assert_ok(200);
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = server.get(&format!("/admin/plugins/{tiered}/shadow"), &admin).await.assert_ok(200).clone();
        if seen["compared"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!((seen["compared"].as_u64(), seen["differed"].as_u64()), (Some(1), Some(1)), "{seen}");
    assert_eq!(seen["recent"][0]["org_id"], a.as_str());
    let metrics = server.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(text.contains("memhost_pricing_shadow_comparisons_total{outcome=\"different\"} 1"), "{text}");
    server.delete(&format!("/admin/plugins/{tiered}/shadow"), &admin).await.assert_ok(200);
    server.get(&format!("/admin/plugins/{tiered}/shadow"), &admin).await.assert_error(400, "INVALID_REQUEST");
}

fn stripe_signed(secret: &str, t: i64, payload: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Payments recorded on invoices, the Stripe meter-event export, and the
/// Stripe webhook: correctly signed, badly signed, redelivered and replayed.
#[tokio::test]
async fn payments_stripe_export_and_webhook() {
    let secret = "whsec_test_0123456789";
    let server = TestServer::start_with(Backend::Sqlite, &[("MEMHOST_STRIPE_WEBHOOK_SECRET", secret)]).await;
    let (_, admin) = server.operator();
    let (previous, current) = periods();
    let a = server.create_org("starter");
    let b = server.create_org("starter");
    let a_key = server.create_key(&a, "read,write", false);
    server.add(&a_key, "a fact", json!({})).await;
    counted(&server, &a, "live", "api_calls", 1).await;
    a_month_passes(&server, &[&a, &b], &previous, &current).await;
    let r = server.post("/admin/invoices/finalize", &admin, json!({"period": previous, "orgs": [a, b]})).await;
    assert_eq!(r.assert_ok(200)["created"], 2);
    let invoice_of = |org: String| {
        let server = &server;
        let admin = admin.clone();
        async move {
            let list = server.get(&format!("/admin/invoices?org={org}"), &admin).await;
            list.assert_ok(200)[0]["id"].as_str().unwrap().to_string()
        }
    };
    let (inv_a, inv_b) = (invoice_of(a.clone()).await, invoice_of(b.clone()).await);

    // A failure, then a payment of what is due.
    let pay = |id: &str| format!("/admin/invoices/{id}/payments");
    let failed =
        server.post(&pay(&inv_a), &admin, json!({"status": "failed", "failure_reason": "card_declined"})).await;
    assert_eq!(failed.assert_ok(201)["status"], "failed");
    let inv = server.get(&format!("/v1/invoices/{inv_a}"), &a_key).await;
    assert_eq!(inv.assert_ok(200)["status"], "payment_failed");
    let paid = server.post(&pay(&inv_a), &admin, json!({"status": "succeeded", "reference": "wire-42"})).await;
    assert_eq!(paid.assert_ok(201)["amount_micros"], 49_000_000);
    let inv = server.get(&format!("/v1/invoices/{inv_a}"), &a_key).await;
    let inv = inv.assert_ok(200).clone();
    assert_eq!((inv["status"].as_str(), inv["amount_due_micros"].as_i64()), (Some("paid"), Some(0)), "{inv}");
    server.post(&pay(&inv_a), &admin, json!({"status": "succeeded"})).await.assert_error(409, "CONFLICT");
    server.post(&pay(&inv_a), &admin, json!({"status": "maybe"})).await.assert_error(400, "INVALID_REQUEST");
    let huge = json!({"status": "failed", "amount_micros": i64::MAX});
    server.post(&pay(&inv_a), &admin, huge).await.assert_error(400, "INVALID_REQUEST");
    assert_eq!(server.get(&pay(&inv_a), &admin).await.assert_ok(200).as_array().unwrap().len(), 2);
    let failures = "SELECT CAST(COUNT(*) AS TEXT) FROM billing_events WHERE type = 'billing.payment_failed'";
    assert_eq!(server.sql_number(failures).await, 1);

    // Usage as Stripe meter events, under the customer's Stripe id.
    let set =
        server.put(&format!("/admin/customers/{a}/pricing"), &admin, json!({"stripe_customer_id": "cus_123"})).await;
    set.assert_ok(200);
    let export = server.get(&format!("/admin/invoices/stripe-meter-events?period={previous}"), &admin).await;
    assert_eq!(export.status, 200);
    let lines: Vec<Value> =
        export.body.as_str().unwrap().lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    let calls = lines.iter().find(|e| e["event_name"] == "api_calls").expect("an api_calls event");
    assert_eq!(calls["identifier"], format!("{inv_a}:api_calls"));
    assert_eq!(calls["payload"], json!({"stripe_customer_id": "cus_123", "value": "1"}));
    assert_eq!(calls["object"], "billing.meter_event");

    // The webhook.
    let event = json!({"id": "evt_1", "type": "invoice.payment_failed", "data": {"object": {
        "id": "in_1", "amount_due": 4900, "metadata": {"memhost_invoice_id": inv_b},
        "last_payment_error": {"code": "card_declined"}}}})
    .to_string();
    let send = |signature: String, body: String| {
        let req = server
            .client
            .post(format!("{}/webhooks/stripe", server.base))
            .header("Stripe-Signature", signature)
            .header("content-type", "application/json")
            .body(body);
        server.send(req)
    };
    let now = chrono::Utc::now().timestamp();
    let ok = send(stripe_signed(secret, now, &event), event.clone()).await;
    let ok = ok.assert_ok(200).clone();
    assert_eq!((ok["action"].as_str(), ok["duplicate"].as_bool()), (Some("recorded"), Some(false)), "{ok}");
    let inv = server.get(&format!("/admin/invoices/{inv_b}"), &admin).await;
    assert_eq!(inv.assert_ok(200)["status"], "payment_failed");
    assert_eq!(server.sql_number(failures).await, 2);

    let bad = send(stripe_signed("whsec_wrong", now, &event), event.clone()).await;
    bad.assert_error(400, "INVALID_SIGNATURE");
    let tampered = send(stripe_signed(secret, now, &event), event.replace("4900", "1")).await;
    tampered.assert_error(400, "INVALID_SIGNATURE");
    let replayed = send(stripe_signed(secret, now - 3600, &event), event.clone()).await;
    replayed.assert_error(400, "INVALID_SIGNATURE");
    assert!(replayed.body["error"]["message"].as_str().unwrap().contains("tolerance"), "{}", replayed.body);
    let again = send(stripe_signed(secret, now, &event), event.clone()).await;
    assert_eq!(again.assert_ok(200)["duplicate"], true);
    assert_eq!(server.sql_number(failures).await, 2, "a redelivery is handled once");
    assert_eq!(server.get(&pay(&inv_b), &admin).await.assert_ok(200).as_array().unwrap().len(), 1);

    // Then Stripe collects it: invoice.paid records the payment.
    let paid = json!({"id": "evt_2", "type": "invoice.paid", "data": {"object": {
        "id": "in_1", "amount_paid": 4900, "metadata": {"memhost_invoice_id": inv_b}}}})
    .to_string();
    let r = send(stripe_signed(secret, now, &paid), paid.clone()).await;
    assert_eq!(r.assert_ok(200)["action"], "recorded", "{}", r.body);
    let inv = server.get(&format!("/admin/invoices/{inv_b}"), &admin).await;
    assert_eq!(inv.assert_ok(200)["status"], "paid");
    let other = json!({"id": "evt_3", "type": "customer.created", "data": {"object": {}}}).to_string();
    let r = send(stripe_signed(secret, now, &other), other.clone()).await;
    assert_eq!(r.assert_ok(200)["action"], "ignored");
}

/// Two more pricing plugins that change the logic (pay as you go with
/// graduated per-unit and per-block storage prices and a monthly minimum;
/// a committed spend with a discount and a true-up): their goldens pass
/// through `memhost plugin test` and through a server.
#[tokio::test]
async fn more_pricing_plugins_pass_their_goldens_through_cli_and_server() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, key) = server.operator();
    let cwd = tempfile::tempdir().unwrap();
    for plugin in ["pricing-payg", "pricing-commitment"] {
        let config_file = repo().join(format!("plugins/{plugin}/config.example.yaml"));
        let config: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
        let all = fixtures_of(plugin);
        assert!(all.len() >= 6, "{plugin}: {} fixtures", all.len());

        let out = Command::new(BIN)
            .args(["plugin", "test", &format!("{PLUGINS_DIR}/{}.wasm", plugin.replace('-', "_"))])
            .arg(repo().join(format!("plugins/{plugin}/fixtures")))
            .arg("--plugin-config")
            .arg(&config_file)
            .current_dir(cwd.path())
            .env_remove("DATABASE_URL")
            .env("MEMHOST_DATA_DIR", cwd.path().join("data"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let n = all.len();
        assert!(out.status.success(), "{plugin}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("{n} fixtures: {n} passed, 0 failed")), "{stdout}");

        let up = server.upload_plugin(&key, crate::common::plugin_wasm(plugin), "kind=pricing").await;
        let id = up.assert_ok(201)["id"].as_str().unwrap().to_string();
        for (name, fixture, input) in &all {
            let config = fixture.config.clone().unwrap_or_else(|| config.clone());
            let r =
                server.post(&format!("/admin/plugins/{id}/run"), &key, json!({"input": input, "config": config})).await;
            assert_eq!(fixture.mismatch(r.assert_ok(200)), None, "{plugin} {name}: {}", fixture.description);
        }
        // Its schema refuses a malformed config, naming the field.
        let bad = server.post(&format!("/admin/plugins/{id}/activate"), &key, json!({"config": {"currency": 5}})).await;
        bad.assert_error(422, "INVALID_CONFIG");
    }
}
