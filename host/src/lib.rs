//! memhost: a memory API for AI applications.
//!
//! One module per domain (see DESIGN.md): `api` (routes, envelope, errors),
//! `auth` (orgs, API keys, principals), `limits` (rate-limit rules and
//! counters), `billing` (plans, quotas), `metering` (usage events, counters,
//! rollups, idempotency keys), `audit` (the append-only audit log),
//! `telemetry` (Prometheus series), `memories` (storage, embeddings,
//! retrieval, answers), `extraction` (memories from dialogue), `jobs` (the
//! durable batch-job queue and its workers), `plugins` (the WebAssembly sandbox, registry and
//! activation), `store` (database pools and migrations), `config`,
//! `cli` (the `memhost` command), and `app` (wiring the services together).

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod config;
pub mod extraction;
pub mod jobs;
pub mod limits;
pub mod memories;
pub mod metering;
pub mod plugins;
pub mod providers;
pub mod store;
pub mod supervisor;
pub mod telemetry;
