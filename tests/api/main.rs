//! Black-box tests: each starts the real `memhost` binary and speaks HTTP to
//! it. Cases named in `both_backends!` run against SQLite and PostgreSQL.

mod common;
mod fake_llm;

mod account;
mod auth;
mod billing;
mod caching;
mod cli;
mod errors;
mod extraction;
mod guest_languages;
mod jobs;
mod limits;
mod memories;
mod metering;
mod operations;
mod plugin_cli;
mod plugin_fallback;
mod plugins;
mod providers;
mod request_path;
mod retrieval;
mod semantic;
mod supervisor;
mod tenancy;
