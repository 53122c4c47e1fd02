//! Compressed items: how sluice stores a log in fewer bytes, and how anyone reads it back.
//!
//! A write costs one WCU per started KiB, so a 1.2 KB request log costs 2 WCU and the same log
//! in 500 bytes costs 1. With `[schema] compression = "zstd"` an item keeps as plain attributes
//! only what DynamoDB itself must see: the partition key, the TTL attribute, every attribute a
//! global secondary index keys on or projects, and the fields the operator lists in
//! `schema.plain_fields`. The rest of the log travels in one binary attribute, [`LOG_ATTRIBUTE`]:
//! a standard zstd frame, made with a dictionary trained on sample logs, of this JSON text:
//!
//! ```text
//! [["request_id","ts"],{"method":"GET","path":"/v1/users/42","status":200,…}]
//! ```
//!
//! The first element names the plain attributes that are log fields, as the log had them; the
//! second holds every other field of the log. The log is the union of the two. A plain attribute
//! sluice set itself (a key made from a content hash, a TTL) is not named; where it replaced a
//! log field of the same name, that field's value is in the object.
//!
//! The frame names its dictionary by id (the zstd frame header's dictionary id). The dictionary is
//! an item of the same table, under the key [`dictionary_key`]`(id)`, in its binary attribute
//! [`DICTIONARY_ATTRIBUTE`]; so the table alone is enough to read every item, and items written
//! with an older dictionary stay readable after writers move to a new one. `docs/item-format.md`
//! describes the same for readers in other languages; [`read_log`] is the reference reader.
//!
//! An item that compressed would cost more WCU than plain (incompressible text just under a KiB
//! boundary) is written plain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;

use serde_json::{Map, Value};
use zstd::bulk::Compressor;
use zstd::dict::DecoderDictionary;

use crate::item::{AttrValue, Item};
use crate::sync::Recover;

/// The binary attribute holding a compressed item's log (a zstd frame).
pub const LOG_ATTRIBUTE: &str = "_log";

/// The key prefix of dictionary items: a dictionary with id 1234 is the item keyed
/// `sluice:dictionary:1234`.
pub const DICTIONARY_KEY_PREFIX: &str = "sluice:dictionary:";

/// The binary attribute holding a dictionary item's zstd dictionary.
pub const DICTIONARY_ATTRIBUTE: &str = "dictionary";

/// The largest log text a frame may claim to hold (a log comes from one message, which is far
/// smaller); a frame claiming more is refused as corrupt rather than allocated.
pub const MAX_LOG_TEXT_BYTES: u64 = 8 * 1024 * 1024;

/// The zstd level writers use unless told otherwise: 1, the fastest positive level. With a
/// dictionary, higher levels shrink a 1–3 KB log by a few bytes more (2% at level 3) and cost
/// a quarter more CPU; a write is charged per started KiB, so those bytes rarely change a bill.
pub const DEFAULT_LEVEL: i32 = 1;

/// The table key of dictionary `id`.
pub fn dictionary_key(id: u32) -> String {
    format!("{DICTIONARY_KEY_PREFIX}{id}")
}

/// Whether `key` is a dictionary item's key (an export skips those). No log can have such a key:
/// the codec refuses every key with the prefix.
pub fn is_dictionary_key(key: &str) -> bool {
    key.starts_with(DICTIONARY_KEY_PREFIX)
}

/// What went wrong making or reading a compressed item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoredError {
    /// The bytes given as a dictionary are not a zstd dictionary with an id.
    #[error(
        "not a zstd dictionary (no dictionary id in its header): train one with `sluice dict train`"
    )]
    NotADictionary,
    /// A frame names a dictionary this reader does not have.
    #[error(
        "the item was compressed with dictionary {id}, which is not loaded (is item `{key}` in the table?)",
        key = dictionary_key(*id)
    )]
    MissingDictionary {
        /// The frame's dictionary id.
        id: u32,
    },
    /// The log attribute is not a zstd frame made with a dictionary.
    #[error("attribute `{LOG_ATTRIBUTE}` is not a zstd frame made with a dictionary")]
    NoDictionaryId,
    /// The frame or its text is damaged, or names a plain attribute the item lacks.
    #[error("compressed item is corrupt: {0}")]
    Corrupt(String),
    /// zstd itself failed (training, or a context it could not make).
    #[error("zstd: {0}")]
    Zstd(String),
}

