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
        }
    }
}

impl SchemaSettings {
    pub fn schema(&self) -> Schema {
        Schema {
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

impl Check for SchemaSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
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
