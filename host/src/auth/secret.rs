//! The server secret that keys API-key hashes.

use std::io::Write;

use anyhow::Context;

use std::path::Path;

/// Returns the configured secret, or in embedded mode the one kept under the
/// data directory (created with mode 0600 on first run). Production mode
/// must be given one: every instance has to share it.
pub fn load_or_create(configured: Option<&str>, production: bool, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = configured {
        if s.len() < 16 {
            anyhow::bail!("MEMHOST_SECRET must be at least 16 characters");
        }
        return Ok(s.as_bytes().to_vec());
    }
    if production {
        anyhow::bail!(
            "MEMHOST_SECRET is required with PostgreSQL: every instance must share it to verify API keys \
             (generate one with `openssl rand -hex 32`)"
        );
    }
    let path = data_dir.join("server_secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => anyhow::bail!("{} is too short; delete it only if no API keys exist yet", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let secret = super::keys::random_secret_hex();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut f) => {
            f.write_all(secret.as_bytes())?;
            f.sync_all()?;
            Ok(secret.into_bytes())
        }
        // Another process (a CLI call beside the server) created it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(std::fs::read_to_string(&path)?.trim().as_bytes().to_vec())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}
