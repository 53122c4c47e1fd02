//! `[schema]`: how a log becomes an item.

use std::time::Duration;

use serde::Deserialize;
use sluice_core::{Schema, TtlRule};

use super::Mode;
use super::problems::{Check, Problems};

/// How a log becomes an item: its key, the fields it must carry, its timestamp and TTL.
/// Not [`Schema`] itself: the TTL is two keys here (`ttl_attribute`, `ttl_retention`) and one
/// optional rule there.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaSettings {
    /// The log field holding the item key; a log without it gets a content hash as key.
    pub key_field: String,
    /// The table's partition key attribute (type S).
    pub key_attribute: String,
    /// Fields every log must carry (non-null); a log without one is poison.
    pub required_fields: Vec<String>,
    /// The timestamp field: RFC 3339 text or epoch milliseconds.
    pub ts_field: String,
    /// When set, items get this attribute = timestamp + `ttl_retention`, in epoch seconds.
    pub ttl_attribute: Option<String>,
    /// Retention for the TTL attribute.
    #[serde(with = "humantime_serde")]
    pub ttl_retention: Duration,
    /// `none` writes every log as plain attributes; `zstd` compresses all but the key, the TTL,
    /// index attributes and `plain_fields` into one binary attribute (docs/item-format.md).
    pub compression: CompressionKind,
    /// The dictionary writers compress with (`sluice dict train` stores one and prints its id);
    /// required with `compression = "zstd"`.
    pub dictionary_id: Option<u32>,
    /// zstd level, 1 (fastest) to 19.
    pub compression_level: i32,
    /// Log fields kept as plain attributes in compressed items (so a query or filter can see
    /// them); the key, the TTL attribute and every index attribute always are.
    pub plain_fields: Vec<String>,
}

/// How items are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionKind {
    /// Plain attributes, one per log field.
    #[default]
    None,
    /// One zstd frame, made with a dictionary kept in the table.
    Zstd,
}

impl Default for SchemaSettings {
    fn default() -> Self {
        let s = Schema::default();
        SchemaSettings {
            key_field: s.key_field,
            key_attribute: s.key_attribute,
            required_fields: s.required_fields,
            ts_field: s.ts_field,
            ttl_attribute: None,
            ttl_retention: Duration::from_secs(30 * 86_400),
            compression: CompressionKind::None,
            dictionary_id: None,
            compression_level: sluice_core::stored::DEFAULT_LEVEL,
            plain_fields: Vec::new(),
        }
    }
}

impl SchemaSettings {
    /// The schema, writing plain items (the pipeline attaches the compression, which needs the
    /// table's dictionary and indexes).
    pub fn schema(&self) -> Schema {
        Schema {
            compression: None,
            key_field: self.key_field.clone(),
            key_attribute: self.key_attribute.clone(),
            required_fields: self.required_fields.clone(),
            ts_field: self.ts_field.clone(),
            ttl: self.ttl_attribute.clone().map(|attribute| TtlRule {
                attribute,
                retention: self.ttl_retention,
            }),
        }
    }
}

impl SchemaSettings {
    /// The attributes sluice adds to a plain item, which reading it back leaves out: the TTL
    /// attribute, and the key attribute when it is not the key field.
    pub fn added_attributes(&self) -> Vec<String> {
        let mut added: Vec<String> = self.ttl_attribute.iter().cloned().collect();
        if self.key_attribute != self.key_field {
            added.push(self.key_attribute.clone());
        }
        added
    }

    fn check_compression(&self, p: &mut Problems) {
        p.check(
            (1..=19).contains(&self.compression_level),
            "schema.compression_level",
            format!(
                "schema.compression_level is {}: zstd levels run from 1 (fastest) to 19",
                self.compression_level
            ),
        );
        for f in &self.plain_fields {
            p.check(
                f != sluice_core::stored::LOG_ATTRIBUTE && !f.is_empty(),
                "schema.plain_fields",
                format!(
                    "schema.plain_fields names `{f}`: not a field name sluice can keep plain (`{}` holds the compressed log)",
                    sluice_core::stored::LOG_ATTRIBUTE
                ),
            );
        }
        p.check(
            self.dictionary_id != Some(0),
            "schema.dictionary_id",
            "schema.dictionary_id is 0: zstd dictionary ids start at 1 (use the id `sluice dict train` printed)",
        );
        if self.compression == CompressionKind::Zstd {
            let log = sluice_core::stored::LOG_ATTRIBUTE;
            for (key, value) in [
                ("schema.key_attribute", Some(&self.key_attribute)),
                ("schema.ttl_attribute", self.ttl_attribute.as_ref()),
            ] {
                p.check(
                    value.is_none_or(|v| v != log),
                    key,
                    format!("{key} is `{log}`, the attribute that holds a compressed item's log: name another"),
                );
            }
            p.check(
                self.dictionary_id.is_some(),
                "schema.dictionary_id",
                "schema.compression is \"zstd\" but schema.dictionary_id is unset: run `sluice dict train --config FILE` and set the id it prints",
            );
        }
    }
}

impl Check for SchemaSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
        self.check_compression(p);
        for (key, value) in [
            ("schema.key_field", &self.key_field),
            ("schema.key_attribute", &self.key_attribute),
            ("schema.ts_field", &self.ts_field),
        ] {
            p.check(!value.is_empty(), key, format!("{key} must not be empty"));
        }
        let Some(ttl) = &self.ttl_attribute else {
            return;
        };
        p.check(
            !self.ttl_retention.is_zero(),
            "schema.ttl_retention",
            "schema.ttl_retention must be above zero when schema.ttl_attribute is set",
        );
        p.check(
            !ttl.trim().is_empty(),
            "schema.ttl_attribute",
            "schema.ttl_attribute must not be empty (leave it unset for no TTL)",
        );
        p.check(
            *ttl != self.key_attribute,
            "schema.ttl_attribute",
            format!(
                "schema.ttl_attribute `{ttl}` is the table's key (schema.key_attribute): every item would get the TTL number as its key; name another attribute"
            ),
        );
    }
}
