//! Compressed items' dictionaries in the table, and reading items back (`sluice get`,
//! `sluice export`). The format is [`sluice_core::stored`]'s.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Map, Value};
use sluice_core::stored::{self, DICTIONARY_ATTRIBUTE, Dictionaries, StoredError};
use sluice_core::{AttrValue, read_log};

use crate::{CheckError, from_item};

/// Where a table's items are and how to read its plain ones: the partition key attribute and the
/// attributes sluice adds to plain items (the TTL attribute, and the key attribute when the key
/// is not a log field of that name).
#[derive(Debug, Clone)]
pub struct TableReader {
    client: Client,
    table: String,
    key_attribute: String,
    added: Vec<String>,
}

/// A stored dictionary's details, as `sluice dict train` writes them beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct DictionaryInfo {
    /// The dictionary id its frames name.
    pub id: u32,
    /// Its size in bytes.
    pub bytes: usize,
    /// How many sample logs it was trained on.
    pub samples: u64,
    /// When it was stored, RFC 3339.
    pub created: String,
}

/// Stores `dictionary` in `table` under its reserved key (storing the same one again is a no-op);
/// refuses to replace a different dictionary with the same id. The id is a hash of the content
/// (zstd's choice), so two trainers storing at once store the same bytes or different ids.
pub async fn put_dictionary(
    client: &Client,
    table: &str,
    key_attribute: &str,
    dictionary: &[u8],
    samples: u64,
    created: &str,
) -> Result<u32, CheckError> {
    let id = stored::dictionary_id(dictionary)
        .ok_or_else(|| CheckError::permanent(StoredError::NotADictionary.to_string()))?;
    match get_dictionary(client, table, key_attribute, id).await? {
        Some((bytes, _)) if bytes == dictionary => return Ok(id),
        Some(_) => {
            return Err(CheckError::permanent(format!(
                "table `{table}` already holds a different dictionary {id} (item `{}`)",
                stored::dictionary_key(id)
            )));
        }
        None => {}
    }
    let item = HashMap::from([
        (
            key_attribute.to_string(),
            AttributeValue::S(stored::dictionary_key(id)),
        ),
        (
            DICTIONARY_ATTRIBUTE.to_string(),
            AttributeValue::B(Blob::new(dictionary.to_vec())),
        ),
        (
            "samples".to_string(),
            AttributeValue::N(samples.to_string()),
        ),
        (
            "created".to_string(),
            AttributeValue::S(created.to_string()),
        ),
    ]);
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .map_err(|e| {
            CheckError::of(
                &format!("cannot store dictionary {id} in table `{table}`"),
                &e,
            )
        })?;
    Ok(id)
}

