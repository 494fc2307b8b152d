//! The memhost plugin SDK.
//!
//! A plugin is a WebAssembly component implementing one world of the WIT
//! package `memhost:plugin@0.2.0` (see `wit/0.2.0/` in the memhost
//! repository). This crate wraps the generated bindings so an author
//! implements one trait and calls one export macro:
//!
//! ```ignore
//! use memhost_sdk::pricing::*;
//!
//! struct Flat;
//!
//! impl Pricing for Flat {
//!     const NAME: &'static str = env!("CARGO_PKG_NAME");
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!
//!     fn rate(config: &str, input: RatingInput) -> Result<Invoice, PluginError> { … }
//!     fn limits(config: &str, plan: &str, plan_snapshot: Option<&str>, overrides: &str)
//!         -> Result<Vec<MetricLimit>, PluginError> { … }
//! }
//!
//! memhost_sdk::export_pricing!(Flat);
//! ```
//!
//! Enable the crate feature of your plugin's kind (`pricing`, `rate-limit`,
//! `alert-channel` or `extractor`) and build with
//! `cargo build --release --target wasm32-wasip2`.

/// The WIT package version this SDK implements. The export macros stamp it
/// into the component (custom section `memhost-sdk`), beside the versioned
/// export names the host reads anyway.
pub const WIT_VERSION: &str = "0.2.0";
/// This SDK's own version.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

#[doc(hidden)]
pub use serde_json as __serde_json;

// Each kind's bindings describe its world to the component linker, and a
// component implements exactly one world: so exactly one kind per build.
// (`memhost plugin build` and the host's build script build plugins one kind
// at a time, so Cargo's feature unification never mixes them.)
#[cfg(any(
    all(feature = "pricing", any(feature = "rate-limit", feature = "alert-channel", feature = "extractor")),
    all(feature = "rate-limit", any(feature = "alert-channel", feature = "extractor")),
    all(feature = "alert-channel", feature = "extractor"),
))]
compile_error!(
    "memhost-sdk: enable exactly one kind feature (pricing, rate-limit, alert-channel or extractor) per build; \
     build plugins of different kinds separately (`memhost plugin build` does)"
);

/// Emits the `memhost-sdk` custom section into the plugin crate itself (a
/// static in this library would be dropped by the linker when unreferenced).
#[doc(hidden)]
#[macro_export]
macro_rules! __stamp {
    () => {
        #[unsafe(link_section = "memhost-sdk")]
        #[used]
        static __MEMHOST_SDK_STAMP: [u8; 29] = *b"{\"wit\":\"0.2.0\",\"sdk\":\"0.2.0\"}";
    };
}

/// Parses a plugin's JSON config into `T`; a bad config becomes the
/// `invalid-config` error every kind understands.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, (String, String)> {
    serde_json::from_str(config).map_err(|e| ("invalid-config".to_string(), format!("config: {e}")))
}

macro_rules! common_helpers {
    () => {
        pub use self::memhost::plugin::log::Level;
        pub use self::memhost::plugin::types::{PluginError, PluginInfo, PluginKind};

        impl PluginError {
            /// A failure the host reports as is; not retried.
            pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
                PluginError { code: code.into(), message: message.into(), retryable: false }
            }

            /// A failure worth retrying later (alert channels).
            pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
                PluginError { code: code.into(), message: message.into(), retryable: true }
            }
        }

        /// Parses the plugin's JSON config into `T`, or an `invalid-config` error.
        pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, PluginError> {
            $crate::parse_config(config).map_err(|(code, message)| PluginError::new(code, message))
        }

        /// Writes to the host's log, tagged with this plugin's digest.
        pub fn log(level: Level, message: &str) {
            self::memhost::plugin::log::log(level, message)
        }
    };
}

#[cfg(feature = "pricing")]
pub mod pricing {
    //! World `pricing`: rate a billing period; report a plan's limits.
    wit_bindgen::generate!({
        path: "../../wit/0.2.0",
        world: "pricing",
        pub_export_macro: true,
        export_macro_name: "__export_pricing_world",
        default_bindings_module: "memhost_sdk::pricing",
    });
    common_helpers!();
    pub use self::exports::memhost::plugin::pricer::{
        Addon, Credit, Invoice, InvoiceLine, LineKind, MetricLimit, PlanSpan, Promotion, RatingInput, Usage,
    };

    /// Micro-units in one cent.
    pub const CENT: i128 = 10_000;

