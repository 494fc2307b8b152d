//! The local semantic embedder: a sentence-transformers model (BERT family)
//! run in process by `memhost-semantic`, on a dedicated thread so the async
//! runtime never waits on it. Concurrent requests are batched: the thread
//! takes whatever texts are waiting (up to [`BATCH_TEXTS`]) into one forward
//! pass.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use memhost_semantic::SentenceEncoder;
use tokio::sync::oneshot;

use super::ProviderError;
use super::embedding::{DIMENSIONS, Embedder};

/// Texts per forward pass at most, when many requests wait at once.
const BATCH_TEXTS: usize = 64;

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

pub struct SemanticEmbedder {
    name: String,
    jobs: mpsc::Sender<Job>,
}

impl SemanticEmbedder {
    /// Loads the model in `dir` (blocking: call at start or from a blocking
    /// thread) and starts its thread. Refuses a model whose vectors are not
    /// [`DIMENSIONS`] long (the storage's width).
    pub fn load(name: &str, dir: &Path) -> anyhow::Result<SemanticEmbedder> {
        let encoder = SentenceEncoder::load(dir)?;
        if encoder.dimensions() != DIMENSIONS {
            anyhow::bail!(
                "model {name} makes {}-dimensional vectors; memhost stores {DIMENSIONS}",
                encoder.dimensions()
            );
        }
        Ok(SemanticEmbedder::start(name, Arc::new(encoder)))
    }

    fn start(name: &str, encoder: Arc<SentenceEncoder>) -> SemanticEmbedder {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("embedder-{name}"))
            .spawn(move || run(&encoder, &queue))
            .expect("spawning the embedder thread");
        SemanticEmbedder { name: name.to_string(), jobs }
    }
}

/// The embedder thread: one forward pass per gathered batch; ends when every
/// sender is gone.
fn run(encoder: &SentenceEncoder, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        let mut texts = batch[0].texts.len();
        while texts < BATCH_TEXTS {
            match queue.try_recv() {
                Ok(job) => {
                    texts += job.texts.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let all: Vec<&str> = batch.iter().flat_map(|j| j.texts.iter().map(String::as_str)).collect();
        // A panic in the model must fail these requests, not end the thread.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encoder.encode(&all))) {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for job in batch {
                    let mine: Vec<Vec<f32>> = vectors.by_ref().take(job.texts.len()).collect();
                    // The caller may have gone (request cancelled): nothing to do.
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(_) => {
                for job in batch {
                    let _ = job.reply.send(Err("the embedding model failed on this input".into()));
                }
            }
        }
    }
}

#[async_trait]
impl Embedder for SemanticEmbedder {
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ProviderError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { texts: texts.iter().map(|t| t.to_string()).collect(), reply };
        self.jobs.send(job).map_err(|_| ProviderError("the embedder thread has stopped".into()))?;
        answer.await.map_err(|_| ProviderError("the embedder thread has stopped".into()))?.map_err(ProviderError)
    }
    fn model(&self) -> &str {
        &self.name
    }
    fn is_remote(&self) -> bool {
        false
    }
}
