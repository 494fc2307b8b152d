//! A plugin project on disk, in any of the languages `memhost plugin new`
//! makes: what it is (`memhost-plugin.toml`, or a Rust crate's manifest),
//! how to build it with its language's toolchain, and where the `.wasm`
//! lands. `plugin build` and `plugin test DIR` go through here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::plugins::PluginKind;
use crate::plugins::build_plan;

/// The file that marks a plugin project and says what it is.
pub const MANIFEST: &str = "memhost-plugin.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    pub fn parse(s: &str) -> anyhow::Result<Lang> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" | "py" => Ok(Lang::Python),
            "js" | "javascript" => Ok(Lang::Js),
            other => bail!("unknown language `{other}`; expected rust, python or js"),
        }
    }
}

/// jco's two ways of making a component from JavaScript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JsBackend {
    /// QuickJS: ~1.6 MB guests, fast calls; `u64`/`s64` are Numbers.
    #[default]
    Quickjs,
    /// StarlingMonkey (SpiderMonkey): ~12.5 MB; `u64`/`s64` are BigInts.
    Starlingmonkey,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    kind: String,
    lang: Lang,
    #[serde(default)]
    js_backend: JsBackend,
    /// The WIT version directory under `wit/` (default: the only one).
    wit: Option<String>,
}

#[derive(Debug)]
pub struct Project {
    pub dir: PathBuf,
    pub name: String,
    pub kind: Option<PluginKind>,
    pub lang: Lang,
    js_backend: JsBackend,
    wit: Option<String>,
}

impl Project {
    /// The project in `dir`: its `memhost-plugin.toml`, else a Rust crate.
    pub fn open(dir: &Path) -> anyhow::Result<Project> {
        let manifest = dir.join(MANIFEST);
        if manifest.is_file() {
            let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
            let m: Manifest = toml::from_str(&text).with_context(|| format!("{}", manifest.display()))?;
            let kind = PluginKind::parse(&m.kind).with_context(|| {
                format!(
                    "{}: unknown kind `{}`; expected pricing, rate-limit, alert-channel or extractor",
                    manifest.display(),
                    m.kind
                )
            })?;
            return Ok(Project {
                dir: dir.to_path_buf(),
                name: m.name,
                kind: Some(kind),
                lang: m.lang,
                js_backend: m.js_backend,
                wit: m.wit,
            });
        }
        let cargo = dir.join("Cargo.toml");
        if cargo.is_file() {
            let text = std::fs::read_to_string(&cargo).with_context(|| format!("reading {}", cargo.display()))?;
            let value: toml::Value = toml::from_str(&text).with_context(|| format!("{}", cargo.display()))?;
            let name = value
                .get("package")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .with_context(|| format!("{}: no [package] name", cargo.display()))?
                .to_string();
            return Ok(Project {
                dir: dir.to_path_buf(),
                name,
                kind: None,
                lang: Lang::Rust,
                js_backend: JsBackend::default(),
                wit: None,
            });
        }
        bail!(
            "{} is not a plugin project: no {MANIFEST} or Cargo.toml (make one with `memhost plugin new KIND NAME --lang rust|python|js`)",
            dir.display()
        )
    }