    /// Seconds since the Unix epoch of an RFC 3339 instant (`…Z` or an
    /// offset), without a clock or a date library.
    pub fn epoch_seconds(t: &str) -> Result<i64, PluginError> {
        let bad = || PluginError::new("invalid-input", format!("`{t}` is not an RFC 3339 instant"));
        let num = |s: Option<&str>| s.and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad);
        let (y, mo, d) = (num(t.get(0..4))?, num(t.get(5..7))?, num(t.get(8..10))?);
        let (h, mi, s) = (num(t.get(11..13))?, num(t.get(14..16))?, num(t.get(17..19))?);
        let mut rest = t.get(19..).ok_or_else(bad)?;
        if let Some(frac) = rest.strip_prefix('.') {
            rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
        }
        let offset = match rest {
            "Z" | "z" => 0,
            _ => {
                let sign = if rest.starts_with('-') { -1 } else { 1 };
                sign * (num(rest.get(1..3))? * 3600 + num(rest.get(4..6))? * 60)
            }
        };
        // Days from civil (Howard Hinnant's algorithm).
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Ok(days * 86_400 + h * 3600 + mi * 60 + s - offset)
    }

    /// An invoice line; an amount beyond 64 bits is the `overflow` error.
    pub fn line(
        kind: LineKind,
        metric: Option<&str>,
        reference: Option<&str>,
        description: String,
        quantity: u64,
        amount: i128,
    ) -> Result<InvoiceLine, PluginError> {
        Ok(InvoiceLine {
            kind,
            metric: metric.map(str::to_string),
            reference: reference.map(str::to_string),
            description,
            quantity,
            amount: i64::try_from(amount)
                .map_err(|_| PluginError::new("overflow", "a line amount does not fit in 64 bits"))?,
        })
    }

    /// A config decimal (a JSON number or string, not negative, at most 6
    /// decimals) in millionths: an amount in micro-units, or a rate. `field`
    /// names it in the `invalid-config` error.
    pub fn millionths(v: &serde_json::Value, field: &str) -> Result<i128, PluginError> {
        let text = match v {
            serde_json::Value::Number(n) if n.is_f64() => format!("{:.6}", n.as_f64().unwrap_or(-1.0)),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.trim().to_string(),
            _ => return Err(PluginError::new("invalid-config", format!("{field} must be a number"))),
        };
        let bad =
            || PluginError::new("invalid-config", format!("{field}: `{text}` is not a number with at most 6 decimals"));
        let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
        let frac = frac.trim_end_matches('0');
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 6 {
            return Err(bad());
        }
        let whole: i128 = whole.parse().map_err(|_| bad())?;
        let frac: i128 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
        Ok(whole * 1_000_000 + frac)
    }

    /// `numerator / denominator` micro-units (denominator > 0) rounded to a
    /// whole cent, half away from zero.
    pub fn round_to_cent(numerator: i128, denominator: i128) -> i128 {
        let d = denominator * CENT;
        let cents = (2 * numerator.abs() + d) / (2 * d);
        numerator.signum() * cents * CENT
    }

    /// Micro-units as `12.34` (whole cents).
    pub fn money(micros: i128) -> String {
        let cents = micros / CENT;
        format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100)
    }

    /// The credit lines that pay `owed` (micro-units): credits drawn soonest
    /// expiry first (never-expiring last), skipping those expired by the end
    /// of the period, each in whole cents up to what is still owed. The
    /// host draws each credit by the line that names it.
    pub fn credit_lines(credits: &[Credit], period_end: &str, owed: i128) -> Result<Vec<InvoiceLine>, PluginError> {
        let mut sorted: Vec<&Credit> = credits.iter().collect();
        sorted.sort_by(|a, b| match (&a.expires_at, &b.expires_at) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        let end = epoch_seconds(period_end)?;
        let mut left = owed;
        let mut lines = Vec::new();
        for c in sorted {
            if let Some(x) = &c.expires_at
                && epoch_seconds(x)? <= end
            {
                continue;
            }
            let usable = (c.remaining as i128).div_euclid(CENT) * CENT;
            let draw = usable.min(left);
            if draw <= 0 {
                continue;
            }
            left -= draw;
            lines.push(InvoiceLine {
                kind: LineKind::Credit,
                metric: None,
                reference: Some(c.id.clone()),
                description: format!(
                    "Credit {} ({}): {} of {}",
                    c.id,
                    c.source,
                    money(draw),
                    money(c.remaining as i128)
                ),
                quantity: 0,
                amount: -(draw as i64),
            });
        }
        Ok(lines)
    }

    /// A pricing plugin. Deterministic: no clock, no randomness, no I/O.
    pub trait Pricing {
        const NAME: &'static str;
        const VERSION: &'static str;
        /// JSON Schema of the config; `{}` accepts anything.
        fn config_schema() -> &'static str {
            "{}"
        }
        fn rate(config: &str, input: RatingInput) -> Result<Invoice, PluginError>;
        /// `plan_snapshot`: the plan definition the customer is held to
        /// (JSON), if any; `overrides`: the customer's overrides (JSON).
        fn limits(
            config: &str,
            plan: &str,
            plan_snapshot: Option<&str>,
            overrides: &str,
        ) -> Result<Vec<MetricLimit>, PluginError>;
    }

    #[doc(hidden)]
    pub fn __describe<T: Pricing>() -> PluginInfo {
        PluginInfo {
            name: T::NAME.into(),
            version: T::VERSION.into(),
            kind: PluginKind::Pricing,
            config_schema: T::config_schema().into(),
        }
    }
}

