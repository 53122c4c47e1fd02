//! DynamoDB items as sluice builds them, and their size counted the way DynamoDB counts it.
//!
//! The size matters twice: a write costs `ceil(size / 1 KiB)` write capacity units (WCU), which is
//! what the rate limiter meters, and an item over 400 KB can never be written, so it is poison.
//! The rules follow DynamoDB's "Item sizes and formats" documentation:
//! - an attribute costs the UTF-8 length of its name plus the size of its value;
//! - a string costs its UTF-8 length; a boolean or null, 1 byte;
//! - a number costs one byte per base-100 digit pair, plus one ([`crate::number`]);
//! - a map or list costs 3 bytes plus, per element, 1 byte plus the element (and a map element's
//!   name).

use std::collections::BTreeMap;

/// DynamoDB's largest item, in bytes (400 KB, counted as 400 × 1024).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// DynamoDB's largest partition key value, in bytes.
pub const MAX_PARTITION_KEY_BYTES: usize = 2048;

/// The most significant digits a DynamoDB number keeps.
pub const MAX_NUMBER_DIGITS: usize = crate::number::MAX_DIGITS;

/// DynamoDB's longest attribute name, in bytes (it must be under 64 KiB).
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 65_535;

/// DynamoDB's deepest nesting: an item is level 1, and each map or list inside it one more.
pub const MAX_NESTING_LEVELS: usize = 32;

/// One attribute value, mirroring DynamoDB's types for what JSON can express.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string, sized as its UTF-8 bytes.
    S(String),
    /// A number as its decimal text, exactly as it arrived (DynamoDB numbers travel as strings;
    /// the codec has checked DynamoDB accepts it).
    N(String),
    /// A boolean, sized as 1 byte.
    Bool(bool),
    /// JSON null (DynamoDB's NULL), sized as 1 byte.
    Null,
    /// A map (a JSON object), sized as 3 bytes plus 1 byte, the name and the value of each entry.
    M(BTreeMap<String, AttrValue>),
    /// A list (a JSON array), sized as 3 bytes plus 1 byte and the value of each element.
    L(Vec<AttrValue>),
    /// Binary, sized as its length in bytes: only a compressed item's log
    /// ([`crate::stored::LOG_ATTRIBUTE`]); JSON has no binary values.
    B(Vec<u8>),
}

impl AttrValue {
    /// Size of the value alone (without an attribute name), in DynamoDB's accounting.
    pub fn size(&self) -> usize {
        match self {
            AttrValue::S(s) => s.len(),
            AttrValue::N(n) => number_size(n),
            AttrValue::Bool(_) | AttrValue::Null => 1,
            AttrValue::M(m) => 3 + m.iter().map(|(k, v)| 1 + k.len() + v.size()).sum::<usize>(),
            AttrValue::L(l) => 3 + l.iter().map(|v| 1 + v.size()).sum::<usize>(),
            AttrValue::B(b) => b.len(),
        }
    }
}

/// Bytes DynamoDB counts for a number given as text (its length when it is not a number, which
/// the codec never lets through).
fn number_size(n: &str) -> usize {
    crate::number::Number::parse(n).map_or(n.len(), |n| n.size())
}

/// An item's size from its attributes: each name's length plus its value's size.
pub fn attrs_size(attrs: &BTreeMap<String, AttrValue>) -> usize {
    attrs.iter().map(|(k, v)| k.len() + v.size()).sum()
}

/// Write capacity units one write of an item of `bytes` costs: one per started KiB, at least one.
pub fn wcu_for_bytes(bytes: usize) -> u32 {
    let units = bytes.div_ceil(1024).max(1);
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// An item ready to write: its key (the partition key value), its attributes (the key attribute
/// included) and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    key: String,
    attrs: BTreeMap<String, AttrValue>,
    size: usize,
    /// The log's timestamp (epoch milliseconds), when it has one: of two writes of one key in
    /// one batch, the newer log wins.
    ts_ms: Option<i64>,
    /// The size the item would have written plain (the same as `size` unless compressed).
    plain_size: usize,
}

impl Item {
    /// Builds an item and computes its size once.
    pub fn new(key: String, attrs: BTreeMap<String, AttrValue>) -> Self {
        let size = attrs_size(&attrs);
        Item {
            key,
            attrs,
            size,
            ts_ms: None,
            plain_size: size,
        }
    }

    /// The same item, recording the size it would have had plain (it is compressed).
    pub fn with_plain_size(mut self, plain_size: usize) -> Self {
        self.plain_size = plain_size;
        self
    }

    /// The size this item would have had written plain: its own size unless it is compressed.
    pub fn plain_size(&self) -> usize {
        self.plain_size
    }

