//! Host bindings for `wit/0.1.0` (`memhost:plugin@0.1.0`), one module per
//! world. The shared interfaces (`types`, `log`) are generated once, in
//! `pricing`, and reused by the other worlds so their types are the same Rust
//! types. A later WIT version gets its own file beside this one, converting
//! its types at the boundary (as Zed's extension host does).

/// The WIT version these bindings implement; guests built against a newer
/// 0.1.x-incompatible version are refused at upload.
pub const WIT_VERSION: semver_lite::Version = semver_lite::Version { major: 0, minor: 1, patch: 0 };

pub mod pricing {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "pricing",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize],
    });
}

pub mod rate_limit {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "rate-limit",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize],
        with: {
            "memhost:plugin/types": super::pricing::memhost::plugin::types,
            "memhost:plugin/log": super::pricing::memhost::plugin::log,
        },
    });
}

pub mod alert_channel {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "alert-channel",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize],
        with: {
            "memhost:plugin/types": super::pricing::memhost::plugin::types,
            "memhost:plugin/log": super::pricing::memhost::plugin::log,
        },
    });
}

pub mod extractor {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "extractor",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize],
        with: {
            "memhost:plugin/types": super::pricing::memhost::plugin::types,
            "memhost:plugin/log": super::pricing::memhost::plugin::log,
        },
    });
}

pub use pricing::memhost::plugin::log::Level as LogLevel;
pub use pricing::memhost::plugin::types::{PluginError, PluginInfo, PluginKind as WitKind};

/// Just enough semver for WIT package versions (`major.minor.patch`).
pub mod semver_lite {
    use std::fmt;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Version {
        pub major: u64,
        pub minor: u64,
        pub patch: u64,
    }

    impl Version {
        pub fn parse(s: &str) -> Option<Version> {
            let core = s.split(['-', '+']).next()?;
            let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
            let v = Version { major: parts.next()??, minor: parts.next()??, patch: parts.next()?? };
            parts.next().is_none().then_some(v)
        }

        /// Semver compatibility as WIT and Cargo read it: same major, and for
        /// 0.x the same minor.
        pub fn compatible_with(&self, other: &Version) -> bool {
            if self.major == 0 || other.major == 0 {
                self.major == other.major && self.minor == other.minor
            } else {
                self.major == other.major
            }
        }
    }

    impl fmt::Display for Version {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
        }
    }
}
