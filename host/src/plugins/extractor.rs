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