/// Reads dictionary `id` from `table` (a consistent read): None when the table has none.
pub async fn get_dictionary(
    client: &Client,
    table: &str,
    key_attribute: &str,
    id: u32,
) -> Result<Option<(Vec<u8>, DictionaryInfo)>, CheckError> {
    let out = client
        .get_item()
        .table_name(table)
        .key(key_attribute, AttributeValue::S(stored::dictionary_key(id)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| CheckError::of(&format!("cannot read dictionary {id} of `{table}`"), &e))?;
    let Some(item) = out.item() else {
        return Ok(None);
    };
    let Some(AttributeValue::B(bytes)) = item.get(DICTIONARY_ATTRIBUTE) else {
        return Err(CheckError::permanent(format!(
            "item `{}` of `{table}` has no binary `{DICTIONARY_ATTRIBUTE}` attribute: it is not a dictionary sluice stored",
            stored::dictionary_key(id)
        )));
    };
    let bytes = bytes.as_ref().to_vec();
    if stored::dictionary_id(&bytes) != Some(id) {
        return Err(CheckError::permanent(format!(
            "item `{}` of `{table}` holds a dictionary whose header names id {:?}, not {id}",
            stored::dictionary_key(id),
            stored::dictionary_id(&bytes)
        )));
    }
    let info = DictionaryInfo {
        id,
        bytes: bytes.len(),
        samples: match item.get("samples") {
            Some(AttributeValue::N(n)) => n.parse().unwrap_or(0),
            _ => 0,
        },
        created: match item.get("created") {
            Some(AttributeValue::S(s)) => s.clone(),
            _ => String::new(),
        },
    };
    Ok(Some((bytes, info)))
}

/// What reading one item back gave.
#[derive(Debug)]
pub enum ReadBack {
    /// The log, as it was sent.
    Log(Map<String, Value>),
    /// No item has that key.
    Missing,
}

/// A failure reading items back: the call, or an item that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A DynamoDB call failed.
    #[error("{0}")]
    Call(#[from] CheckError),
    /// An item could not be decoded.
    #[error("item `{key}`: {error}")]
    Item {
        /// The item's key.
        key: String,
        /// Why.
        error: StoredError,
    },
}

impl TableReader {
    /// A reader of `table`, keyed by `key_attribute`; `added` names the attributes sluice adds to
    /// plain items (see [`sluice_core::read_log`]).
    pub fn new(
        client: Client,
        table: impl Into<String>,
        key_attribute: impl Into<String>,
        added: Vec<String>,
    ) -> Self {
        TableReader {
            client,
            table: table.into(),
            key_attribute: key_attribute.into(),
            added,
        }
    }

    /// The table read.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Makes sure the dictionary `attrs` needs is in `dictionaries`, fetching it from the table.
    pub async fn load_dictionary_for(
        &self,
        attrs: &BTreeMap<String, AttrValue>,
        dictionaries: &mut Dictionaries,
    ) -> Result<(), CheckError> {
        let Some(id) = stored::needed_dictionary(attrs) else {
            return Ok(());
        };
        if dictionaries.contains(id) {
            return Ok(());
        }
        if let Some((bytes, _)) =
            get_dictionary(&self.client, &self.table, &self.key_attribute, id).await?
        {
            dictionaries
                .insert(&bytes)
                .map_err(|e| CheckError::permanent(e.to_string()))?;
        }
        Ok(())
    }

    /// Decodes one item (its dictionary fetched if needed).
    pub async fn decode(
        &self,
        attrs: &BTreeMap<String, AttrValue>,
        dictionaries: &mut Dictionaries,
    ) -> Result<Map<String, Value>, ReadError> {
        self.load_dictionary_for(attrs, dictionaries).await?;
        let added: Vec<&str> = self.added.iter().map(String::as_str).collect();
        read_log(attrs, dictionaries, &added).map_err(|error| ReadError::Item {
            key: match attrs.get(&self.key_attribute) {
                Some(AttrValue::S(s)) => s.clone(),
                _ => String::new(),
            },
            error,
        })
    }

    /// Reads the log keyed `key` (a consistent read).
    pub async fn get(
        &self,
        key: &str,
        dictionaries: &mut Dictionaries,
    ) -> Result<ReadBack, ReadError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(&self.key_attribute, AttributeValue::S(key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| CheckError::of(&format!("GetItem `{key}` on `{}`", self.table), &e))?;
        match out.item() {
            None => Ok(ReadBack::Missing),
            Some(item) => Ok(ReadBack::Log(
                self.decode(&from_item(item), dictionaries).await?,
            )),
        }
    }

    /// One page of a Scan, from `start` (None: the beginning). Returns the items (dictionary
    /// items left out) and where the next page starts (None: the end).
    #[allow(clippy::type_complexity)]
    pub async fn scan_page(
        &self,
        start: Option<HashMap<String, AttributeValue>>,
        limit: i32,
    ) -> Result<
        (
            Vec<BTreeMap<String, AttrValue>>,
            Option<HashMap<String, AttributeValue>>,
        ),
        CheckError,
    > {
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .set_exclusive_start_key(start)
            .limit(limit)
            .send()
            .await
            .map_err(|e| CheckError::of(&format!("Scan `{}`", self.table), &e))?;
        let items = out
            .items()
            .iter()
            .map(from_item)
            .filter(|attrs| match attrs.get(&self.key_attribute) {
                Some(AttrValue::S(k)) => !stored::is_dictionary_key(k),
                _ => true,
            })
            .collect();
        Ok((items, out.last_evaluated_key().cloned()))
    }
}
