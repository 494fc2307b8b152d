//! Extractor plugins: turn dialogue turns (and the existing memories the
//! host found relevant) into memory operations, with LLM completions and
//! embeddings through the host.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::host_calls::HostCalls;
use super::kind::PluginKind;
use super::{Active, Answer, PluginFailure, PluginService, with_fallback};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExistingMemory {
    pub id: String,
    pub text: String,
    /// JSON object.
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExtractInput {
    pub turns: Vec<Turn>,
    pub existing: Vec<ExistingMemory>,
    /// Metadata the caller attached to the request (JSON object).
    pub metadata: String,
}

/// One operation an extractor asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum MemoryOp {
    Add {
        text: String,
        /// JSON object.
        metadata: String,
    },
    Update {
        id: String,
        text: String,
    },
    Delete {
        id: String,
    },
}

impl MemoryOp {
    pub fn name(&self) -> &'static str {
        match self {
            MemoryOp::Add { .. } => "add",
            MemoryOp::Update { .. } => "update",
            MemoryOp::Delete { .. } => "delete",
        }
    }
    /// The memory it changes (none for an add).
    pub fn id(&self) -> Option<String> {
        match self {
            MemoryOp::Add { .. } => None,
            MemoryOp::Update { id, .. } | MemoryOp::Delete { id } => Some(id.clone()),
        }
    }
}

/// The extractor plugins, as callers use them (`PluginService::extractors`).
pub struct Extractors<'a> {
    pub(super) service: &'a PluginService,
}

impl Extractors<'_> {
    /// The extractor active for `org_id` on `plan`, if any.
    pub fn active(&self, org_id: &str, plan: &str) -> Option<Arc<Active>> {
        self.service.active(PluginKind::Extractor, Some(org_id), Some(plan))
    }

    /// The extractors a request of the org may choose from by name (its
    /// `strategy`): the ones activated for the org, for its plan and
    /// globally, most specific first. An operator decides what is offered;
    /// a caller only picks among it.
    pub fn offered(&self, org_id: &str, plan: &str) -> Vec<Arc<Active>> {
        let mut offered: Vec<Arc<Active>> = Vec::new();
        for (org, plan) in [(Some(org_id), Some(plan)), (None, Some(plan)), (None, None)] {
            if let Some(a) = self.service.active(PluginKind::Extractor, org, plan)
                && !offered.iter().any(|o| o.plugin.record.name == a.plugin.record.name)
            {
                offered.push(a);
            }
        }
        offered
    }

    /// The extractor for a request: the one named by `strategy` among those
    /// [`offered`](Self::offered), else the org's active one. `Err` names
    /// what is offered.
    pub fn choose(&self, org_id: &str, plan: &str, strategy: Option<&str>) -> Result<Option<Arc<Active>>, String> {
        let Some(name) = strategy else { return Ok(self.active(org_id, plan)) };
        let offered = self.offered(org_id, plan);
        match offered.iter().find(|a| a.plugin.record.name == name) {
            Some(a) => Ok(Some(a.clone())),
            None => {
                let names: Vec<&str> = offered.iter().map(|a| a.plugin.record.name.as_str()).collect();
                Err(format!(
                    "strategy `{}`: no such extractor is offered to this org (offered: {})",
                    name.chars().take(64).collect::<String>(),
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                ))
            }
        }
    }

    /// The operations for one dialogue. On a sandbox failure the previous
    /// version answers, where fallback is on.
    /// `model`: the LLM model the routing policy chose (none: the configured one).
    pub async fn extract(
        &self,
        active: &Active,
        input: &ExtractInput,
        model: Option<String>,
    ) -> Result<Answer<Vec<MemoryOp>>, PluginFailure> {
        let runtime = self.service.runtime();
        let host = HostCalls { model, ..self.service.host_calls() };
        let result = with_fallback!(self.service, active, |p, config| runtime
            .extract(&p.prepared, &p.limits, &p.digest, host.clone(), config, input)
            .await);
        self.service.recorder().extract(active, input, &result);
        result
    }
}
