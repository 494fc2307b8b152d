//! `extract-rules`: extracts memories from dialogue with rules, no LLM.
//!
//! Every user turn is split into sentences; a sentence becomes a memory when it
//! states something about the user (it starts with or contains one of the
//! `triggers`, e.g. "I like", "my name is", "I work"). A sentence saying the
//! opposite of an existing memory ("I no longer …", "I don't … anymore")
//! deletes the memory it names best (most shared words). Exact duplicates of
//! existing memories are skipped.
//!
//! Config: `{"triggers": ["i like", …], "min_words": 3}`; both optional.

use memhost_sdk::extractor::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_triggers")]
    triggers: Vec<String>,
    #[serde(default = "default_min_words")]
    min_words: usize,
}

fn default_triggers() -> Vec<String> {
    [
        "i like",
        "i love",
        "i prefer",
        "i enjoy",
        "i hate",
        "i dislike",
        "i am",
        "i'm",
        "my ",
        "i work",
        "i live",
        "i have",
        "i need",
        "i want",
        "i usually",
        "i always",
        "i never",
        "call me",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn default_min_words() -> usize {
    3
}

const NEGATIONS: [&str; 4] = ["no longer", "not anymore", "anymore", "stopped"];

fn sentences(text: &str) -> impl Iterator<Item = &str> {
    text.split(['.', '!', '?', '\n']).map(str::trim).filter(|s| !s.is_empty())
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| w.len() > 2).map(|w| w.to_lowercase()).collect()
}

struct Rules;

impl Extractor for Rules {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn config_schema() -> &'static str {
        include_str!("../config.schema.json")
    }

    fn extract(config: &str, input: ExtractInput) -> Result<Vec<MemoryOp>, PluginError> {
        let config: Config = if config.trim().is_empty() { parse_config("{}")? } else { parse_config(config)? };
        let triggers: Vec<String> = config.triggers.iter().map(|t| t.to_lowercase()).collect();
        let mut ops = Vec::new();
        let mut deleted: Vec<String> = Vec::new();
        for turn in input.turns.iter().filter(|t| t.role.eq_ignore_ascii_case("user")) {
            for sentence in sentences(&turn.content) {
                let lower = sentence.to_lowercase();
                if sentence.split_whitespace().count() < config.min_words {
                    continue;
                }
                if NEGATIONS.iter().any(|n| lower.contains(n)) {
                    // Delete the existing memory sharing the most words with this sentence.
                    let said = words(sentence);
                    let best = input
                        .existing
                        .iter()
                        .filter(|m| !deleted.contains(&m.id))
                        .map(|m| (words(&m.text).iter().filter(|w| said.contains(w)).count(), m))
                        .filter(|(shared, _)| *shared >= 2)
                        .max_by_key(|(shared, _)| *shared);
                    if let Some((_, m)) = best {
                        deleted.push(m.id.clone());
                        ops.push(MemoryOp::Delete(m.id.clone()));
                    }
                    continue;
                }
                if !triggers.iter().any(|t| lower.starts_with(t.as_str()) || lower.contains(&format!(" {t}"))) {
                    continue;
                }
                let text = format!("{sentence}.");
                let duplicate = input.existing.iter().any(|m| m.text.trim().eq_ignore_ascii_case(text.trim()))
                    || ops.iter().any(|op| matches!(op, MemoryOp::Add(n) if n.text.eq_ignore_ascii_case(&text)));
                if !duplicate {
                    ops.push(MemoryOp::Add(NewMemory { text, metadata: input.metadata.clone() }));
                }
            }
        }
        Ok(ops)
    }
}

memhost_sdk::export_extractor!(Rules);
