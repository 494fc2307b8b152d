//! The host functions a kind may be granted beyond logging: outbound HTTP
//! for alert channels (allow-listed hosts only), LLM completions and
//! embeddings for extractors. Each call carries only what its kind was
//! granted; the linker refuses any other import at upload. These work on
//! the host's own types; each WIT version's adapter (`wit/`) converts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::runtime::CallState;
use crate::metering::estimate_tokens;
use crate::providers::{Completer, Completion, CompletionRequest, Embedder};

/// An outbound HTTP request a plugin asks the host to send.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Largest response body handed back to a plugin.
const MAX_HTTP_RESPONSE: usize = 1 << 20;
/// Longest a single outbound request may take (the call's deadline may cut
/// it shorter).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Outbound HTTP as a plugin may use it.
#[derive(Clone)]
pub struct HttpGate {
    client: reqwest::Client,
    allow_hosts: Arc<Vec<String>>,
    /// Self-checks and dry runs: answer 200 without touching the network.
    dry_run: bool,
}

impl HttpGate {
    pub fn new(allow_hosts: Vec<String>) -> anyhow::Result<HttpGate> {
        // No redirects: a redirect could lead off the allow-list.
        let client =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(HTTP_TIMEOUT).build()?;
        Ok(HttpGate { client, allow_hosts: Arc::new(allow_hosts), dry_run: false })
    }

    pub fn dry_run() -> HttpGate {
        HttpGate { client: reqwest::Client::new(), allow_hosts: Arc::new(Vec::new()), dry_run: true }
    }

    fn allowed(&self, host: &str) -> bool {
        self.allow_hosts.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => pattern.eq_ignore_ascii_case(host),
        })
    }

    async fn send(&self, request: HttpRequest, deadline: Instant) -> Result<HttpResponse, String> {
        let url = reqwest::Url::parse(&request.url).map_err(|e| format!("bad url `{}`: {e}", request.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme `{}` is not allowed (http or https only)", url.scheme()));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if self.dry_run {
            return Ok(HttpResponse { status: 200, headers: Vec::new(), body: b"{\"dry_run\":true}".to_vec() });
        }
        if !self.allowed(&host) {
            return Err(format!("host `{host}` is not on this server's allow-list for alert channels"));
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("bad method `{}`", request.method))?;
        let mut builder = self.client.request(method, url).body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let response =
            builder.timeout(remaining.min(HTTP_TIMEOUT)).send().await.map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string())))
            .collect();
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading response: {e}"))? {
            if body.len() + chunk.len() > MAX_HTTP_RESPONSE {
                return Err(format!("response body over {MAX_HTTP_RESPONSE} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status, headers, body })
    }
}

/// What one call may use. Empty for pricing and rate limits.
#[derive(Clone, Default)]
pub struct HostCalls {
    pub http: Option<HttpGate>,
    pub llm: Option<Arc<dyn Completer>>,
    pub embedder: Option<Arc<dyn Embedder>>,
    /// The model the routing policy chose for this call's LLM requests.
    pub model: Option<String>,
}

impl HostCalls {
    pub fn none() -> HostCalls {
        HostCalls::default()
    }
}

/// The granted host functions, as each WIT version's adapter calls them.
impl CallState {
    pub(super) async fn http_send(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        match self.host.http.clone() {
            Some(gate) => gate.send(request, self.deadline).await,
            None => Err("outbound HTTP is not available to this call".into()),
        }
    }

    pub(super) async fn llm_complete(&mut self, mut request: CompletionRequest) -> Result<Completion, String> {
        let Some(provider) = self.host.llm.clone() else {
            return Err("no LLM provider is configured on this server (`[completions]`)".into());
        };
        if let Some(model) = &self.host.model {
            request.model = Some(model.clone());
        }
        let completion = provider.complete(&request).await.map_err(|e| e.to_string())?;
        // Reported tokens, else estimated (about 4 characters a token).
        let (input_tokens, output_tokens) = if completion.tokens_reported {
            (u64::from(completion.input_tokens), u64::from(completion.output_tokens))
        } else {
            let prompt: u64 = request.messages.iter().map(|m| estimate_tokens(&m.content)).sum();
            (prompt, estimate_tokens(&completion.text))
        };
        self.host_usage.model_calls.push(super::runtime::ModelCall {
            model: completion.model.clone(),
            input_tokens,
            output_tokens,
        });
        Ok(completion)
    }

    pub(super) async fn embed_texts(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
        match self.host.embedder.clone() {
            Some(embedder) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let vectors = embedder.embed(&refs).await.map_err(|e| e.to_string())?;
                let usage = &mut self.host_usage;
                usage.embedded_texts += texts.len() as u64;
                usage.embedding_tokens += texts.iter().map(|t| estimate_tokens(t)).sum::<u64>();
                if embedder.is_remote() {
                    usage.embedding_model = Some(embedder.model().to_string());
                }
                Ok(vectors)
            }
            None => Err("embeddings are not available to this call".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_exact_hosts_and_subdomain_wildcards() {
        let gate = HttpGate::new(vec!["hooks.slack.com".into(), "*.example.com".into()]).unwrap();
        assert!(gate.allowed("hooks.slack.com"));
        assert!(gate.allowed("a.example.com"));
        assert!(gate.allowed("a.b.example.com"));
        assert!(!gate.allowed("example.com"));
        assert!(!gate.allowed("evilexample.com"));
        assert!(!gate.allowed("slack.com"));
    }
}
