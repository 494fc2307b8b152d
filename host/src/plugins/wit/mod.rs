//! The WIT versions this host speaks. Each released version of
//! `memhost:plugin` (`wit/<version>/`, never edited once released) has one
//! adapter here that binds it and converts its generated types to the
//! host's own (`plugins::{pricing, rate_limit, alert_channel, extractor,
//! types}`) at the boundary, as Zed's extension host does. Callers never see
//! generated types, and a plugin built against an older version keeps
//! working after a newer one ships: it is dispatched by the version it was
//! built against.
//!
//! Adding a version (say 0.3.0): `wit/0.3.0/` beside the others, a module
//! `v0_3_0.rs` shaped like `v0_2_0.rs` (what did not change comes from
//! `unchanged_kinds!`, `shared.rs`), a variant in [`WitVersion`] and in
//! [`Prepared`], and one line in `dispatch!` and in each `match` below.
//! Nothing outside this directory changes, unless the host's own types
//! grow to carry what the new version adds (0.2.0: the pricing context).

#[macro_use]
mod shared;
pub mod v0_1_0;
pub mod v0_2_0;

use std::fmt;

use wasmtime::Store;
use wasmtime::component::{InstancePre, Linker};

use super::alert_channel::Alert;
use super::extractor::{ExtractInput, MemoryOp};
use super::kind::PluginKind;
use super::pricing::{Invoice, MetricLimit, RatingInput};
use super::rate_limit::{LimiterRule, RequestClass};
use super::runtime::CallState;
use super::types::{GuestError, PluginInfo};

/// A WIT package version this host has an adapter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WitVersion {
    V0_1_0,
    V0_2_0,
}

/// Why a plugin's WIT version has no adapter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// Newer than every adapter: upgrade the server.
    TooNew,
    /// Older than every adapter (support was dropped): rebuild the plugin.
    TooOld,
}

impl WitVersion {
    /// Every version with an adapter, oldest first.
    pub const ALL: [WitVersion; 2] = [WitVersion::V0_1_0, WitVersion::V0_2_0];
    /// What `memhost plugin new` scaffolds and the SDK targets.
    pub const NEWEST: WitVersion = WitVersion::V0_2_0;

    pub fn version(self) -> Version {
        match self {
            WitVersion::V0_1_0 => v0_1_0::VERSION,
            WitVersion::V0_2_0 => v0_2_0::VERSION,
        }
    }

    /// The adapter for a plugin built against `found`: one whose version is
    /// semver-compatible with it (same major; for 0.x the same minor) and
    /// not older than it (a guest may not use what the host does not know).
    pub fn for_guest(found: &Version) -> Result<WitVersion, Unsupported> {
        WitVersion::ALL
            .iter()
            .rev()
            .copied()
            .find(|w| {
                let host = w.version();
                host.compatible_with(found) && *found <= host
            })
            .ok_or_else(
                || {
                    if *found > WitVersion::NEWEST.version() { Unsupported::TooNew } else { Unsupported::TooOld }
                },
            )
    }

    /// Links the host side of `kind`'s world (the imports it is granted).
    pub fn add_to_linker(self, linker: &mut Linker<CallState>, kind: PluginKind) -> wasmtime::Result<()> {
        match self {
            WitVersion::V0_1_0 => v0_1_0::add_to_linker(linker, kind),
            WitVersion::V0_2_0 => v0_2_0::add_to_linker(linker, kind),
        }
    }
}

impl fmt::Display for WitVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.version().fmt(f)
    }
}

/// A compiled plugin linked for its kind's world at its WIT version.
pub enum Prepared {
    V0_1_0(v0_1_0::Prepared),
    V0_2_0(v0_2_0::Prepared),
}

/// Runs the same call on whichever version's adapter a plugin has.
macro_rules! dispatch {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            Prepared::V0_1_0($p) => $call,
            Prepared::V0_2_0($p) => $call,
        }
    };
}

/// A call made to a plugin of another kind (a host bug, never a guest's).
#[derive(Debug, thiserror::Error)]
#[error("a {kind} plugin has no `{function}` function")]
pub struct WrongKind {
    pub kind: PluginKind,
    pub function: &'static str,
}

impl Prepared {
    pub fn new(version: WitVersion, kind: PluginKind, pre: InstancePre<CallState>) -> wasmtime::Result<Prepared> {
        Ok(match version {
            WitVersion::V0_1_0 => Prepared::V0_1_0(v0_1_0::Prepared::new(kind, pre)?),
            WitVersion::V0_2_0 => Prepared::V0_2_0(v0_2_0::Prepared::new(kind, pre)?),
        })
    }

    pub fn kind(&self) -> PluginKind {
        dispatch!(self, p => p.kind())
    }

    pub fn wit_version(&self) -> WitVersion {
        match self {
            Prepared::V0_1_0(_) => WitVersion::V0_1_0,
            Prepared::V0_2_0(_) => WitVersion::V0_2_0,
        }
    }

    pub async fn describe(&self, store: &mut Store<CallState>) -> wasmtime::Result<PluginInfo> {
        dispatch!(self, p => p.describe(store).await)
    }

    pub async fn rate(
        &self,
        store: &mut Store<CallState>,
        config: &str,
        input: &RatingInput,
    ) -> wasmtime::Result<Result<Invoice, GuestError>> {
        dispatch!(self, p => p.rate(store, config, input).await)
    }

    pub async fn plan_limits(
        &self,
        store: &mut Store<CallState>,
        config: &str,
        plan: &str,
        plan_snapshot: Option<&str>,
        overrides: &str,
    ) -> wasmtime::Result<Result<Vec<MetricLimit>, GuestError>> {
        dispatch!(self, p => p.plan_limits(store, config, plan, plan_snapshot, overrides).await)
    }

    pub async fn rules(
        &self,
        store: &mut Store<CallState>,
        config: &str,
        class: &RequestClass,
    ) -> wasmtime::Result<Result<Vec<LimiterRule>, GuestError>> {
        dispatch!(self, p => p.rules(store, config, class).await)
    }

    pub async fn deliver(
        &self,
        store: &mut Store<CallState>,
        config: &str,
        alert: &Alert,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        dispatch!(self, p => p.deliver(store, config, alert).await)
    }

    pub async fn extract(
        &self,
        store: &mut Store<CallState>,
        config: &str,
        input: &ExtractInput,
    ) -> wasmtime::Result<Result<Vec<MemoryOp>, GuestError>> {
        dispatch!(self, p => p.extract(store, config, input).await)
    }
}

/// Just enough semver for WIT package versions (`major.minor.patch`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_are_dispatched_by_the_version_they_were_built_against() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert_eq!(WitVersion::for_guest(&v("0.1.0")), Ok(WitVersion::V0_1_0));
        assert_eq!(WitVersion::for_guest(&v("0.2.0")), Ok(WitVersion::V0_2_0));
        assert_eq!(WitVersion::for_guest(&v("0.2.1")), Err(Unsupported::TooNew), "a newer patch may use more");
        assert_eq!(WitVersion::for_guest(&v("0.3.0")), Err(Unsupported::TooNew));
        assert_eq!(WitVersion::for_guest(&v("1.0.0")), Err(Unsupported::TooNew));
        assert_eq!(WitVersion::for_guest(&v("0.0.9")), Err(Unsupported::TooOld));
        assert!(Version::parse("0.1").is_none());
        assert!(Version::parse("0.1.0.1").is_none());
        assert_eq!(Version::parse("0.1.0-rc1"), Some(v("0.1.0")));
    }
}
