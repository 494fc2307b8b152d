//! The part of an adapter that every WIT version so far shares: its
//! bindings ([`world_bindings!`]: the worlds are the same, only the path
//! differs) and the code for what did not change ([`unchanged_kinds!`]:
//! the rate-limit, alert-channel and extractor worlds, `describe`, pricing's
//! metric limits, the imports' host side and the `Prepared` enum). Each
//! version's module expands both (the names they use, `pricing`,
//! `wit_limit`, `wit_log`…, resolve there) and writes by hand only what its
//! version changed (0.2.0: pricing's rating). When a version changes one of
//! these, move that piece out of the macro into each version's file.

/// The generated bindings of one WIT version (`$path`, e.g.
/// `"../wit/0.2.0"`), one module per world, and the short names the
/// adapters use for their interfaces. Every version so far has the same
/// worlds; a version that adds or renames one writes its own block instead.
macro_rules! world_bindings {
    ($path:literal) => {
        /// One module per world. The shared interfaces (`types`, `log`) are
        /// generated once, in `pricing`, and reused by the other worlds.
        mod bindings {
            pub mod pricing {
                wasmtime::component::bindgen!({
                    path: $path,
                    world: "pricing",
                    imports: { default: async },
                    exports: { default: async },
                });
            }

            pub mod rate_limit {
                wasmtime::component::bindgen!({
                    path: $path,
                    world: "rate-limit",
                    imports: { default: async },
                    exports: { default: async },
                    with: {
                        "memhost:plugin/types": super::pricing::memhost::plugin::types,
                        "memhost:plugin/log": super::pricing::memhost::plugin::log,
                    },
                });
            }

            pub mod alert_channel {
                wasmtime::component::bindgen!({
                    path: $path,
                    world: "alert-channel",
                    imports: { default: async },
                    exports: { default: async },
                    with: {
                        "memhost:plugin/types": super::pricing::memhost::plugin::types,
                        "memhost:plugin/log": super::pricing::memhost::plugin::log,
                    },
                });
            }

            pub mod extractor {
                wasmtime::component::bindgen!({
                    path: $path,
                    world: "extractor",
                    imports: { default: async },
                    exports: { default: async },
                    with: {
                        "memhost:plugin/types": super::pricing::memhost::plugin::types,
                        "memhost:plugin/log": super::pricing::memhost::plugin::log,
                    },
                });
            }
        }

        use bindings::{alert_channel, extractor, pricing, rate_limit};
        use pricing::memhost::plugin::{log as wit_log, types as wit_types};

        use alert_channel::exports::memhost::plugin::notifier as wit_alert;
        use alert_channel::memhost::plugin::http_outbound as wit_http;
        use extractor::exports::memhost::plugin::extraction as wit_extract;
        use extractor::memhost::plugin::{embeddings as wit_embeddings, llm as wit_llm};
        use pricing::exports::memhost::plugin::pricer as wit_price;
        use rate_limit::exports::memhost::plugin::limiter as wit_limit;
    };
}