/// Exports a [`pricing::Pricing`] implementation as the component's `pricing` world.
#[cfg(feature = "pricing")]
#[macro_export]
macro_rules! export_pricing {
    ($plugin:ty) => {
        $crate::__stamp!();
        #[doc(hidden)]
        pub struct __MemhostExport;
        impl $crate::pricing::exports::memhost::plugin::meta::Guest for __MemhostExport {
            fn describe() -> $crate::pricing::PluginInfo {
                $crate::pricing::__describe::<$plugin>()
            }
        }
        impl $crate::pricing::exports::memhost::plugin::pricer::Guest for __MemhostExport {
            fn rate(
                config: ::std::string::String,
                input: $crate::pricing::RatingInput,
            ) -> ::std::result::Result<$crate::pricing::Invoice, $crate::pricing::PluginError> {
                <$plugin as $crate::pricing::Pricing>::rate(&config, input)
            }
            fn limits(
                config: ::std::string::String,
                plan: ::std::string::String,
                plan_snapshot: ::std::option::Option<::std::string::String>,
                overrides: ::std::string::String,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::pricing::MetricLimit>, $crate::pricing::PluginError> {
                <$plugin as $crate::pricing::Pricing>::limits(&config, &plan, plan_snapshot.as_deref(), &overrides)
            }
        }
        $crate::pricing::__export_pricing_world!(__MemhostExport with_types_in $crate::pricing);
    };
}

#[cfg(feature = "rate-limit")]
pub mod rate_limit {
    //! World `rate-limit`: choose the rules for a request class.
    wit_bindgen::generate!({
        path: "../../wit/0.2.0",
        world: "rate-limit",
        pub_export_macro: true,
        export_macro_name: "__export_rate_limit_world",
        default_bindings_module: "memhost_sdk::rate_limit",
    });
    common_helpers!();
    pub use self::exports::memhost::plugin::limiter::{Algorithm, RequestClass, Rule, Scope};

    /// A rate-limit plugin: the rules for a request class. The host enforces them.
    pub trait RateLimit {
        const NAME: &'static str;
        const VERSION: &'static str;
        fn config_schema() -> &'static str {
            "{}"
        }
        fn rules(config: &str, request: RequestClass) -> Result<Vec<Rule>, PluginError>;
    }

    #[doc(hidden)]
    pub fn __describe<T: RateLimit>() -> PluginInfo {
        PluginInfo {
            name: T::NAME.into(),
            version: T::VERSION.into(),
            kind: PluginKind::RateLimit,
            config_schema: T::config_schema().into(),
        }
    }
}

/// Exports a [`rate_limit::RateLimit`] implementation as the `rate-limit` world.
#[cfg(feature = "rate-limit")]
#[macro_export]
macro_rules! export_rate_limit {
    ($plugin:ty) => {
        $crate::__stamp!();
        #[doc(hidden)]
        pub struct __MemhostExport;
        impl $crate::rate_limit::exports::memhost::plugin::meta::Guest for __MemhostExport {
            fn describe() -> $crate::rate_limit::PluginInfo {
                $crate::rate_limit::__describe::<$plugin>()
            }
        }
        impl $crate::rate_limit::exports::memhost::plugin::limiter::Guest for __MemhostExport {
            fn rules(
                config: ::std::string::String,
                request: $crate::rate_limit::RequestClass,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::rate_limit::Rule>, $crate::rate_limit::PluginError> {
                <$plugin as $crate::rate_limit::RateLimit>::rules(&config, request)
            }
        }
        $crate::rate_limit::__export_rate_limit_world!(__MemhostExport with_types_in $crate::rate_limit);
    };
}

#[cfg(feature = "alert-channel")]
pub mod alert_channel {
    //! World `alert-channel`: deliver one alert; outbound HTTP through the host.
    wit_bindgen::generate!({
        path: "../../wit/0.2.0",
        world: "alert-channel",
        pub_export_macro: true,
        export_macro_name: "__export_alert_channel_world",
        default_bindings_module: "memhost_sdk::alert_channel",
    });
    common_helpers!();
    pub use self::exports::memhost::plugin::notifier::{Alert, Severity};
    pub use self::memhost::plugin::http_outbound::{Request as HttpRequest, Response as HttpResponse};

    /// Sends an HTTP request through the host (allow-listed hosts only).
    pub fn http_send(request: &HttpRequest) -> Result<HttpResponse, String> {
        self::memhost::plugin::http_outbound::send(request)
    }

    /// An alert channel. Return `PluginError::retryable` to be tried again later.
    pub trait AlertChannel {
        const NAME: &'static str;
        const VERSION: &'static str;
        fn config_schema() -> &'static str {
            "{}"
        }
        fn deliver(config: &str, alert: Alert) -> Result<(), PluginError>;
    }

    #[doc(hidden)]
    pub fn __describe<T: AlertChannel>() -> PluginInfo {
        PluginInfo {
            name: T::NAME.into(),
            version: T::VERSION.into(),
            kind: PluginKind::AlertChannel,
            config_schema: T::config_schema().into(),
        }
    }
}

