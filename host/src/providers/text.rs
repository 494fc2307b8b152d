//! Text normalisation shared by the local embedder and the extractive answerer.

const STOPWORDS: &[&str] = &[
    "a", "about", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "hers", "him", "his", "how", "i",
    "if", "in", "into", "is", "it", "its", "just", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so",
    "some", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to", "too", "us", "was",
    "we", "were", "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you", "your",
];

/// Lower-cased, stop-word-free, lightly stemmed word tokens.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

/// A deliberately small suffix stripper: enough that "like", "likes", "liked"
/// and "liking" all become "lik", without a dictionary.
pub fn stem(word: &str) -> String {
    let n = word.chars().count();
    if n <= 3 || !word.is_ascii() {
        return word.to_string();
    }
    let mut out = strip_suffix(word);
    if out.len() > 3 && out.ends_with('e') {
        out.pop();
    }
    out
}

fn strip_suffix(word: &str) -> String {
    for (suffix, replacement, min_stem) in
        [("ies", "y", 2), ("sses", "ss", 2), ("ing", "", 3), ("ed", "", 3), ("es", "", 4), ("s", "", 3)]
    {
        if let Some(stem) = word.strip_suffix(suffix)
            && stem.len() >= min_stem
            && !(suffix == "s" && stem.ends_with('s'))
        {
            let mut out = format!("{stem}{replacement}");
            // "stopped" -> "stopp" -> "stop"
            if (suffix == "ing" || suffix == "ed") && out.len() >= 2 {
                let b = out.as_bytes();
                if b[b.len() - 1] == b[b.len() - 2] && !matches!(b[b.len() - 1], b'l' | b's' | b'z') {
                    out.pop();
                }
            }
            return out;
        }
    }
    word.to_string()
}

/// Splits text into sentences for extractive answers.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let end_of_sentence =
            matches!(b, b'.' | b'!' | b'?' | b'\n') && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace());
        if end_of_sentence {
            let s = text[start..=i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + 1;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_meet() {
        for w in ["like", "likes", "liked", "liking"] {
            assert_eq!(stem(w), "lik", "{w}");
        }
        assert_eq!(stem("flies"), "fly");
        assert_eq!(stem("running"), "run");
        assert_eq!(stem("stopped"), "stop");
        assert_eq!(stem("glass"), "glass");
        assert_eq!(tokens("The user LIKES green tea!"), vec!["user", "lik", "green", "tea"]);
    }

    #[test]
    fn sentences_split() {
        assert_eq!(sentences("One. Two!  Three?\nFour"), vec!["One.", "Two!", "Three?", "Four"]);
        assert_eq!(sentences("Version 1.5 is out."), vec!["Version 1.5 is out."]);
    }
}