    /// Where `build` puts the component.
    pub fn artifact(&self) -> PathBuf {
        match self.lang {
            Lang::Rust => {
                let target =
                    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| self.dir.join("target"), PathBuf::from);
                build_plan::artifact(&target, &self.name)
            }
            Lang::Python | Lang::Js => self.dir.join(format!("{}.wasm", self.name)),
        }
    }

    /// `config.example.json` (or `.yaml`) if the project has one.
    pub fn example_config(&self) -> Option<PathBuf> {
        ["config.example.json", "config.example.yaml"].into_iter().map(|f| self.dir.join(f)).find(|p| p.is_file())
    }

    fn wit_dir(&self) -> anyhow::Result<PathBuf> {
        let root = self.dir.join("wit");
        if let Some(v) = &self.wit {
            return Ok(root.join(v));
        }
        let mut versions: Vec<PathBuf> = std::fs::read_dir(&root)
            .with_context(|| format!("reading {} (the vendored WIT package)", root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        versions.sort();
        versions.pop().with_context(|| format!("no WIT version directory under {}", root.display()))
    }

    fn world(&self) -> anyhow::Result<&'static str> {
        Ok(self.kind.with_context(|| format!("{MANIFEST} must name the plugin's kind"))?.as_str())
    }

    /// Builds the component with the project's toolchain, installing the
    /// pinned toolchain into the project first when it is missing
    /// (`.venv/` from `requirements.txt`; `node_modules/` from
    /// `package.json`).
    pub fn build(&self) -> anyhow::Result<PathBuf> {
        match self.lang {
            Lang::Rust => {
                build_plan::ensure_target();
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.current_dir(&self.dir).args(["build", "--release", "--target", build_plan::TARGET]);
                cmd.args(["--config", build_plan::GUEST_RUSTFLAGS]);
                run(cmd)?;
            }
            Lang::Python => {
                let tool = self.python_toolchain()?;
                let mut cmd = Command::new(tool);
                cmd.current_dir(&self.dir).arg("-d").arg(self.wit_dir()?).args(["-w", self.world()?]);
                cmd.args(["componentize", "app", "-o"]).arg(self.artifact());
                run(cmd)?;
            }
            Lang::Js => {
                let jco = self.js_toolchain()?;
                let mut cmd = Command::new(jco);
                cmd.current_dir(&self.dir).args(["componentize", "app.js", "--wit"]).arg(self.wit_dir()?);
                cmd.args(["-n", self.world()?]);
                match self.js_backend {
                    // Synchronous exports: without this flag the component
                    // uses the component-model async ABI (`task.cancel`, …),
                    // which the host does not enable.
                    JsBackend::Quickjs => cmd.args(["--backend", "quickjs", "--backend-qjs-disable-async"]),
                    // No WASI features: the host grants none (no clocks,
                    // random, stdio or HTTP through WASI).
                    JsBackend::Starlingmonkey => cmd.args(["-d", "all"]),
                };
                cmd.arg("-o").arg(self.artifact());
                run(cmd)?;
            }
        }
        let artifact = self.artifact();
        if !artifact.is_file() {
            bail!("the build finished but {} is not there", artifact.display());
        }
        Ok(artifact)
    }

    /// `componentize-py` from `MEMHOST_COMPONENTIZE_PY`, else the project's
    /// `.venv`, made on first use.
    fn python_toolchain(&self) -> anyhow::Result<PathBuf> {
        if let Some(tool) = std::env::var_os("MEMHOST_COMPONENTIZE_PY") {
            return Ok(PathBuf::from(tool));
        }
        let venv = self.dir.join(".venv");
        let tool = venv.join("bin/componentize-py");
        if !tool.is_file() {
            eprintln!("installing the Python toolchain into {} (requirements.txt)", venv.display());
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
            let mut cmd = Command::new(python);
            cmd.current_dir(&self.dir).args(["-m", "venv", ".venv"]);
            run(cmd).context("making the virtual environment (is python3 with venv installed?)")?;
            let mut cmd = Command::new(venv.join("bin/pip"));
            cmd.current_dir(&self.dir).args(["install", "--quiet", "-r", "requirements.txt"]);
            run(cmd).context("installing componentize-py from PyPI")?;
        }
        Ok(tool)
    }

    /// `jco` from `MEMHOST_JCO`, else the project's `node_modules`,
    /// installed on first use.
    fn js_toolchain(&self) -> anyhow::Result<PathBuf> {
        if let Some(tool) = std::env::var_os("MEMHOST_JCO") {
            return Ok(PathBuf::from(tool));
        }
        let tool = self.dir.join("node_modules/.bin/jco");
        if !tool.is_file() {
            eprintln!(
                "installing the JavaScript toolchain into {} (package.json)",
                self.dir.join("node_modules").display()
            );
            let mut cmd = Command::new("npm");
            cmd.current_dir(&self.dir);
            if self.dir.join("package-lock.json").is_file() {
                cmd.args(["ci", "--no-audit", "--no-fund"]);
            } else {
                cmd.args(["install", "--no-audit", "--no-fund"]);
            }
            run(cmd).context("installing jco from npm (is Node.js 20+ with npm installed?)")?;
        }
        Ok(tool)
    }
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