/// How writers compress: the dictionary and level, and which attributes stay plain. Cheap to
/// share (`Arc`); compression contexts are pooled, one per concurrent user.
pub struct Compression {
    dictionary_id: u32,
    level: i32,
    dictionary: Vec<u8>,
    plain: BTreeSet<String>,
    pool: Mutex<Vec<Compressor<'static>>>,
}

impl fmt::Debug for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compression")
            .field("dictionary_id", &self.dictionary_id)
            .field("dictionary_bytes", &self.dictionary.len())
            .field("level", &self.level)
            .field("plain", &self.plain)
            .finish()
    }
}

impl Compression {
    /// Compression with `dictionary` (a trained zstd dictionary, which names its own id) at
    /// zstd `level`, keeping the attributes in `plain` as plain attributes (besides the key and
    /// the TTL attribute, which always are).
    pub fn new(
        dictionary: Vec<u8>,
        level: i32,
        plain: impl IntoIterator<Item = String>,
    ) -> Result<Self, StoredError> {
        let id = dictionary_id(&dictionary).ok_or(StoredError::NotADictionary)?;
        let c = Compression {
            dictionary_id: id,
            level,
            dictionary,
            plain: plain.into_iter().collect(),
            pool: Mutex::new(Vec::new()),
        };
        // Fail now, not on the first log, if zstd refuses the dictionary or the level.
        let ctx = c.context()?;
        c.pool.locked().push(ctx);
        Ok(c)
    }

    /// The id of the dictionary frames are made with.
    pub fn dictionary_id(&self) -> u32 {
        self.dictionary_id
    }

    /// The attributes kept plain besides the key and the TTL attribute.
    pub fn plain_attributes(&self) -> &BTreeSet<String> {
        &self.plain
    }

    fn context(&self) -> Result<Compressor<'static>, StoredError> {
        let mut ctx = Compressor::with_dictionary(self.level, &self.dictionary)
            .map_err(|e| StoredError::Zstd(e.to_string()))?;
        // The frame header keeps the dictionary id (a reader needs it) and the content size (a
        // reader sizes its buffer from it); no checksum: DynamoDB keeps the bytes intact.
        use zstd::zstd_safe::CParameter;
        for p in [
            CParameter::DictIdFlag(true),
            CParameter::ContentSizeFlag(true),
            CParameter::ChecksumFlag(false),
        ] {
            ctx.set_parameter(p)
                .map_err(|e| StoredError::Zstd(e.to_string()))?;
        }
        Ok(ctx)
    }

    /// One zstd frame of `text`.
    fn compress(&self, text: &[u8]) -> Result<Vec<u8>, StoredError> {
        let pooled = self.pool.locked().pop();
        let mut ctx = match pooled {
            Some(ctx) => ctx,
            None => self.context()?,
        };
        let out = ctx
            .compress(text)
            .map_err(|e| StoredError::Zstd(e.to_string()));
        self.pool.locked().push(ctx);
        out
    }
}

/// The id a zstd dictionary names in its header, if it is one.
pub fn dictionary_id(dictionary: &[u8]) -> Option<u32> {
    zstd::zstd_safe::get_dict_id_from_dict(dictionary).map(|id| id.get())
}

/// The dictionary id a zstd frame names, if any.
pub fn frame_dictionary_id(frame: &[u8]) -> Option<u32> {
    zstd::zstd_safe::get_dict_id_from_frame(frame).map(|id| id.get())
}

