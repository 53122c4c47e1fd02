//! What SQS takes: the characters of a message body, and a FIFO group id.

use sha2::{Digest, Sha256};

/// Whether SQS takes this character in a message body: #x9, #xA, #xD, #x20-#xD7FF,
/// #xE000-#xFFFD, #x10000-#x10FFFF.
pub fn sqs_allows(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// JSON text with every character SQS refuses written as a `\uXXXX` escape. In valid JSON such
/// characters can only stand inside strings (control characters are escaped already by any
/// serializer), where the escape means the same character: the content is kept.
pub fn sqs_safe_json(json: String) -> String {
    if json.chars().all(sqs_allows) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if sqs_allows(c) {
            out.push(c);
        } else {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
    out
}

/// A FIFO MessageGroupId SQS takes: the group itself when it is 1-128 characters of SQS's
/// alphabet (letters, digits and ASCII punctuation), else `h-` and a SHA-256 of it, so every log
/// of one group still shares one (valid) group.
pub fn sqs_group_id(group: &str) -> String {
    let valid = (1..=128).contains(&group.len())
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_ascii_punctuation());
    if valid {
        group.to_owned()
    } else {
        format!("h-{}", &hex::encode(Sha256::digest(group.as_bytes()))[..40])
    }
}
