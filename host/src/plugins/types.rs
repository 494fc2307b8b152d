//! What every plugin kind shares, as the host sees it (never the generated
//! WIT types: `wit/` converts at the boundary).

use serde::Serialize;
use utoipa::ToSchema;

use super::kind::PluginKind;

/// What `describe` returns. The host checks `kind` against the world the
/// component implements and validates configs against `config_schema`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    /// JSON Schema of the plugin's config, as JSON text.
    pub config_schema: String,
}

/// A failure the plugin reports on purpose (an answer, not a crash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct GuestError {
    /// Stable machine-readable code, e.g. `unknown-plan`.
    pub code: String,
    pub message: String,
    /// Alert channels: whether the host should try again later.
    pub retryable: bool,
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin error `{}`: {}", self.code, self.message)
    }
}

/// A plugin log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}
