//! What the plugin benches share: a plugin service on a fresh embedded
//! database, and fresh digests for the same component.

use std::path::Path;

use memhost::plugins::{PluginService, PluginsConfig};

/// The plugin service as the server starts it (built-ins installed and
/// activated), on an embedded database under `dir`.
pub fn plugin_service(rt: &tokio::runtime::Runtime, dir: &Path) -> PluginService {
    let config = memhost::config::Config { data_dir: dir.join("data"), ..Default::default() };
    rt.block_on(async {
        let db = memhost::store::Database::connect(&config.store()).await.expect("database");
        PluginService::start(db, PluginsConfig::default(), dir.join("cache"), memhost::providers::Providers::offline())
            .await
            .expect("plugins")
    })
}

/// A copy of `wasm` with a custom section appended: a new digest (and no
/// compile-cache hit) for every upload; custom sections may sit anywhere
/// in a component.
pub fn with_nonce(wasm: &[u8], n: u64) -> Vec<u8> {
    let name = b"bench-nonce";
    let payload = n.to_le_bytes();
    let body_len = 1 + name.len() + payload.len();
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(body_len as u8); // < 128: one LEB128 byte
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}
