//! Compressed items at the binary's level: the compression writers use (the dictionary read from
//! the table, the attributes indexes need kept plain), `sluice dict train`, and reading items
//! back (`sluice get`, `sluice export`).

pub mod dict;
pub mod read;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use sluice_core::{Compression, IndexSpec, Projection};
use sluice_dynamodb::TableLimits;

use crate::config::{CompressionKind, Settings};

/// The attributes a compressed item keeps plain besides the key: the TTL attribute (a log that
/// carries it but no timestamp keeps its own value, which DynamoDB expires by, plain too),
/// `plain_fields`, and every attribute an index keys on or projects by name (an index of ALL
/// projects the compressed log with the rest).
pub fn plain_attributes(settings: &Settings, indexes: &[IndexSpec]) -> BTreeSet<String> {
    let mut plain: BTreeSet<String> = settings.schema.plain_fields.iter().cloned().collect();
    plain.extend(settings.schema.ttl_attribute.iter().cloned());
    for index in indexes {
        plain.insert(index.hash_key.clone());
        plain.extend(index.range_key.iter().cloned());
        if let Projection::Include(names) = &index.projection {
            plain.extend(names.iter().cloned());
        }
    }
    plain
}

/// The compression writers use, when `schema.compression = "zstd"`: dictionary
/// `schema.dictionary_id` read from the table (a missing one stops start-up, saying how to make
/// it), with the index attributes DescribeTable names kept plain.
pub async fn compression(
    settings: &Settings,
    ddb: &aws_sdk_dynamodb::Client,
    limits: Option<&TableLimits>,
) -> Result<Option<Arc<Compression>>> {
    let schema = &settings.schema;
    if schema.compression == CompressionKind::None {
        return Ok(None);
    }
    let table = &settings.dynamodb.table;
    let id = schema.dictionary_id.ok_or_else(|| {
        anyhow!("schema.compression is \"zstd\" but schema.dictionary_id is unset: run `sluice dict train --config FILE`")
    })?;
    let limits = limits.ok_or_else(|| {
        anyhow!("schema.compression is \"zstd\" but the table's indexes could not be read (DescribeTable `{table}`): sluice must know every index attribute to keep it plain")
    })?;
    let indexes: Vec<IndexSpec> = limits.indexes.iter().map(|(s, _)| s.clone()).collect();
    let retry_for = settings.dynamodb.startup_retry_for;
    let found = crate::startup::retry("the dictionary", retry_for, || {
        sluice_dynamodb::stored::get_dictionary(ddb, table, &schema.key_attribute, id)
    })
    .await
    .map_err(|e| anyhow!(e))?;
    let Some((bytes, info)) = found else {
        return Err(anyhow!(
            "dictionary {id} (schema.dictionary_id) is not in table `{table}` (no item `{}`): train and store one with `sluice dict train --config FILE`, or set the id of one the table holds",
            sluice_core::stored::dictionary_key(id)
        ));
    };
    let plain = plain_attributes(settings, &indexes);
    if plain.contains(sluice_core::stored::LOG_ATTRIBUTE) {
        return Err(anyhow!(
            "an index of table `{table}` keys on or projects `{}`, the attribute that holds a compressed item's log: schema.compression = \"zstd\" cannot serve that table",
            sluice_core::stored::LOG_ATTRIBUTE
        ));
    }
    let c = Compression::new(bytes, schema.compression_level, plain.clone())
        .map_err(|e| anyhow!("dictionary {id} of table `{table}`: {e}"))?;
    tracing::info!(
        dictionary_id = id,
        dictionary_bytes = info.bytes,
        trained_on = info.samples,
        level = schema.compression_level,
        plain = ?plain,
        "items are written compressed (zstd with a dictionary)"
    );
    Ok(Some(Arc::new(c)))
}