    /// WCU one write of this item would have cost plain.
    pub fn plain_wcu(&self) -> u32 {
        wcu_for_bytes(self.plain_size)
    }

    /// A 128-bit hash of the item's key and attributes (names, types and values): two items with
    /// the same hash write the same row. What the write cache compares; it is the same in every
    /// process (no random seed), so a fleet can share it.
    pub fn content_hash(&self) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.key.as_bytes());
        h.update(&[0xff]);
        for (name, value) in &self.attrs {
            hash_bytes(&mut h, name.as_bytes());
            hash_value(&mut h, value);
        }
        h.digest128()
    }

    /// The same item, carrying its log's timestamp.
    pub fn with_ts(mut self, ts_ms: Option<i64>) -> Self {
        self.ts_ms = ts_ms;
        self
    }

    /// The log's timestamp, in epoch milliseconds.
    pub fn ts_ms(&self) -> Option<i64> {
        self.ts_ms
    }

    /// The partition key value: equal keys are the same row.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The attributes as written, the key attribute (and a TTL attribute, if any) included.
    pub fn attrs(&self) -> &BTreeMap<String, AttrValue> {
        &self.attrs
    }

    /// The attributes, consumed (for a writer that converts them without cloning).
    pub fn into_attrs(self) -> BTreeMap<String, AttrValue> {
        self.attrs
    }

    /// Size in bytes as DynamoDB counts it.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Write capacity units one PutItem of this item costs.
    pub fn wcu(&self) -> u32 {
        wcu_for_bytes(self.size)
    }
}

/// Length-prefixed, so `"ab","c"` and `"a","bc"` differ.
fn hash_bytes(h: &mut xxhash_rust::xxh3::Xxh3, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

fn hash_value(h: &mut xxhash_rust::xxh3::Xxh3, v: &AttrValue) {
    match v {
        AttrValue::S(s) => {
            h.update(b"S");
            hash_bytes(h, s.as_bytes());
        }
        AttrValue::N(n) => {
            h.update(b"N");
            hash_bytes(h, n.as_bytes());
        }
        AttrValue::Bool(b) => h.update(if *b { b"T" } else { b"F" }),
        AttrValue::Null => h.update(b"0"),
        AttrValue::B(b) => {
            h.update(b"B");
            hash_bytes(h, b);
        }
        AttrValue::M(m) => {
            h.update(b"M");
            h.update(&(m.len() as u64).to_le_bytes());
            for (k, v) in m {
                hash_bytes(h, k.as_bytes());
                hash_value(h, v);
            }
        }
        AttrValue::L(l) => {
            h.update(b"L");
            h.update(&(l.len() as u64).to_le_bytes());
            for v in l {
                hash_value(h, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttrValue {
        AttrValue::S(v.to_string())
    }

    #[test]
    fn numbers_cost_one_byte_per_digit_pair_plus_one() {
        assert_eq!(number_size("0"), 1);
        assert_eq!(number_size("7"), 2);
        assert_eq!(number_size("12"), 2);
        assert_eq!(number_size("123"), 3);
        assert_eq!(number_size("-123.4500"), 5);
        assert_eq!(number_size("1000000"), 2);
        assert_eq!(number_size("0.000123"), 3);
        assert_eq!(number_size("1.5e100"), 3);
    }

    #[test]
    fn item_size_counts_names_values_and_container_overhead() {
        let mut nested = BTreeMap::new();
        nested.insert("a".to_string(), AttrValue::Bool(true)); // 1 + 1 + 1
        nested.insert(
            "bb".to_string(),
            AttrValue::L(vec![s("xy"), AttrValue::Null]),
        ); // 1 + 2 + (3 + 3 + 2)
        let mut attrs = BTreeMap::new();
        attrs.insert("request_id".to_string(), s("abc")); // 10 + 3
        attrs.insert("status".to_string(), AttrValue::N("200".to_string())); // 6 + 2
        attrs.insert("attrs".to_string(), AttrValue::M(nested)); // 5 + (3 + 3 + 11)
        let item = Item::new("abc".to_string(), attrs);
        assert_eq!(item.size(), 13 + 8 + 22);
        assert_eq!(item.wcu(), 1);
    }

    #[test]
    fn wcu_is_per_started_kib_and_never_zero() {
        assert_eq!(wcu_for_bytes(0), 1);
        assert_eq!(wcu_for_bytes(1), 1);
        assert_eq!(wcu_for_bytes(1024), 1);
        assert_eq!(wcu_for_bytes(1025), 2);
        assert_eq!(wcu_for_bytes(MAX_ITEM_BYTES), 400);
    }
}