/// Trains a dictionary of at most `max_bytes` from sample log texts (as [`training_text`] makes
/// them). zstd needs a fair number of samples (a few hundred at least) to find what they share.
pub fn train_dictionary(samples: &[Vec<u8>], max_bytes: usize) -> Result<Vec<u8>, StoredError> {
    zstd::dict::from_samples(samples, max_bytes).map_err(|e| {
        StoredError::Zstd(format!(
            "training on {} samples failed ({e}): give it more (and more varied) sample logs",
            samples.len()
        ))
    })
}

/// A log split for storage: the attributes kept plain and the text of the rest.
pub(crate) struct Split {
    pub plain: BTreeMap<String, AttrValue>,
    pub text: Vec<u8>,
}

/// Splits a log's attributes (as the codec built them) into what stays plain (cloned: a few
/// small values) and the text that is compressed (written straight from `attrs`, nothing else
/// copied). `set` lists the attributes sluice set itself, each with the log field it replaced,
/// if any; they always stay plain. `plain` names the other attributes that stay plain.
pub(crate) fn split(
    attrs: &BTreeMap<String, AttrValue>,
    set: &[(String, Option<AttrValue>)],
    plain: &BTreeSet<String>,
) -> Split {
    let mut kept = BTreeMap::new();
    let mut named: Vec<&str> = Vec::new();
    // The rest of the log: the fields not kept plain (in name order), then the log fields sluice
    // replaced, with their values as sent.
    let mut rest: Vec<(&str, &AttrValue)> = Vec::with_capacity(attrs.len());
    let mut replaced: Vec<(&str, &AttrValue)> = Vec::new();
    for (name, value) in attrs {
        if let Some((_, before)) = set.iter().find(|(n, _)| n == name) {
            match before {
                Some(original) if original == value && exact_in_dynamodb(value) => named.push(name),
                Some(original) => replaced.push((name, original)),
                None => {}
            }
            kept.insert(name.clone(), value.clone());
        } else if !plain.is_empty() && plain.contains(name) {
            // DynamoDB keeps a number's value, not its text (`12.50` reads back `12.5`): a value
            // with such a number is also kept in the frame, so it reads back as sent.
            if exact_in_dynamodb(value) {
                named.push(name);
            } else {
                replaced.push((name, value));
            }
            kept.insert(name.clone(), value.clone());
        } else {
            rest.push((name, value));
        }
    }
    let mut text = Vec::with_capacity(2048);
    text.extend_from_slice(b"[[");
    for (i, name) in named.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        write_string(&mut text, name);
    }
    text.extend_from_slice(b"],{");
    for (i, (k, v)) in rest.into_iter().chain(replaced).enumerate() {
        if i > 0 {
            text.push(b',');
        }
        write_string(&mut text, k);
        text.push(b':');
        write_json(&mut text, v);
    }
    text.extend_from_slice(b"}]");
    Split { plain: kept, text }
}

/// Whether DynamoDB gives `value` back with the same text: every number in it is in
/// DynamoDB's normalised form.
fn exact_in_dynamodb(value: &AttrValue) -> bool {
    match value {
        AttrValue::N(n) => crate::number::Number::parse(n).is_ok_and(|x| x.canonical() == *n),
        AttrValue::M(m) => m.values().all(exact_in_dynamodb),
        AttrValue::L(l) => l.iter().all(exact_in_dynamodb),
        _ => true,
    }
}

