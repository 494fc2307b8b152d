//! The HTTP side shared by the OpenAI-compatible providers: one client per
//! provider with its base URL, model and key (the key is never logged).

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{ProviderConfig, ProviderError};

pub struct OpenAiClient {
    http: reqwest::Client,
    base_url: String,
    pub model: String,
    api_key: Option<String>,
}

impl OpenAiClient {
    pub fn new(config: &ProviderConfig, default_model: &str) -> anyhow::Result<OpenAiClient> {
        let base = config.base_url.as_deref().unwrap_or("https://api.openai.com/v1");
        Ok(OpenAiClient {
            http: reqwest::Client::builder().timeout(Duration::from_secs(config.timeout_secs)).build()?,
            base_url: base.trim_end_matches('/').to_string(),
            model: config.model.clone().unwrap_or_else(|| default_model.to_string()),
            api_key: config.api_key.clone(),
        })
    }

    /// POSTs `body` as JSON to `{base_url}/{path}` and reads a JSON answer.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T, ProviderError> {
        let url = format!("{}/{path}", self.base_url);
        let mut request = self.http.post(&url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| ProviderError(format!("request to {url} failed: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProviderError(format!("{url} answered HTTP {status}")));
        }
        response.json().await.map_err(|e| ProviderError(format!("unreadable response from {url}: {e}")))
    }
}