/// Exports an [`alert_channel::AlertChannel`] implementation as the `alert-channel` world.
#[cfg(feature = "alert-channel")]
#[macro_export]
macro_rules! export_alert_channel {
    ($plugin:ty) => {
        $crate::__stamp!();
        #[doc(hidden)]
        pub struct __MemhostExport;
        impl $crate::alert_channel::exports::memhost::plugin::meta::Guest for __MemhostExport {
            fn describe() -> $crate::alert_channel::PluginInfo {
                $crate::alert_channel::__describe::<$plugin>()
            }
        }
        impl $crate::alert_channel::exports::memhost::plugin::notifier::Guest for __MemhostExport {
            fn deliver(
                config: ::std::string::String,
                alert: $crate::alert_channel::Alert,
            ) -> ::std::result::Result<(), $crate::alert_channel::PluginError> {
                <$plugin as $crate::alert_channel::AlertChannel>::deliver(&config, alert)
            }
        }
        $crate::alert_channel::__export_alert_channel_world!(__MemhostExport with_types_in $crate::alert_channel);
    };
}

#[cfg(feature = "extractor")]
pub mod extractor {
    //! World `extractor`: dialogue to memory operations; LLM and embeddings through the host.
    wit_bindgen::generate!({
        path: "../../wit/0.2.0",
        world: "extractor",
        pub_export_macro: true,
        export_macro_name: "__export_extractor_world",
        default_bindings_module: "memhost_sdk::extractor",
    });
    common_helpers!();
    pub use self::exports::memhost::plugin::extraction::{
        ExistingMemory, ExtractInput, MemoryOp, MemoryUpdate, NewMemory, Turn,
    };
    pub use self::memhost::plugin::llm::{Completion, CompletionRequest, Message};

    /// An LLM completion through the host (metered and costed there).
    pub fn llm_complete(request: &CompletionRequest) -> Result<Completion, String> {
        self::memhost::plugin::llm::complete(request)
    }

    /// Embeddings through the host's embedding provider.
    pub fn embed(texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        self::memhost::plugin::embeddings::embed(texts)
    }

    /// An extractor: dialogue turns (and related memories) to memory operations.
    pub trait Extractor {
        const NAME: &'static str;
        const VERSION: &'static str;
        fn config_schema() -> &'static str {
            "{}"
        }
        fn extract(config: &str, input: ExtractInput) -> Result<Vec<MemoryOp>, PluginError>;
    }

    #[doc(hidden)]
    pub fn __describe<T: Extractor>() -> PluginInfo {
        PluginInfo {
            name: T::NAME.into(),
            version: T::VERSION.into(),
            kind: PluginKind::Extractor,
            config_schema: T::config_schema().into(),
        }
    }
}

/// Exports an [`extractor::Extractor`] implementation as the `extractor` world.
#[cfg(feature = "extractor")]
#[macro_export]
macro_rules! export_extractor {
    ($plugin:ty) => {
        $crate::__stamp!();
        #[doc(hidden)]
        pub struct __MemhostExport;
        impl $crate::extractor::exports::memhost::plugin::meta::Guest for __MemhostExport {
            fn describe() -> $crate::extractor::PluginInfo {
                $crate::extractor::__describe::<$plugin>()
            }
        }
        impl $crate::extractor::exports::memhost::plugin::extraction::Guest for __MemhostExport {
            fn extract(
                config: ::std::string::String,
                input: $crate::extractor::ExtractInput,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::extractor::MemoryOp>, $crate::extractor::PluginError> {
                <$plugin as $crate::extractor::Extractor>::extract(&config, input)
            }
        }
        $crate::extractor::__export_extractor_world!(__MemhostExport with_types_in $crate::extractor);
    };
}