macro_rules! unchanged_kinds {
    () => {
        /// A plugin of one kind, linked for this version's world.
        pub enum Prepared {
            Pricing(pricing::PricingPre<CallState>),
            RateLimit(rate_limit::RateLimitPre<CallState>),
            AlertChannel(alert_channel::AlertChannelPre<CallState>),
            Extractor(extractor::ExtractorPre<CallState>),
        }

        pub fn add_to_linker(linker: &mut Linker<CallState>, kind: PluginKind) -> wasmtime::Result<()> {
            match kind {
                PluginKind::Pricing => pricing::Pricing::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
                PluginKind::RateLimit => rate_limit::RateLimit::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
                PluginKind::AlertChannel => alert_channel::AlertChannel::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
                PluginKind::Extractor => extractor::Extractor::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
            }
        }

        fn wrong(kind: PluginKind, function: &'static str) -> wasmtime::Error {
            wasmtime::Error::new(WrongKind { kind, function })
        }

        impl Prepared {
            pub fn new(kind: PluginKind, pre: InstancePre<CallState>) -> wasmtime::Result<Prepared> {
                Ok(match kind {
                    PluginKind::Pricing => Prepared::Pricing(pricing::PricingPre::new(pre)?),
                    PluginKind::RateLimit => Prepared::RateLimit(rate_limit::RateLimitPre::new(pre)?),
                    PluginKind::AlertChannel => Prepared::AlertChannel(alert_channel::AlertChannelPre::new(pre)?),
                    PluginKind::Extractor => Prepared::Extractor(extractor::ExtractorPre::new(pre)?),
                })
            }

            pub fn kind(&self) -> PluginKind {
                match self {
                    Prepared::Pricing(_) => PluginKind::Pricing,
                    Prepared::RateLimit(_) => PluginKind::RateLimit,
                    Prepared::AlertChannel(_) => PluginKind::AlertChannel,
                    Prepared::Extractor(_) => PluginKind::Extractor,
                }
            }

            pub async fn describe(&self, s: &mut Store<CallState>) -> wasmtime::Result<PluginInfo> {
                let info = match self {
                    Prepared::Pricing(pre) => {
                        pre.instantiate_async(&mut *s).await?.memhost_plugin_meta().call_describe(s).await
                    }
                    Prepared::RateLimit(pre) => {
                        pre.instantiate_async(&mut *s).await?.memhost_plugin_meta().call_describe(s).await
                    }
                    Prepared::AlertChannel(pre) => {
                        pre.instantiate_async(&mut *s).await?.memhost_plugin_meta().call_describe(s).await
                    }
                    Prepared::Extractor(pre) => {
                        pre.instantiate_async(&mut *s).await?.memhost_plugin_meta().call_describe(s).await
                    }
                }?;
                Ok(PluginInfo {
                    name: info.name,
                    version: info.version,
                    kind: match info.kind {
                        wit_types::PluginKind::Pricing => PluginKind::Pricing,
                        wit_types::PluginKind::RateLimit => PluginKind::RateLimit,
                        wit_types::PluginKind::AlertChannel => PluginKind::AlertChannel,
                        wit_types::PluginKind::Extractor => PluginKind::Extractor,
                    },
                    config_schema: info.config_schema,
                })
            }

            pub async fn rules(
                &self,
                s: &mut Store<CallState>,
                config: &str,
                c: &RequestClass,
            ) -> wasmtime::Result<Result<Vec<LimiterRule>, GuestError>> {
                let Prepared::RateLimit(pre) = self else { return Err(wrong(self.kind(), "rules")) };
                let class = wit_limit::RequestClass {
                    plan: c.plan.clone(),
                    live: c.live,
                    scopes: c.scopes.clone(),
                    overrides: c.overrides.clone(),
                    method: c.method.clone(),
                    route: c.route.clone(),
                };
                let out = pre
                    .instantiate_async(&mut *s)
                    .await?
                    .memhost_plugin_limiter()
                    .call_rules(s, config, &class)
                    .await?;
                Ok(out.map_err(guest_error).map(|rules| {
                    rules
                        .into_iter()
                        .map(|r| LimiterRule {
                            name: r.name,
                            scope: match r.scope {
                                wit_limit::Scope::Global => LimiterScope::Global,
                                wit_limit::Scope::Org => LimiterScope::Org,
                                wit_limit::Scope::Key => LimiterScope::Key,
                                wit_limit::Scope::ClientIp => LimiterScope::ClientIp,
                            },
                            algorithm: match r.algorithm {
                                wit_limit::Algorithm::SlidingWindow => LimiterAlgorithm::SlidingWindow,
                                wit_limit::Algorithm::FixedWindow => LimiterAlgorithm::FixedWindow,
                                wit_limit::Algorithm::TokenBucket => LimiterAlgorithm::TokenBucket,
                                wit_limit::Algorithm::Concurrency => LimiterAlgorithm::Concurrency,
                            },
                            limit: r.limit,
                            window_ms: r.window_ms,
                            burst: r.burst,
                            cost: r.cost,
                        })
                        .collect()
                }))
            }

            pub async fn deliver(
                &self,
                s: &mut Store<CallState>,
                config: &str,
                a: &Alert,
            ) -> wasmtime::Result<Result<(), GuestError>> {
                let Prepared::AlertChannel(pre) = self else { return Err(wrong(self.kind(), "deliver")) };
                let alert = wit_alert::Alert {
                    id: a.id.clone(),
                    org_id: a.org_id.clone(),
                    rule: a.rule.clone(),
                    severity: match a.severity {
                        Severity::Info => wit_alert::Severity::Info,
                        Severity::Warning => wit_alert::Severity::Warning,
                        Severity::Critical => wit_alert::Severity::Critical,
                    },
                    title: a.title.clone(),
                    message: a.message.clone(),
                    data: a.data.clone(),
                    occurred_at: a.occurred_at.clone(),
                };
                let out = pre
                    .instantiate_async(&mut *s)
                    .await?
                    .memhost_plugin_notifier()
                    .call_deliver(s, config, &alert)
                    .await?;
                Ok(out.map_err(guest_error))
            }

            pub async fn extract(
                &self,
                s: &mut Store<CallState>,
                config: &str,
                i: &ExtractInput,
            ) -> wasmtime::Result<Result<Vec<MemoryOp>, GuestError>> {
                let Prepared::Extractor(pre) = self else { return Err(wrong(self.kind(), "extract")) };
                let input = wit_extract::ExtractInput {
                    turns: i
                        .turns
                        .iter()
                        .map(|t| wit_extract::Turn { role: t.role.clone(), content: t.content.clone() })
                        .collect(),
                    existing: i
                        .existing
                        .iter()
                        .map(|m| wit_extract::ExistingMemory {
                            id: m.id.clone(),
                            text: m.text.clone(),
                            metadata: m.metadata.clone(),
                        })
                        .collect(),
                    metadata: i.metadata.clone(),
                };
                let out = pre
                    .instantiate_async(&mut *s)
                    .await?
                    .memhost_plugin_extraction()
                    .call_extract(s, config, &input)
                    .await?;
                Ok(out.map_err(guest_error).map(|ops| {
                    ops.into_iter()
                        .map(|op| match op {
                            wit_extract::MemoryOp::Add(m) => MemoryOp::Add { text: m.text, metadata: m.metadata },
                            wit_extract::MemoryOp::Update(u) => MemoryOp::Update { id: u.id, text: u.text },
                            wit_extract::MemoryOp::Delete(id) => MemoryOp::Delete { id },
                        })
                        .collect()
                }))
            }
        }

        fn metric_limit(l: wit_price::MetricLimit) -> MetricLimit {
            MetricLimit {
                metric: l.metric,
                included: l.included,
                hard_limit: l.hard_limit,
                overage_allowed: l.overage_allowed,
            }
        }

        fn guest_error(e: wit_types::PluginError) -> GuestError {
            GuestError { code: e.code, message: e.message, retryable: e.retryable }
        }

        // The host side of the imports, converting to the host's own calls.

        impl wit_types::Host for CallState {}

        impl wit_log::Host for CallState {
            async fn log(&mut self, level: wit_log::Level, message: String) {
                let level = match level {
                    wit_log::Level::Trace => LogLevel::Trace,
                    wit_log::Level::Debug => LogLevel::Debug,
                    wit_log::Level::Info => LogLevel::Info,
                    wit_log::Level::Warn => LogLevel::Warn,
                    wit_log::Level::Error => LogLevel::Error,
                };
                self.record_log(level, message);
            }
        }

        impl wit_http::Host for CallState {
            async fn send(&mut self, r: wit_http::Request) -> Result<wit_http::Response, String> {
                let response = self
                    .http_send(HttpRequest { method: r.method, url: r.url, headers: r.headers, body: r.body })
                    .await?;
                let HttpResponse { status, headers, body } = response;
                Ok(wit_http::Response { status, headers, body })
            }
        }

        impl wit_llm::Host for CallState {
            async fn complete(&mut self, r: wit_llm::CompletionRequest) -> Result<wit_llm::Completion, String> {
                let request = CompletionRequest {
                    messages: r
                        .messages
                        .into_iter()
                        .map(|m| CompletionMessage { role: m.role, content: m.content })
                        .collect(),
                    max_tokens: r.max_tokens,
                    json: r.json,
                    // The host's routing rule, not the guest, picks a model.
                    model: None,
                };
                let c = self.llm_complete(request).await?;
                Ok(wit_llm::Completion { text: c.text, input_tokens: c.input_tokens, output_tokens: c.output_tokens })
            }
        }

        impl wit_embeddings::Host for CallState {
            async fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
                self.embed_texts(texts).await
            }
        }
    };
}