/// The item for a log: compressed unless that would cost more WCU than plain (a tiny log costs 1
/// WCU either way, and compressed it reads back exactly, sluice's own attributes apart), plain
/// then; plain too, with a warning, should zstd fail (a log is never lost to compression), and
/// for a log whose text is over [`MAX_LOG_TEXT_BYTES`] (no reader would take the frame). The
/// result's `plain_size` is the plain item's size either way.
pub(crate) fn compress_item(
    key: String,
    attrs: BTreeMap<String, AttrValue>,
    set: &[(String, Option<AttrValue>)],
    compression: &Compression,
) -> Item {
    let plain_item_size = crate::item::attrs_size(&attrs);
    let Split { mut plain, text } = split(&attrs, set, &compression.plain);
    if text.len() as u64 > MAX_LOG_TEXT_BYTES {
        return Item::new(key, attrs);
    }
    let frame = match compression.compress(&text) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(error = %e, key = %key, "cannot compress a log: writing it plain");
            return Item::new(key, attrs);
        }
    };
    plain.insert(LOG_ATTRIBUTE.to_string(), AttrValue::B(frame));
    let compressed = Item::new(key.clone(), plain);
    if compressed.wcu() <= crate::item::wcu_for_bytes(plain_item_size) {
        compressed.with_plain_size(plain_item_size)
    } else {
        Item::new(key, attrs)
    }
}

/// Whether a JSON string needs an escape: a control character, a quote or a backslash. Eight
/// bytes at a time (the classic "has a zero byte" tricks), since most of a log is strings.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        if below_space
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // Most strings of a log need no escape: copied as they are. Otherwise serde_json escapes
    // (writing into a Vec cannot fail).
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn write_map(out: &mut Vec<u8>, map: &BTreeMap<String, AttrValue>) {
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, k);
        out.push(b':');
        write_json(out, v);
    }
    out.push(b'}');
}

/// Writes an attribute value as JSON text (numbers as their text, exactly).
fn write_json(out: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::S(s) => write_string(out, s),
        AttrValue::N(n) => out.extend_from_slice(n.as_bytes()),
        AttrValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        AttrValue::Null => out.extend_from_slice(b"null"),
        AttrValue::M(m) => write_map(out, m),
        AttrValue::L(l) => {
            out.push(b'[');
            for (i, v) in l.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, v);
            }
            out.push(b']');
        }
        AttrValue::B(b) => write_string(out, &hex::encode(b)),
    }
}

/// An attribute value as JSON: numbers keep their text, binary becomes a hex string (a log
/// never has binary values; only a foreign item could).
pub fn to_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::S(s) => Value::String(s.clone()),
        AttrValue::N(n) => serde_json::from_str::<serde_json::Number>(n)
            .map_or_else(|_| Value::String(n.clone()), Value::Number),
        AttrValue::Bool(b) => Value::Bool(*b),
        AttrValue::Null => Value::Null,
        AttrValue::M(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        AttrValue::L(l) => Value::Array(l.iter().map(to_json).collect()),
        AttrValue::B(b) => Value::String(hex::encode(b)),
    }
}

/// The dictionaries a reader has, by id, and one decompression context reused for every item
/// (making one costs more than decompressing a log).
#[derive(Default)]
pub struct Dictionaries {
    by_id: HashMap<u32, DecoderDictionary<'static>>,
    ctx: Mutex<Option<zstd::zstd_safe::DCtx<'static>>>,
}

impl Dictionaries {
    /// No dictionaries yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a dictionary; returns its id.
    pub fn insert(&mut self, dictionary: &[u8]) -> Result<u32, StoredError> {
        let id = dictionary_id(dictionary).ok_or(StoredError::NotADictionary)?;
        self.by_id.insert(id, DecoderDictionary::copy(dictionary));
        Ok(id)
    }

    /// Whether dictionary `id` is loaded.
    pub fn contains(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }
}

/// The dictionary an item needs before [`read_log`] can read it: Some(id) for a compressed item.
pub fn needed_dictionary(attrs: &BTreeMap<String, AttrValue>) -> Option<u32> {
    match attrs.get(LOG_ATTRIBUTE) {
        Some(AttrValue::B(frame)) => frame_dictionary_id(frame),
        _ => None,
    }
}

