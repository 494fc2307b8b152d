//! The BERT tokenizer as Hugging Face's `tokenizers` defines it for
//! `tokenizer.json` files of type WordPiece: normalize (clean control
//! characters, space out CJK ideographs, strip accents, lowercase), split on
//! whitespace and punctuation, then greedy longest-match WordPiece with `##`
//! continuations, wrapped in `[CLS] … [SEP]`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use unicode_general_category::{GeneralCategory, get_general_category};
use unicode_normalization::UnicodeNormalization;

use crate::{ModelError, format_err, read_file};

pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    prefix: String,
    max_word_chars: usize,
    normalizer: Normalizer,
}

#[derive(Debug, Clone, Copy)]
struct Normalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

#[derive(Deserialize)]
struct TokenizerFile {
    normalizer: Option<NormalizerFile>,
    model: ModelFile,
}

#[derive(Deserialize)]
struct NormalizerFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    clean_text: bool,
    #[serde(default = "yes")]
    handle_chinese_chars: bool,
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    lowercase: bool,
}

#[derive(Deserialize)]
struct ModelFile {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    #[serde(default = "unk")]
    unk_token: String,
    #[serde(default = "hashes")]
    continuing_subword_prefix: String,
    #[serde(default = "hundred")]
    max_input_chars_per_word: usize,
}

fn yes() -> bool {
    true
}
fn unk() -> String {
    "[UNK]".into()
}
fn hashes() -> String {
    "##".into()
}
fn hundred() -> usize {
    100
}

impl WordPiece {
    pub fn from_file(path: &Path) -> Result<WordPiece, ModelError> {
        let file: TokenizerFile =
            serde_json::from_slice(&read_file(path)?).map_err(|e| format_err(format!("{}: {e}", path.display())))?;
        if file.model.kind != "WordPiece" {
            return Err(format_err(format!(
                "{}: tokenizer model `{}` is not supported (WordPiece only)",
                path.display(),
                file.model.kind
            )));
        }
        let normalizer = match file.normalizer {
            Some(n) if n.kind == "BertNormalizer" => Normalizer {
                clean_text: n.clean_text,
                handle_chinese_chars: n.handle_chinese_chars,
                // As in `tokenizers`: unset means "strip when lowercasing".
                strip_accents: n.strip_accents.unwrap_or(n.lowercase),
                lowercase: n.lowercase,
            },
            Some(n) => {
                return Err(format_err(format!(
                    "{}: normalizer `{}` is not supported (BertNormalizer only)",
                    path.display(),
                    n.kind
                )));
            }
            None => {
                Normalizer { clean_text: false, handle_chinese_chars: false, strip_accents: false, lowercase: false }
            }
        };
        let vocab = file.model.vocab;
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| format_err(format!("{}: no `{token}` in the vocabulary", path.display())))
        };
        Ok(WordPiece {
            unk: id(&file.model.unk_token)?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            prefix: file.model.continuing_subword_prefix,
            max_word_chars: file.model.max_input_chars_per_word,
            normalizer,
            vocab,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0)
    }

    /// `[CLS] tokens… [SEP]`, at most `max_len` ids in all.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let room = max_len.saturating_sub(2);
        let mut ids = Vec::with_capacity(room.min(text.len() / 3 + 8) + 2);
        ids.push(self.cls);
        let normalized = self.normalizer.apply(text);
        'words: for word in pre_tokenize(&normalized) {
            for id in self.word_pieces(word) {
                if ids.len() > room {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    fn word_pieces(&self, word: &str) -> Vec<u32> {
        if word.chars().count() > self.max_word_chars {
            return vec![self.unk];
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut candidate = String::with_capacity(word.len() + self.prefix.len());
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.prefix);
                }
                candidate.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(candidate.as_str()) {
                    found = Some(id);
                    break;
                }
                // Step back one character (not one byte).
                end = word[..end].char_indices().next_back().map_or(start, |(i, _)| i);
            }
            match found {
                Some(id) => pieces.push(id),
                // Any piece missing: the whole word is unknown.
                None => return vec![self.unk],
            }
            start = end;
        }
        pieces
    }
}

impl Normalizer {
    fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    out.push(' ');
                    continue;
                }
            }
            if self.handle_chinese_chars && is_cjk(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out.nfd().filter(|&c| get_general_category(c) != GeneralCategory::NonspacingMark).collect();
        }
        if self.lowercase {
            out = out.to_lowercase();
        }
        out
    }
}

/// Splits on whitespace (dropped) and punctuation (kept, one token each).
fn pre_tokenize(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if is_whitespace(c) || is_punctuation(c) {
            if let Some(s) = start.take() {
                words.push(&text[s..i]);
            }
            if !is_whitespace(c) {
                words.push(&text[i..i + c.len_utf8()]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        words.push(&text[s..]);
    }
    words
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    use GeneralCategory::*;
    matches!(get_general_category(c), Control | Format | Surrogate | PrivateUse | Unassigned)
}

fn is_punctuation(c: char) -> bool {
    use GeneralCategory::*;
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            ConnectorPunctuation
                | DashPunctuation
                | OpenPunctuation
                | ClosePunctuation
                | InitialPunctuation
                | FinalPunctuation
                | OtherPunctuation
        )
}

/// The CJK Unified Ideographs blocks BERT spaces out (not Hangul or kana).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##believ", "##able", "cafe", ",", "!", "東", "京", "a"]
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        WordPiece {
            vocab,
            unk: 1,
            cls: 2,
            sep: 3,
            prefix: "##".into(),
            max_word_chars: 100,
            normalizer: Normalizer {
                clean_text: true,
                handle_chinese_chars: true,
                strip_accents: true,
                lowercase: true,
            },
        }
    }

    #[test]
    fn normalizes_splits_and_matches_longest_pieces() {
        let t = tiny();
        // accents stripped, lowercased, punctuation split, CJK spaced, unknown word whole
        assert_eq!(t.encode("UNBELIEVABLE, Café!東京 xyz", 64), vec![2, 4, 5, 6, 8, 7, 9, 10, 11, 1, 3]);
        // truncation keeps [CLS] and [SEP]
        assert_eq!(t.encode("a a a a a", 4), vec![2, 12, 12, 3]);
        // control characters vanish, odd whitespace splits
        assert_eq!(t.encode("a\u{0007}a\u{00a0}a", 64), vec![2, 1, 12, 3]);
    }
}