/// Reads an item back into the log it was written from. A compressed item (one with a binary
/// [`LOG_ATTRIBUTE`]) gives back exactly the log's value; a plain item gives its attributes,
/// less the ones named in `added` (those sluice adds to plain items: the TTL attribute, and the
/// key attribute when the key is not a log field of that name).
pub fn read_log(
    attrs: &BTreeMap<String, AttrValue>,
    dictionaries: &Dictionaries,
    added: &[&str],
) -> Result<Map<String, Value>, StoredError> {
    let Some(AttrValue::B(frame)) = attrs.get(LOG_ATTRIBUTE) else {
        return Ok(attrs
            .iter()
            .filter(|(k, _)| !added.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect());
    };
    let text = decompress(frame, dictionaries)?;
    let (named, mut log): (Vec<String>, Map<String, Value>) =
        serde_json::from_slice(&text).map_err(|e| StoredError::Corrupt(e.to_string()))?;
    for name in named {
        let value = attrs.get(&name).ok_or_else(|| {
            StoredError::Corrupt(format!(
                "the frame names plain attribute `{name}`, which the item lacks"
            ))
        })?;
        log.insert(name, to_json(value));
    }
    Ok(log)
}

fn decompress(frame: &[u8], dictionaries: &Dictionaries) -> Result<Vec<u8>, StoredError> {
    let id = frame_dictionary_id(frame).ok_or(StoredError::NoDictionaryId)?;
    let dictionary = dictionaries
        .by_id
        .get(&id)
        .ok_or(StoredError::MissingDictionary { id })?;
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|e| StoredError::Corrupt(format!("frame header: {e:?}")))?
        .ok_or_else(|| StoredError::Corrupt("the frame does not say its size".into()))?;
    if size > MAX_LOG_TEXT_BYTES {
        return Err(StoredError::Corrupt(format!(
            "the frame claims {size} bytes, more than any log ({MAX_LOG_TEXT_BYTES})"
        )));
    }
    let mut out: Vec<u8> = Vec::with_capacity(size as usize);
    let mut ctx = dictionaries.ctx.locked();
    let ctx = ctx.get_or_insert_with(zstd::zstd_safe::DCtx::create);
    ctx.decompress_using_ddict(&mut out, frame, dictionary.as_ddict())
        .map_err(|code| StoredError::Corrupt(zstd::zstd_safe::get_error_name(code).to_string()))?;
    if out.len() as u64 != size {
        return Err(StoredError::Corrupt(format!(
            "the frame says {size} bytes and holds {}",
            out.len()
        )));
    }
    Ok(out)
}

/// The texts a dictionary is trained on, one per log in `body` (a message body, as the codec
/// reads it): each log's compressed part, exactly as writers will compress it, with the
/// attributes in `plain` (and the key and TTL) kept out. A log the codec refuses is skipped and
/// counted in the second value.
pub fn training_texts(
    body: &str,
    schema: &crate::codec::Schema,
    plain: &BTreeSet<String>,
) -> (Vec<Vec<u8>>, usize) {
    let mut texts = Vec::new();
    let mut refused = 0;
    for (i, frame) in crate::codec::frames(body).enumerate() {
        let built = match frame {
            Ok(f) => match f.value {
                Value::Object(map) => crate::codec::build(i, map, schema).ok(),
                _ => None,
            },
            Err(_) => None,
        };
        match built {
            Some(b) => texts.push(split(&b.attrs, &b.set, plain).text),
            None => refused += 1,
        }
    }
    (texts, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_escape_finds_every_byte_json_must_escape_wherever_it_is() {
        for len in 0..24 {
            let clean = "a".repeat(len);
            assert!(!needs_escape(clean.as_bytes()));
            assert!(!needs_escape("é中 ~\u{7f}zzzzzzzz".as_bytes()));
            for pos in 0..len {
                for bad in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut b = clean.clone().into_bytes();
                    b[pos] = bad;
                    assert!(needs_escape(&b), "{bad:#x} at {pos} of {len}");
                }
            }
        }
    }
}
