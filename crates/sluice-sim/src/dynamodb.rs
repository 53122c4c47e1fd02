//! The DynamoDB half: tables with a partition key (and optional sort key), items as the wire's
//! AttributeValue JSON, and write capacity enforced per table (see [`crate::capacity`]).

use sluice_common::sync::Recover;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::meter::{Billing, DEFAULT_WARM_WCU, Gsi, Meter, Projection};

/// DynamoDB's largest item, 400 KiB as DynamoDB counts item size; a larger one is refused with a
/// ValidationException.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
const MAX_BATCH_WRITE: usize = 25;
/// The largest BatchWriteItem request body DynamoDB takes (16 MB); larger is refused whole.
pub const MAX_BATCH_WRITE_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// How long a new table is CREATING unless its `sluice-sim:creating-ms` tag says otherwise.
pub const DEFAULT_CREATING: Duration = Duration::ZERO;
/// How long a table is UPDATING after UpdateTable unless its `sluice-sim:updating-ms` tag says
/// otherwise: long enough to be seen, short enough that tests need not wait.
pub const DEFAULT_UPDATING: Duration = Duration::from_millis(100);
/// CreateTable tags that set how long the table stays CREATING, and UPDATING after each
/// UpdateTable, in milliseconds (DynamoDB ignores them: they are ordinary tags there).
pub const CREATING_MS_TAG: &str = "sluice-sim:creating-ms";
/// The tag that sets how long the table stays UPDATING after each UpdateTable (milliseconds;
/// default [`DEFAULT_UPDATING`]).
pub const UPDATING_MS_TAG: &str = "sluice-sim:updating-ms";
const PAGE_BYTES: usize = 1024 * 1024;

/// How the simulator's tables meter writes, for every table it serves. The default is DynamoDB's:
/// 300 s of burst credit, and an on-demand ceiling of 40,000 WCU per second.
#[derive(Debug, Clone)]
pub struct TableSettings {
    /// Seconds of unused capacity a provisioned table keeps as burst credit (DynamoDB: 300).
    pub burst_seconds: f64,
    /// WCU per second an on-demand table takes before ThrottlingException.
    pub on_demand_ceiling_wcu: u64,
}

impl Default for TableSettings {
    fn default() -> Self {
        TableSettings {
            burst_seconds: 300.0,
            on_demand_ceiling_wcu: 40_000,
        }
    }
}

/// A table's status as DescribeTable shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Creating,
    Updating,
}

struct Table {
    name: String,
    created: f64,
    /// CREATING or UPDATING until the instant; ACTIVE after it.
    busy: Option<(Busy, Instant)>,
    updating_for: Duration,
    deletion_protection: bool,
    table_class: String,
    key_schema: Value,
    attribute_definitions: Value,
    hash_key: String,
    range_key: Option<String>,
    meter: Meter,
    gsis: Vec<Gsi>,
    items: BTreeMap<String, Map<String, Value>>,
    bytes: usize,
}

/// One charge of a write: on the table (None) or an index, on a partition, in WCU.
struct Charge {
    on: Option<usize>,
    partition: String,
    units: u64,
}

/// Why a write was refused: (meter, reason, resource ARN).
struct Refusal {
    on: Option<usize>,
    reason: String,
    resource: String,
}

/// The DynamoDB half of the server: every table, its items and its meters, behind one lock. Answers
/// one operation at a time through [`DynamoDb::handle`].
pub struct DynamoDb {
    tables: Mutex<HashMap<String, Table>>,
    settings: TableSettings,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn str_field<'a>(req: &'a Value, name: &str) -> ApiResult<&'a str> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation(format!("{name} is required")))
}

// ---- item size, as DynamoDB counts it -------------------------------------------------------

/// DynamoDB's own words for what it refuses (checked against DynamoDB Local 1.25).
pub mod refusals {
    /// A number DynamoDB cannot read.
    pub const NOT_A_NUMBER: &str = "A value provided cannot be converted into a number";
    /// A number with more than 38 significant digits.
    pub const PRECISION: &str = "DynamoDB only supports precision up to 38 digits";
    /// A number above DynamoDB's range (magnitude of 1e126 or more).
    pub const OVERFLOW: &str =
        "Number overflow. Attempting to store a number with magnitude larger than supported range";
    /// A non-zero number below DynamoDB's range (magnitude under 1e-130).
    pub const UNDERFLOW: &str = "Number underflow. Attempting to store a number with magnitude smaller than supported range";
    /// Maps and lists nested deeper than 32 levels.
    pub const NESTING: &str = "Nesting Levels have exceeded supported limits: Attributes in the item have nested levels beyond supported limit";
    /// A partition key value of more than 2,048 bytes, or a sort key value of more than 1,024.
    pub const KEY_TOO_LONG: &str = "Hash primary key values must be under 2048 bytes, and range primary key values must be under 1024 bytes";
    /// An attribute name of 65,536 bytes or more.
    pub const NAME_TOO_LONG: &str = "Attribute name is too large, must be less than 65536 bytes";
    /// An attribute name that is empty.
    pub const EMPTY_NAME: &str = "Empty attribute name";
    /// An item over [`MAX_ITEM_BYTES`](super::MAX_ITEM_BYTES).
    pub const ITEM_TOO_LARGE: &str = "Item size has exceeded the maximum allowed size";
    /// A BatchWriteItem with two requests for the same key.
    pub const DUPLICATE_KEYS: &str = "Provided list of item keys contains duplicates";
    /// An item or key without the table's key attributes.
    pub const KEY_MISSING: &str = "One of the required keys was not given a value";
    /// A key attribute of another type than the table's AttributeDefinitions say.
    pub const KEY_TYPE: &str = "One or more parameter values were invalid: Type mismatch for key";
    // DynamoDB's (documented, or as DynamoDB Local says where DynamoDB's own words are unknown).
    /// An empty string set.
    pub const EMPTY_SS: &str =
        "One or more parameter values were invalid: An string set  may not be empty";
    /// An empty number set.
    pub const EMPTY_NS: &str =
        "One or more parameter values were invalid: An number set  may not be empty";
    /// An empty binary set.
    pub const EMPTY_BS: &str =
        "One or more parameter values were invalid: Binary sets should not be empty";
    /// A number set with a value twice.
    pub const DUPLICATE_NS: &str = "Input collection contains duplicates";
    /// A binary set with a value twice.
    pub const DUPLICATE_BS: &str = "One or more parameter values were invalid: Input collection of type BS contains duplicates.";
    /// A key (GetItem, DeleteItem, a DeleteRequest) with more attributes than the table's key.
    pub const KEY_SCHEMA: &str = "The provided key element does not match the schema";
    /// A PAY_PER_REQUEST CreateTable or UpdateTable that also gives a ProvisionedThroughput.
    pub const PAY_PER_REQUEST_THROUGHPUT: &str = "One or more parameter values were invalid: Neither ReadCapacityUnits nor WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST";
    /// A CreateTable whose AttributeDefinitions name attributes no key uses.
    pub const UNUSED_DEFINITIONS: &str = "One or more parameter values were invalid: Number of attributes in KeySchema does not exactly match number of attributes defined in AttributeDefinitions";
    /// A DeleteTable of a table with deletion protection on.
    pub const DELETION_PROTECTED: &str = "Resource cannot be deleted as it is currently protected against deletion. Disable deletion protection first.";
    /// An UpdateTable that changes nothing.
    pub const NOTHING_TO_UPDATE: &str = "Nothing to update";
    /// A BatchWriteItem request body over 16 MiB
    /// ([`MAX_BATCH_WRITE_REQUEST_BYTES`](super::MAX_BATCH_WRITE_REQUEST_BYTES)).
    pub const REQUEST_TOO_LARGE: &str =
        "Request size exceeded 16777216 bytes: a BatchWriteItem request may carry up to 16 MB";

    /// A string set with a value twice: DynamoDB lists the set.
    pub fn duplicate_ss(set: &[&str]) -> String {
        format!(
            "One or more parameter values were invalid: Input collection [{}] contains duplicates.",
            set.join(", ")
        )
    }
}

/// Deepest nesting DynamoDB takes: the item is level 1, each map or list one more.
const MAX_NESTING: usize = 32;
const MAX_NAME_BYTES: usize = 65_535;
const MAX_HASH_KEY_BYTES: usize = 2048;
const MAX_RANGE_KEY_BYTES: usize = 1024;

/// Checks a number's text the way DynamoDB does and returns its stored size: base-100 digit
/// pairs aligned on the decimal point, from the first significant digit to the last, plus one
/// byte, plus one for a negative sign; zero is one byte.
fn number_bytes(n: &str) -> Result<usize, String> {
    number_parts(n).map(|(size, _)| size)
}

/// The stored size of a number and its value as text that is equal for equal numbers
/// (`1`, `1.0`, `01`, `10e-1` are one value in a number set).
fn number_parts(n: &str) -> Result<(usize, String), String> {
    let bad = || refusals::NOT_A_NUMBER.to_string();
    let (negative, unsigned) = match n.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, n.strip_prefix('+').unwrap_or(n)),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => {
            // BigDecimal's rule: any leading zeros, and an exponent that fits a 32-bit int.
            let e = &unsigned[i + 1..];
            let negative_exp = e.starts_with('-');
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let significant = digits.trim_start_matches('0');
            let value: i64 = if significant.is_empty() {
                0
            } else if significant.len() > 10 {
                return Err(bad());
            } else {
                significant.parse().map_err(|_| bad())?
            };
            if value > i64::from(i32::MAX) {
                return Err(bad());
            }
            (&unsigned[..i], if negative_exp { -value } else { value })
        }
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.len() + frac.len() == 0 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let all = format!("{int}{frac}");
    // The power of ten of the last digit, then of the last significant one.
    let mut last = exponent - frac.len() as i64;
    let significant = all.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    if trimmed.is_empty() {
        return Ok((1, "0".into()));
    }
    last += (significant.len() - trimmed.len()) as i64;
    let first = last + trimmed.len() as i64 - 1;
    if trimmed.len() > 38 {
        return Err(refusals::PRECISION.into());
    }
    if first >= 126 {
        return Err(refusals::OVERFLOW.into());
    }
    if first < -130 {
        return Err(refusals::UNDERFLOW.into());
    }
    let pairs = (first.div_euclid(2) - last.div_euclid(2) + 1) as usize;
    let sign = if negative { "-" } else { "" };
    // A number is stored in at most 21 bytes (38 digits off the pair alignment would need 22).
    Ok((
        (pairs + 1 + usize::from(negative)).min(21),
        format!("{sign}{trimmed}e{last}"),
    ))
}

fn binary_bytes(b64: &str) -> usize {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(|v| v.len())
        .unwrap_or(b64.len())
}

/// Size of one AttributeValue (`{"S": "…"}` and friends), or why DynamoDB would refuse it.
pub fn value_size(v: &Value) -> Result<usize, String> {
    value_size_at(v, 2)
}

/// `level`: the nesting level a map or list here has (the item is level 1).
fn value_size_at(v: &Value, level: usize) -> Result<usize, String> {
    let Some(obj) = v.as_object().filter(|o| o.len() == 1) else {
        return Err(format!("an AttributeValue must have exactly one type: {v}"));
    };
    let (ty, inner) = obj.iter().next().expect("one entry");
    let list = |inner: &Value| -> Result<Vec<Value>, String> {
        inner
            .as_array()
            .cloned()
            .ok_or_else(|| format!("{ty} must be a list"))
    };
    let name = |k: &str| -> Result<(), String> {
        if k.is_empty() {
            Err(refusals::EMPTY_NAME.into())
        } else if k.len() > MAX_NAME_BYTES {
            Err(refusals::NAME_TOO_LONG.into())
        } else {
            Ok(())
        }
    };
    Ok(match (ty.as_str(), inner) {
        ("S", Value::String(s)) => s.len(),
        ("N", Value::String(n)) => number_bytes(n)?,
        ("B", Value::String(b)) => binary_bytes(b),
        ("BOOL", Value::Bool(_)) | ("NULL", Value::Bool(true)) => 1,
        ("SS", v) => {
            let set = list(v)?;
            if set.is_empty() {
                return Err(refusals::EMPTY_SS.into());
            }
            let strings: Vec<&str> = set.iter().map(|s| s.as_str().unwrap_or("")).collect();
            if strings.iter().collect::<HashSet<_>>().len() < strings.len() {
                return Err(refusals::duplicate_ss(&strings));
            }
            strings.iter().map(|s| s.len()).sum()
        }
        ("NS", v) => {
            let set = list(v)?;
            if set.is_empty() {
                return Err(refusals::EMPTY_NS.into());
            }
            let (mut size, mut values) = (0, HashSet::new());
            let mut duplicate = false;
            for n in set {
                let (bytes, value) = number_parts(
                    n.as_str()
                        .ok_or_else(|| refusals::NOT_A_NUMBER.to_string())?,
                )?;
                size += bytes;
                duplicate |= !values.insert(value);
            }
            if duplicate {
                return Err(refusals::DUPLICATE_NS.into());
            }
            size
        }
        ("BS", v) => {
            let set = list(v)?;
            if set.is_empty() {
                return Err(refusals::EMPTY_BS.into());
            }
            let decoded: Vec<Vec<u8>> = set
                .iter()
                .map(|s| {
                    let s = s.as_str().unwrap_or("");
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .unwrap_or_else(|_| s.as_bytes().to_vec())
                })
                .collect();
            if decoded.iter().collect::<HashSet<_>>().len() < decoded.len() {
                return Err(refusals::DUPLICATE_BS.into());
            }
            decoded.iter().map(Vec::len).sum()
        }
        ("M", Value::Object(m)) => {
            if level > MAX_NESTING {
                return Err(refusals::NESTING.into());
            }
            let mut size = 3;
            for (k, v) in m {
                name(k)?;
                size += 1 + k.len() + value_size_at(v, level + 1)?;
            }
            size
        }
        ("L", Value::Array(l)) => {
            if level > MAX_NESTING {
                return Err(refusals::NESTING.into());
            }
            let mut size = 3;
            for v in l {
                size += 1 + value_size_at(v, level + 1)?;
            }
            size
        }
        _ => return Err(format!("unsupported AttributeValue {ty}: {inner}")),
    })
}

/// An item's size as DynamoDB counts it (names plus values, in bytes), from its wire JSON. Err: the
/// refusal DynamoDB would give it (empty or too long name, bad number, nesting, empty set, ...).
pub fn item_size(item: &Map<String, Value>) -> Result<usize, String> {
    let mut size = 0;
    for (name, value) in item {
        if name.is_empty() {
            return Err(refusals::EMPTY_NAME.into());
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(refusals::NAME_TOO_LONG.into());
        }
        size += name.len() + value_size(value)?;
    }
    Ok(size)
}

fn wcu(bytes: usize) -> u64 {
    (bytes.div_ceil(1024)).max(1) as u64
}

// ---- keys ---------------------------------------------------------------------------------

/// How DynamoDB orders key values of type `ty`: numbers numerically, strings and binaries by
/// their bytes.
fn compare_key(ty: &str, a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn raw<'a>(ty: &str, v: Option<&'a Value>) -> &'a str {
        v.and_then(|v| v.get(ty))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    let (a, b) = (raw(ty, a), raw(ty, b));
    match ty {
        "N" => {
            let (x, y) = (
                a.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            );
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        "B" => {
            let decode = |s: &str| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_default()
            };
            decode(a).cmp(&decode(b))
        }
        _ => a.cmp(b),
    }
}

impl Table {
    fn key_type(&self, attr: &str) -> &str {
        self.attribute_definitions
            .as_array()
            .and_then(|defs| {
                defs.iter()
                    .find(|d| d["AttributeName"] == attr)
                    .and_then(|d| d["AttributeType"].as_str())
            })
            .unwrap_or("S")
    }

    /// The storage key of an item or a Key map: its key attributes, checked and encoded.
    fn key_of(&self, item: &Map<String, Value>) -> ApiResult<String> {
        let mut key = String::new();
        for (i, attr) in std::iter::once(&self.hash_key)
            .chain(self.range_key.iter())
            .enumerate()
        {
            let ty = self.key_type(attr);
            let value = item
                .get(attr)
                .ok_or_else(|| ApiError::validation(refusals::KEY_MISSING))?;
            let v = value
                .get(ty)
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::validation(refusals::KEY_TYPE))?;
            if v.is_empty() {
                let kind = if ty == "B" { "binary" } else { "string" };
                return Err(ApiError::validation(format!(
                    "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty {kind} value. Key: {attr}"
                )));
            }
            let limit = if i == 0 {
                MAX_HASH_KEY_BYTES
            } else {
                MAX_RANGE_KEY_BYTES
            };
            // A binary key's size is its bytes, not its base64 text.
            let bytes = if ty == "B" { binary_bytes(v) } else { v.len() };
            if bytes > limit {
                return Err(ApiError::validation(refusals::KEY_TOO_LONG));
            }
            if !key.is_empty() {
                key.push('\u{0}');
            }
            key.push_str(v);
        }
        Ok(key)
    }

    /// The storage key of a Key map (GetItem, DeleteRequest): exactly the key attributes.
    fn key_of_key(&self, key: &Map<String, Value>) -> ApiResult<String> {
        let wanted = 1 + usize::from(self.range_key.is_some());
        if key.len() > wanted {
            return Err(ApiError::validation(refusals::KEY_SCHEMA));
        }
        self.key_of(key)
    }

    fn status(&self, now: Instant) -> Option<Busy> {
        self.busy
            .filter(|(_, until)| now < *until)
            .map(|(kind, _)| kind)
    }

    /// ResourceInUseException while CREATING or UPDATING (UpdateTable, DeleteTable).
    fn not_busy(&self) -> ApiResult<()> {
        match self.status(Instant::now()) {
            None => Ok(()),
            Some(kind) => {
                let what = match kind {
                    Busy::Creating => "created",
                    Busy::Updating => "updated",
                };
                Err(ApiError::dynamodb(
                    400,
                    "ResourceInUseException",
                    format!(
                        "Attempt to change a resource which is still in use: Table is being {what}: {}",
                        self.name
                    ),
                ))
            }
        }
    }

    fn key_map(&self, item: &Map<String, Value>) -> Value {
        let mut m = Map::new();
        for attr in std::iter::once(&self.hash_key).chain(self.range_key.iter()) {
            if let Some(v) = item.get(attr) {
                m.insert(attr.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    fn arn(&self) -> String {
        format!(
            "arn:aws:dynamodb:us-east-1:000000000000:table/{}",
            self.name
        )
    }

    fn description(&self) -> Value {
        let mode = match self.meter.billing {
            Billing::Provisioned { .. } => "PROVISIONED",
            Billing::OnDemand => "PAY_PER_REQUEST",
        };
        let status = match self.status(Instant::now()) {
            None => "ACTIVE",
            Some(Busy::Creating) => "CREATING",
            Some(Busy::Updating) => "UPDATING",
        };
        let index_status = if status == "CREATING" {
            "CREATING"
        } else {
            "ACTIVE"
        };
        let mut d = Map::new();
        d.insert("TableName".into(), json!(self.name));
        d.insert("TableStatus".into(), json!(status));
        d.insert(
            "DeletionProtectionEnabled".into(),
            json!(self.deletion_protection),
        );
        d.insert(
            "TableClassSummary".into(),
            json!({"TableClass": self.table_class}),
        );
        d.insert("TableArn".into(), json!(self.arn()));
        d.insert("TableId".into(), json!(format!("sim-{}", self.name)));
        d.insert("CreationDateTime".into(), json!(self.created));
        d.insert("KeySchema".into(), self.key_schema.clone());
        d.insert(
            "AttributeDefinitions".into(),
            self.attribute_definitions.clone(),
        );
        self.meter.describe_into(&mut d);
        d.insert("BillingModeSummary".into(), json!({"BillingMode": mode}));
        d.insert("ItemCount".into(), json!(self.items.len()));
        d.insert("TableSizeBytes".into(), json!(self.bytes));
        if !self.gsis.is_empty() {
            let keys = self.table_keys();
            let gsis: Vec<Value> = self
                .gsis
                .iter()
                .map(|g| {
                    let mut i = Map::new();
                    i.insert("IndexName".into(), json!(g.name));
                    i.insert("KeySchema".into(), g.key_schema.clone());
                    i.insert("Projection".into(), g.projection.describe());
                    i.insert("IndexStatus".into(), json!(index_status));
                    i.insert(
                        "IndexArn".into(),
                        json!(format!("{}/index/{}", self.arn(), g.name)),
                    );
                    let count = self
                        .items
                        .values()
                        .filter(|it| g.project(it, &keys).is_some())
                        .count();
                    i.insert("ItemCount".into(), json!(count));
                    g.meter.describe_into(&mut i);
                    Value::Object(i)
                })
                .collect();
            d.insert("GlobalSecondaryIndexes".into(), Value::Array(gsis));
        }
        Value::Object(d)
    }

    fn table_keys(&self) -> Vec<&str> {
        std::iter::once(self.hash_key.as_str())
            .chain(self.range_key.as_deref())
            .collect()
    }

    /// What writing `item` over the row `key` costs, on the table and each index it is or was
    /// in: DynamoDB charges the larger of the new and old item; an index write that changes the
    /// item's index key is a delete plus a put.
    fn put_charges(
        &self,
        key: &str,
        item: &Map<String, Value>,
        size: usize,
    ) -> ApiResult<Vec<Charge>> {
        let old = self.items.get(key);
        let old_size = old.and_then(|i| item_size(i).ok()).unwrap_or(0);
        let hash = item
            .get(&self.hash_key)
            .map(Value::to_string)
            .unwrap_or_default();
        let mut out = vec![Charge {
            on: None,
            partition: hash,
            units: wcu(size.max(old_size)),
        }];
        let keys = self.table_keys();
        for (i, g) in self.gsis.iter().enumerate() {
            for (k, attr) in std::iter::once(&g.hash_key)
                .chain(g.range_key.iter())
                .enumerate()
            {
                let ty = self.key_type(attr);
                let Some(v) = item.get(attr) else { continue };
                let Some(raw) = v.get(ty) else {
                    // DynamoDB Local's words (DynamoDB itself goes on with the attribute, the
                    // expected and actual types, and the index).
                    return Err(ApiError::validation(
                        "One or more parameter values were invalid: Type mismatch for Index Key",
                    ));
                };
                let raw = raw.as_str().unwrap_or_default();
                if raw.is_empty() {
                    let kind = if ty == "B" { "binary" } else { "string" };
                    return Err(ApiError::validation(format!(
                        "One or more parameter values are not valid. A value specified for a secondary index key is not supported. The AttributeValue for a key attribute cannot contain an empty {kind} value. IndexName: {}, IndexKey: {attr}",
                        g.name
                    )));
                }
                let bytes = match ty {
                    "B" => binary_bytes(raw),
                    "N" => number_bytes(raw).unwrap_or(0),
                    _ => raw.len(),
                };
                let limit = if k == 0 {
                    MAX_HASH_KEY_BYTES
                } else {
                    MAX_RANGE_KEY_BYTES
                };
                if bytes > limit {
                    // DynamoDB's words (DynamoDB Local says only "Size limit exceeded").
                    return Err(ApiError::validation(format!(
                        "One or more parameter values were invalid: Size limit exceeded for Index Key {attr} Actual Size: {bytes} bytes Max Size: {limit} bytes IndexName: {}",
                        g.name
                    )));
                }
            }
            let new = g.project(item, &keys);
            let was = old.and_then(|o| g.project(o, &keys));
            let size_of = |m: &Map<String, Value>| item_size(m).unwrap_or(0);
            match (was, new) {
                (None, None) => {}
                (None, Some((p, n))) => out.push(Charge {
                    on: Some(i),
                    partition: p,
                    units: wcu(size_of(&n)),
                }),
                (Some((p, o)), None) => out.push(Charge {
                    on: Some(i),
                    partition: p,
                    units: wcu(size_of(&o)),
                }),
                (Some((po, o)), Some((pn, n))) => {
                    let same_key =
                        po == pn && g.range_key.as_ref().is_none_or(|r| o.get(r) == n.get(r));
                    if same_key {
                        out.push(Charge {
                            on: Some(i),
                            partition: pn,
                            units: wcu(size_of(&o).max(size_of(&n))),
                        });
                    } else {
                        out.push(Charge {
                            on: Some(i),
                            partition: po,
                            units: wcu(size_of(&o)),
                        });
                        out.push(Charge {
                            on: Some(i),
                            partition: pn,
                            units: wcu(size_of(&n)),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// What deleting the row `key` costs.
    fn delete_charges(&self, key: &str) -> Vec<Charge> {
        let Some(old) = self.items.get(key) else {
            return vec![Charge {
                on: None,
                partition: String::new(),
                units: 1,
            }];
        };
        let hash = old
            .get(&self.hash_key)
            .map(Value::to_string)
            .unwrap_or_default();
        let mut out = vec![Charge {
            on: None,
            partition: hash,
            units: wcu(item_size(old).unwrap_or(0)),
        }];
        let keys = self.table_keys();
        for (i, g) in self.gsis.iter().enumerate() {
            if let Some((p, o)) = g.project(old, &keys) {
                out.push(Charge {
                    on: Some(i),
                    partition: p,
                    units: wcu(item_size(&o).unwrap_or(0)),
                });
            }
        }
        out
    }

    fn meter_mut(&mut self, on: Option<usize>) -> &mut Meter {
        match on {
            None => &mut self.meter,
            Some(i) => &mut self.gsis[i].meter,
        }
    }

    /// Spends every charge if all fit now; else names what refuses.
    fn charge(&mut self, charges: &[Charge]) -> Result<(), Refusal> {
        let now = Instant::now();
        // Two charges on one meter and partition (an index key that moved within a partition:
        // a delete and a put) are checked together, so one balance is not counted twice.
        let mut merged: Vec<Charge> = Vec::with_capacity(charges.len());
        for c in charges {
            match merged
                .iter_mut()
                .find(|m| m.on == c.on && m.partition == c.partition)
            {
                Some(m) => m.units += c.units,
                None => merged.push(Charge {
                    on: c.on,
                    partition: c.partition.clone(),
                    units: c.units,
                }),
            }
        }
        let charges = &merged[..];
        for c in charges {
            if let Err(limit) = self.meter_mut(c.on).check(&c.partition, c.units, now) {
                let (kind, resource) = match c.on {
                    None => ("Table", self.arn()),
                    Some(i) => (
                        "Index",
                        format!("{}/index/{}", self.arn(), self.gsis[i].name),
                    ),
                };
                return Err(Refusal {
                    on: c.on,
                    reason: format!("{kind}Write{limit}"),
                    resource,
                });
            }
        }
        for c in charges {
            self.meter_mut(c.on).spend(&c.partition, c.units, now);
        }
        Ok(())
    }

    fn throttle_error(&mut self, r: Refusal) -> ApiError {
        self.meter_mut(r.on).log.throttled_requests += 1;
        let mut e = match self.meter.billing {
            Billing::Provisioned { .. } => ApiError::dynamodb(
                400,
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
            ),
            Billing::OnDemand => ApiError::dynamodb(
                400,
                "ThrottlingException",
                "Throughput exceeds the current capacity for one or more global secondary indexes or the table.",
            ),
        };
        e.throttling_reasons.push((r.reason, r.resource));
        e
    }

    /// Deletes the row `key`, if there is one.
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.items.remove(key) {
            self.bytes -= item_size(&old).unwrap_or(0);
        }
    }

    fn put(&mut self, key: String, item: Map<String, Value>, size: usize) {
        if let Some(old) = self.items.insert(key, item) {
            self.bytes -= item_size(&old).unwrap_or(0);
        }
        self.bytes += size;
    }
}

fn parse_billing(on_demand: bool, pt: Option<&Value>, what: &str) -> ApiResult<Billing> {
    if on_demand {
        return Ok(Billing::OnDemand);
    }
    let pt = pt.ok_or_else(|| {
        ApiError::validation(format!("No provisioned throughput specified for {what}"))
    })?;
    let rcu = pt["ReadCapacityUnits"].as_i64().unwrap_or(0);
    let wcu = pt["WriteCapacityUnits"].as_i64().unwrap_or(0);
    // The API's own constraint (minimum 1), in the words of its request validation.
    let errors: Vec<String> = [("readCapacityUnits", rcu), ("writeCapacityUnits", wcu)]
        .iter()
        .filter(|(_, v)| *v < 1)
        .map(|(field, v)| {
            format!(
                "Value '{v}' at 'provisionedThroughput.{field}' failed to satisfy constraint: Member must have value greater than or equal to 1"
            )
        })
        .collect();
    if !errors.is_empty() {
        let n = errors.len();
        let s = if n == 1 { "" } else { "s" };
        return Err(ApiError::validation(format!(
            "{n} validation error{s} detected: {}",
            errors.join("; ")
        )));
    }
    Ok(Billing::Provisioned {
        rcu: rcu as u64,
        wcu: wcu as u64,
    })
}

/// OnDemandThroughput.MaxWriteRequestUnits and WarmThroughput.WriteUnitsPerSecond as DynamoDB
/// validates them: a maximum of -1 (none) or at least 1, a warm throughput of at least 1.
fn check_throughput_settings(v: &Value) -> ApiResult<()> {
    if let Some(m) = v
        .get("OnDemandThroughput")
        .and_then(|o| o.get("MaxWriteRequestUnits"))
        && m.as_i64().is_none_or(|m| m != -1 && m < 1)
    {
        return Err(ApiError::validation(format!(
            "One or more parameter values were invalid: MaxWriteRequestUnits must be -1 or at least 1, got {m}"
        )));
    }
    if let Some(w) = v
        .get("WarmThroughput")
        .and_then(|o| o.get("WriteUnitsPerSecond"))
        && w.as_i64().is_none_or(|w| w < 1)
    {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{w}' at 'warmThroughput.writeUnitsPerSecond' failed to satisfy constraint: Member must have value greater than or equal to 1"
        )));
    }
    for g in array_field(v, "GlobalSecondaryIndexes") {
        check_throughput_settings(g)?;
    }
    for u in array_field(v, "GlobalSecondaryIndexUpdates") {
        if let Some(update) = u.get("Update").or_else(|| u.get("Create")) {
            check_throughput_settings(update)?;
        }
    }
    Ok(())
}

/// OnDemandThroughput.MaxWriteRequestUnits, when set (-1 means none).
fn max_on_demand(v: &Value) -> Option<u64> {
    v.get("OnDemandThroughput")
        .and_then(|o| o.get("MaxWriteRequestUnits"))
        .and_then(Value::as_i64)
        .filter(|&m| m > 0)
        .map(|m| m as u64)
}

fn warm_wcu(v: &Value) -> u64 {
    v.get("WarmThroughput")
        .and_then(|w| w.get("WriteUnitsPerSecond"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_WARM_WCU)
}

/// ConsumedCapacity for ReturnConsumedCapacity TOTAL or INDEXES.
fn consumed(req: &Value, t: &Table, charges: &[Charge]) -> Option<Value> {
    let total: u64 = charges.iter().map(|c| c.units).sum();
    match req.get("ReturnConsumedCapacity").and_then(Value::as_str) {
        Some("TOTAL") => Some(json!({"TableName": t.name, "CapacityUnits": total as f64})),
        Some("INDEXES") => {
            let table: u64 = charges
                .iter()
                .filter(|c| c.on.is_none())
                .map(|c| c.units)
                .sum();
            let mut gsis = Map::new();
            for (i, g) in t.gsis.iter().enumerate() {
                let u: u64 = charges
                    .iter()
                    .filter(|c| c.on == Some(i))
                    .map(|c| c.units)
                    .sum();
                if u > 0 {
                    gsis.insert(g.name.clone(), json!({"CapacityUnits": u as f64}));
                }
            }
            let mut v = json!({
                "TableName": t.name,
                "CapacityUnits": total as f64,
                "Table": {"CapacityUnits": table as f64},
            });
            if !gsis.is_empty() {
                v["GlobalSecondaryIndexes"] = Value::Object(gsis);
            }
            Some(v)
        }
        _ => None,
    }
}

fn parse_item(v: Option<&Value>, what: &str) -> ApiResult<Map<String, Value>> {
    v.and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ApiError::validation(format!("{what} is required")))
}

/// A value of an enum member, checked as the API's request validation does.
fn enum_field<'a>(
    req: &'a Value,
    name: &str,
    field: &str,
    allowed: &[&str],
) -> ApiResult<Option<&'a str>> {
    match req.get(name).and_then(Value::as_str) {
        None => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v)),
        Some(v) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{v}' at '{field}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
            allowed.join(", ")
        ))),
    }
}

const BILLING_MODES: &[&str] = &["PROVISIONED", "PAY_PER_REQUEST"];
const TABLE_CLASSES: &[&str] = &["STANDARD", "STANDARD_INFREQUENT_ACCESS"];

/// A duration in milliseconds from a CreateTable tag.
fn tag_ms(req: &Value, key: &str) -> Option<Duration> {
    req.get("Tags")?
        .as_array()?
        .iter()
        .find(|t| t["Key"] == key)
        .and_then(|t| t["Value"].as_str())
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

fn checked_size(item: &Map<String, Value>) -> ApiResult<usize> {
    let size = item_size(item).map_err(ApiError::validation)?;
    if size > MAX_ITEM_BYTES {
        return Err(ApiError::validation(refusals::ITEM_TOO_LARGE));
    }
    Ok(size)
}

fn not_found(name: &str) -> ApiError {
    ApiError::resource_not_found(format!(
        "Requested resource not found: Table: {name} not found"
    ))
}

/// The items of an array member (none when it is absent or not an array).
fn array_field<'a>(v: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    v.get(name).and_then(Value::as_array).into_iter().flatten()
}

/// The HASH and RANGE attribute names of a KeySchema.
fn schema_keys(key_schema: &Value) -> (Option<String>, Option<String>) {
    let named = |kind: &str| {
        key_schema
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["KeyType"] == kind)
            .and_then(|k| k["AttributeName"].as_str())
            .map(String::from)
    };
    (named("HASH"), named("RANGE"))
}

/// The first of the key attributes that AttributeDefinitions does not define.
fn undefined_key<'a>(
    definitions: &Value,
    hash_key: &'a String,
    range_key: &'a Option<String>,
) -> Option<&'a String> {
    std::iter::once(hash_key)
        .chain(range_key.iter())
        .find(|attr| {
            !definitions
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["AttributeName"] == attr.as_str()))
        })
}

/// The table-wide parts of a CreateTable request, checked in DynamoDB's order before the
/// table list is looked at: name, key schema, definitions, billing mode, class, throughput.
struct NewTable {
    name: String,
    key_schema: Value,
    attribute_definitions: Value,
    hash_key: String,
    range_key: Option<String>,
    on_demand: bool,
    table_class: String,
    billing: Billing,
}

impl NewTable {
    fn parse(req: &Value) -> ApiResult<NewTable> {
        check_throughput_settings(req)?;
        let name = str_field(req, "TableName")?.to_string();
        if !(3..=255).contains(&name.len()) {
            return Err(ApiError::validation(
                "TableName must be 3 to 255 characters",
            ));
        }
        let key_schema = req.get("KeySchema").cloned().unwrap_or(Value::Null);
        let attribute_definitions = req
            .get("AttributeDefinitions")
            .cloned()
            .unwrap_or(Value::Null);
        let (hash_key, range_key) = schema_keys(&key_schema);
        let hash_key =
            hash_key.ok_or_else(|| ApiError::validation("KeySchema needs one HASH key"))?;
        if let Some(attr) = undefined_key(&attribute_definitions, &hash_key, &range_key) {
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: key attribute {attr} has no AttributeDefinition"
            )));
        }
        let on_demand = enum_field(req, "BillingMode", "billingMode", BILLING_MODES)?
            == Some("PAY_PER_REQUEST");
        let table_class = enum_field(req, "TableClass", "tableClass", TABLE_CLASSES)?
            .unwrap_or("STANDARD")
            .to_string();
        if on_demand && req.get("ProvisionedThroughput").is_some() {
            return Err(ApiError::validation(refusals::PAY_PER_REQUEST_THROUGHPUT));
        }
        let billing = parse_billing(on_demand, req.get("ProvisionedThroughput"), "the table")?;
        let spec = NewTable {
            name,
            key_schema,
            attribute_definitions,
            hash_key,
            range_key,
            on_demand,
            table_class,
            billing,
        };
        spec.check_definitions_used(req)?;
        Ok(spec)
    }

    /// The key attributes of the table and of its indexes, table keys first, each once.
    fn keys_used(&self, req: &Value) -> Vec<String> {
        let mut used: Vec<String> = vec![self.hash_key.clone()];
        used.extend(self.range_key.iter().cloned());
        for kind in ["GlobalSecondaryIndexes", "LocalSecondaryIndexes"] {
            for index in array_field(req, kind) {
                for k in array_field(index, "KeySchema") {
                    if let Some(a) = k["AttributeName"].as_str()
                        && !used.iter().any(|u| u == a)
                    {
                        used.push(a.to_string());
                    }
                }
            }
        }
        used
    }

    /// Every attribute definition must be a key of the table or of an index.
    fn check_definitions_used(&self, req: &Value) -> ApiResult<()> {
        let used = self.keys_used(req);
        let defined: Vec<String> = self
            .attribute_definitions
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["AttributeName"].as_str().map(String::from))
            .collect();
        if !defined.iter().any(|d| !used.contains(d)) {
            return Ok(());
        }
        let indexed = req.get("GlobalSecondaryIndexes").is_some()
            || req.get("LocalSecondaryIndexes").is_some();
        Err(ApiError::validation(if indexed {
            format!(
                "One or more parameter values were invalid: Some AttributeDefinitions are not used. AttributeDefinitions: [{}], keys used: [{}]",
                defined.join(", "),
                used.join(", ")
            )
        } else {
            refusals::UNUSED_DEFINITIONS.to_string()
        }))
    }

    /// The new table, CREATING for its `sluice-sim:creating-ms` tag when it has one.
    fn into_table(self, req: &Value, meter: Meter, gsis: Vec<Gsi>, now: Instant) -> Table {
        let creating = tag_ms(req, CREATING_MS_TAG).unwrap_or(DEFAULT_CREATING);
        Table {
            name: self.name,
            created: now_secs(),
            busy: (!creating.is_zero()).then(|| (Busy::Creating, now + creating)),
            updating_for: tag_ms(req, UPDATING_MS_TAG).unwrap_or(DEFAULT_UPDATING),
            deletion_protection: req
                .get("DeletionProtectionEnabled")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            table_class: self.table_class,
            key_schema: self.key_schema,
            attribute_definitions: self.attribute_definitions,
            hash_key: self.hash_key,
            range_key: self.range_key,
            meter,
            gsis,
            items: BTreeMap::new(),
            bytes: 0,
        }
    }
}

/// The UpdateTable members that change capacity (and make the table UPDATING).
const CAPACITY_FIELDS: &[&str] = &[
    "ProvisionedThroughput",
    "BillingMode",
    "OnDemandThroughput",
    "WarmThroughput",
    "GlobalSecondaryIndexUpdates",
];

fn index_not_found(name: &str) -> ApiError {
    ApiError::resource_not_found(format!(
        "Requested resource not found: Index: {name} not found"
    ))
}

/// An UpdateTable request checked against the table, before anything changes.
struct TableUpdate<'a> {
    class: Option<&'a str>,
    protection: Option<bool>,
    changes_capacity: bool,
    /// The billing mode the table ends with.
    on_demand: bool,
    billing: Billing,
}

impl<'a> TableUpdate<'a> {
    /// Refuses an update that changes nothing, throughput with on-demand billing, unchanged
    /// throughput, an unknown index, and a switch to provisioned without throughput.
    fn check(req: &'a Value, t: &Table) -> ApiResult<TableUpdate<'a>> {
        let mode = enum_field(req, "BillingMode", "billingMode", BILLING_MODES)?;
        let class = enum_field(req, "TableClass", "tableClass", TABLE_CLASSES)?;
        let protection = req
            .get("DeletionProtectionEnabled")
            .and_then(Value::as_bool);
        let changes_capacity = CAPACITY_FIELDS.iter().any(|f| req.get(*f).is_some());
        if !changes_capacity && class.is_none() && protection.is_none() {
            return Err(ApiError::validation(refusals::NOTHING_TO_UPDATE));
        }
        let on_demand = match mode {
            Some(m) => m == "PAY_PER_REQUEST",
            None => t.meter.billing == Billing::OnDemand,
        };
        if on_demand && req.get("ProvisionedThroughput").is_some() {
            // Also when BillingMode is left out on an on-demand table: a capacity update
            // never switches it to provisioned by itself.
            return Err(ApiError::validation(refusals::PAY_PER_REQUEST_THROUGHPUT));
        }
        check_throughput_changes(req, t)?;
        check_index_updates(req, t, on_demand)?;
        let billing = match (on_demand, req.get("ProvisionedThroughput")) {
            (true, _) => Billing::OnDemand,
            (false, Some(pt)) => parse_billing(false, Some(pt), "the table")?,
            (false, None) => match t.meter.billing {
                Billing::Provisioned { .. } => t.meter.billing,
                Billing::OnDemand => {
                    return Err(ApiError::validation(
                        "ProvisionedThroughput is required when switching to PROVISIONED",
                    ));
                }
            },
        };
        Ok(TableUpdate {
            class,
            protection,
            changes_capacity,
            on_demand,
            billing,
        })
    }

    /// Deletion protection and table class; UPDATING for a while when capacity or class
    /// changes.
    fn apply_settings(&self, t: &mut Table, now: Instant) {
        if let Some(p) = self.protection {
            t.deletion_protection = p;
        }
        if let Some(c) = self.class {
            t.table_class = c.to_string();
        }
        if self.changes_capacity || self.class.is_some() {
            t.busy = (!t.updating_for.is_zero()).then(|| (Busy::Updating, now + t.updating_for));
        }
    }
}

/// A provisioned table's ProvisionedThroughput that equals the current one is refused when it
/// is all the update changes.
fn check_throughput_changes(req: &Value, t: &Table) -> ApiResult<()> {
    let (Some(pt), Billing::Provisioned { rcu, wcu }) =
        (req.get("ProvisionedThroughput"), t.meter.billing)
    else {
        return Ok(());
    };
    let asked = parse_billing(false, Some(pt), "the table")?;
    let only_capacity = ![
        "OnDemandThroughput",
        "WarmThroughput",
        "GlobalSecondaryIndexUpdates",
    ]
    .iter()
    .any(|f| req.get(*f).is_some());
    if asked == t.meter.billing && only_capacity {
        return Err(ApiError::validation(format!(
            "The provisioned throughput for the table will not change. The requested value equals the current value. Current ReadCapacityUnits provisioned for the table: {rcu}. Requested ReadCapacityUnits: {rcu}. Current WriteCapacityUnits provisioned for the table: {wcu}. Requested WriteCapacityUnits: {wcu}. Refer to the Amazon DynamoDB Developer Guide for current limits and how to request higher limits."
        )));
    }
    Ok(())
}

/// Each Update in GlobalSecondaryIndexUpdates names an index of the table, and its throughput
/// (none when the table ends on-demand) is valid.
fn check_index_updates(req: &Value, t: &Table, on_demand: bool) -> ApiResult<()> {
    for u in array_field(req, "GlobalSecondaryIndexUpdates") {
        let name = u
            .get("Update")
            .and_then(|u| u.get("IndexName"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if u.get("Update").is_some() && !t.gsis.iter().any(|g| g.name == name) {
            return Err(index_not_found(name));
        }
        if let Some(pt) = u.get("Update").and_then(|u| u.get("ProvisionedThroughput")) {
            if on_demand {
                return Err(ApiError::validation(refusals::PAY_PER_REQUEST_THROUGHPUT));
            }
            parse_billing(false, Some(pt), name)?;
        }
    }
    Ok(())
}

/// A BatchWriteItem's RequestItems, refused whole when the request is over 16 MB or holds
/// no writes or more than 25.
fn batch_requests(req: &Value) -> ApiResult<&Map<String, Value>> {
    // The request as the SDK sent it (compact JSON, the same escapes) is at most 16 MB.
    if serde_json::to_string(req).map_or(0, |b| b.len()) > MAX_BATCH_WRITE_REQUEST_BYTES {
        return Err(ApiError::dynamodb(
            413,
            "RequestEntityTooLarge",
            refusals::REQUEST_TOO_LARGE,
        ));
    }
    let Some(requests) = req.get("RequestItems").and_then(Value::as_object) else {
        return Err(ApiError::validation("RequestItems is required"));
    };
    let total: usize = requests
        .values()
        .map(|v| v.as_array().map_or(0, Vec::len))
        .sum();
    if total == 0 || total > MAX_BATCH_WRITE {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: Member must have length less than or equal to {MAX_BATCH_WRITE} (got {total})"
        )));
    }
    Ok(requests)
}

/// One write of a BatchWriteItem, checked: a put (row key, item, size) or a delete (row key).
enum Write {
    Put(String, Map<String, Value>, usize),
    Delete(String),
}

/// A table's writes in a BatchWriteItem, each with the request as sent (handed back when
/// unprocessed).
type TableWrites = (String, Vec<(Write, Value)>);

/// Checks one table's writes before anything is written: the table is there and ACTIVE, each
/// write is valid, and no key is written twice.
fn plan_table_writes(
    tables: &HashMap<String, Table>,
    name: &str,
    writes: &Value,
) -> ApiResult<TableWrites> {
    let table = tables
        .get(name)
        .filter(|t| t.status(Instant::now()) != Some(Busy::Creating))
        .ok_or_else(|| not_found(name))?;
    let mut seen = HashSet::new();
    let mut list = Vec::new();
    for w in writes.as_array().into_iter().flatten() {
        let write = plan_write(table, w)?;
        let key = match &write {
            Write::Put(key, ..) | Write::Delete(key) => key.clone(),
        };
        if !seen.insert(key) {
            return Err(ApiError::validation(refusals::DUPLICATE_KEYS));
        }
        list.push((write, w.clone()));
    }
    Ok((name.to_string(), list))
}

/// One PutRequest or DeleteRequest, checked against its table.
fn plan_write(table: &Table, w: &Value) -> ApiResult<Write> {
    if let Some(put) = w.get("PutRequest") {
        let item = parse_item(put.get("Item"), "PutRequest.Item")?;
        let key = table.key_of(&item)?;
        let size = checked_size(&item)?;
        // Index key types are checked with the rest, before anything is written.
        table.put_charges(&key, &item, size)?;
        Ok(Write::Put(key, item, size))
    } else if let Some(del) = w.get("DeleteRequest") {
        let key_map = parse_item(del.get("Key"), "DeleteRequest.Key")?;
        Ok(Write::Delete(table.key_of_key(&key_map)?))
    } else {
        Err(ApiError::validation(
            "each write needs a PutRequest or a DeleteRequest",
        ))
    }
}

/// What a BatchWriteItem did so far: the writes handed back per table, the capacity consumed,
/// and the refusals (to undo their counts when the whole request is refused).
#[derive(Default)]
struct BatchOutcome {
    unprocessed: Map<String, Value>,
    consumed: Vec<Value>,
    done: usize,
    left: usize,
    first_refusal: Option<(String, Refusal)>,
    refused_on: Vec<(String, Option<usize>)>,
}

impl BatchOutcome {
    /// Writes what fits of one table's writes; the rest is kept as unprocessed.
    fn write_table(
        &mut self,
        req: &Value,
        name: String,
        table: &mut Table,
        list: Vec<(Write, Value)>,
    ) -> ApiResult<()> {
        let mut spent: Vec<Charge> = Vec::new();
        let mut rest = Vec::new();
        for (write, raw) in list {
            let charges = match &write {
                Write::Put(key, item, size) => table.put_charges(key, item, *size)?,
                Write::Delete(key) => table.delete_charges(key),
            };
            if let Err(r) = table.charge(&charges) {
                table.meter_mut(r.on).log.unprocessed_items += 1;
                self.refused_on.push((name.clone(), r.on));
                if self.first_refusal.is_none() {
                    self.first_refusal = Some((name.clone(), r));
                }
                rest.push(raw);
                continue;
            }
            spent.extend(charges);
            self.done += 1;
            match write {
                Write::Put(key, item, size) => table.put(key, item, size),
                Write::Delete(key) => table.remove(&key),
            }
        }
        if let Some(c) = consumed(req, table, &spent) {
            self.consumed.push(c);
        }
        if !rest.is_empty() {
            self.left += rest.len();
            self.unprocessed.insert(name, Value::Array(rest));
        }
        Ok(())
    }

    /// Nothing fit: the whole request is refused rather than handed back, with the first
    /// refusal's error.
    fn refuse_whole(self, tables: &mut HashMap<String, Table>) -> ApiError {
        // Counted as unprocessed above: a refused request counts as throttled instead.
        for (name, on) in self.refused_on {
            let table = tables.get_mut(&name).expect("exists");
            let log = &mut table.meter_mut(on).log;
            log.unprocessed_items = log.unprocessed_items.saturating_sub(1);
        }
        let (name, r) = self.first_refusal.expect("a refusal when nothing fit");
        let table = tables.get_mut(&name).expect("exists");
        table.throttle_error(r)
    }
}

impl DynamoDb {
    /// No tables yet; every table created will meter with `settings`.
    pub fn new(settings: TableSettings) -> Self {
        DynamoDb {
            tables: Mutex::new(HashMap::new()),
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Table>> {
        self.tables.locked()
    }

    fn with_table<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Table) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut tables = self.lock();
        let table = tables.get_mut(name).ok_or_else(|| not_found(name))?;
        f(table)
    }

    /// A table that takes reads and writes: DynamoDB answers ResourceNotFoundException for a
    /// table that is not yet ACTIVE (CREATING).
    fn with_active_table<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Table) -> ApiResult<T>,
    ) -> ApiResult<T> {
        self.with_table(name, |t| {
            if t.status(Instant::now()) == Some(Busy::Creating) {
                return Err(not_found(name));
            }
            f(t)
        })
    }

    /// Answers one DynamoDB operation (`op` is the X-Amz-Target's name, e.g. `BatchWriteItem`) with
    /// its response JSON, or the error DynamoDB would give. Supports the table operations (Create,
    /// Describe, Update, Delete, List) and PutItem, GetItem, DeleteItem, BatchWriteItem, Query and
    /// Scan; any other operation is refused.
    pub fn handle(&self, op: &str, req: &Value) -> ApiResult {
        match op {
            "CreateTable" => self.create_table(req),
            "DescribeTable" => self.with_table(str_field(req, "TableName")?, |t| {
                Ok(json!({"Table": t.description()}))
            }),
            "UpdateTable" => self.update_table(req),
            "DeleteTable" => {
                let name = str_field(req, "TableName")?;
                let mut tables = self.lock();
                let table = tables.get(name).ok_or_else(|| not_found(name))?;
                if table.deletion_protection {
                    return Err(ApiError::validation(refusals::DELETION_PROTECTED));
                }
                table.not_busy()?;
                let mut description = table.description();
                description["TableStatus"] = json!("DELETING");
                tables.remove(name);
                Ok(json!({"TableDescription": description}))
            }
            "ListTables" => {
                let mut names: Vec<String> = self.lock().keys().cloned().collect();
                names.sort();
                Ok(json!({"TableNames": names}))
            }
            "PutItem" => self.put_item(req),
            "GetItem" => self.get_item(req),
            "DeleteItem" => self.delete_item(req),
            "BatchWriteItem" => self.batch_write_item(req),
            "Query" => self.query(req),
            "Scan" => self.scan(req),
            _ => Err(ApiError::dynamodb(
                400,
                "UnknownOperationException",
                format!("{op} is not supported by sluice-sim"),
            )),
        }
    }

    fn create_table(&self, req: &Value) -> ApiResult {
        let spec = NewTable::parse(req)?;
        let mut tables = self.lock();
        if tables.contains_key(&spec.name) {
            return Err(ApiError::dynamodb(
                400,
                "ResourceInUseException",
                format!("Table already exists: {}", spec.name),
            ));
        }
        let now = Instant::now();
        let meter = self.new_meter(spec.billing, req, now);
        let gsis = array_field(req, "GlobalSecondaryIndexes")
            .map(|g| self.new_gsi(g, &spec, now))
            .collect::<ApiResult<Vec<Gsi>>>()?;
        let name = spec.name.clone();
        let table = spec.into_table(req, meter, gsis, now);
        let description = table.description();
        tables.insert(name, table);
        Ok(json!({"TableDescription": description}))
    }

    /// A meter for the table or an index described by `v` (its OnDemandThroughput and
    /// WarmThroughput), with the server's burst and on-demand ceiling.
    fn new_meter(&self, billing: Billing, v: &Value, now: Instant) -> Meter {
        Meter::new(
            billing,
            max_on_demand(v),
            warm_wcu(v),
            self.settings.burst_seconds,
            self.settings.on_demand_ceiling_wcu,
            now,
        )
    }

    /// One of CreateTable's GlobalSecondaryIndexes, checked: a name, a HASH key, key attributes
    /// that are defined, and throughput that agrees with the table's billing mode.
    fn new_gsi(&self, g: &Value, spec: &NewTable, now: Instant) -> ApiResult<Gsi> {
        let index_name = g
            .get("IndexName")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::validation("IndexName is required"))?
            .to_string();
        let key_schema = g.get("KeySchema").cloned().unwrap_or(Value::Null);
        let (hash_key, range_key) = schema_keys(&key_schema);
        let hash_key = hash_key.ok_or_else(|| {
            ApiError::validation(format!("index {index_name}: KeySchema needs one HASH key"))
        })?;
        if let Some(attr) = undefined_key(&spec.attribute_definitions, &hash_key, &range_key) {
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: Some index key attributes are not defined in AttributeDefinitions. Keys: [{attr}], AttributeDefinitions: []"
            )));
        }
        if spec.on_demand && g.get("ProvisionedThroughput").is_some() {
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: ProvisionedThroughput should not be specified for index: {index_name} when BillingMode is PAY_PER_REQUEST"
            )));
        }
        let billing = parse_billing(spec.on_demand, g.get("ProvisionedThroughput"), &index_name)?;
        Ok(Gsi {
            name: index_name,
            key_schema,
            hash_key,
            range_key,
            projection: Projection::parse(g.get("Projection")),
            meter: self.new_meter(billing, g, now),
        })
    }

    fn update_table(&self, req: &Value) -> ApiResult {
        check_throughput_settings(req)?;
        self.with_table(str_field(req, "TableName")?, |t| {
            let now = Instant::now();
            t.not_busy()?;
            let update = TableUpdate::check(req, t)?;
            update.apply_settings(t, now);
            if update.changes_capacity {
                self.reconfigure(t, req, &update, now)?;
            }
            Ok(json!({"TableDescription": t.description()}))
        })
    }

    /// Applies an UpdateTable's capacity changes: the table's billing, on-demand maximum and
    /// warm throughput, then each index's; switching to on-demand switches every index.
    fn reconfigure(
        &self,
        t: &mut Table,
        req: &Value,
        update: &TableUpdate,
        now: Instant,
    ) -> ApiResult<()> {
        let (burst, ceiling) = (
            self.settings.burst_seconds,
            self.settings.on_demand_ceiling_wcu,
        );
        let max = if req.get("OnDemandThroughput").is_some() {
            max_on_demand(req)
        } else {
            t.meter.max_on_demand
        };
        t.meter
            .reconfigure(update.billing, max, burst, ceiling, now);
        if let Some(w) = req
            .get("WarmThroughput")
            .and_then(|w| w.get("WriteUnitsPerSecond"))
            .and_then(Value::as_u64)
        {
            t.meter.warm_wcu = w;
        }
        for u in array_field(req, "GlobalSecondaryIndexUpdates") {
            self.reconfigure_index(t, u, update.on_demand, now)?;
        }
        if update.on_demand {
            for g in &mut t.gsis {
                let max = g.meter.max_on_demand;
                g.meter
                    .reconfigure(Billing::OnDemand, max, burst, ceiling, now);
            }
        }
        Ok(())
    }

    /// One entry of GlobalSecondaryIndexUpdates applied (sluice-sim takes only Update).
    fn reconfigure_index(
        &self,
        t: &mut Table,
        u: &Value,
        on_demand: bool,
        now: Instant,
    ) -> ApiResult<()> {
        let Some(update) = u.get("Update") else {
            return Err(ApiError::validation(
                "sluice-sim supports only Update in GlobalSecondaryIndexUpdates",
            ));
        };
        let index_name = update
            .get("IndexName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(g) = t.gsis.iter_mut().find(|g| g.name == index_name) else {
            return Err(index_not_found(index_name));
        };
        let billing = match (on_demand, update.get("ProvisionedThroughput")) {
            (true, _) => Billing::OnDemand,
            (false, Some(pt)) => parse_billing(false, Some(pt), index_name)?,
            (false, None) => g.meter.billing,
        };
        let max = if update.get("OnDemandThroughput").is_some() {
            max_on_demand(update)
        } else {
            g.meter.max_on_demand
        };
        let (burst, ceiling) = (
            self.settings.burst_seconds,
            self.settings.on_demand_ceiling_wcu,
        );
        g.meter.reconfigure(billing, max, burst, ceiling, now);
        Ok(())
    }

    fn put_item(&self, req: &Value) -> ApiResult {
        if req.get("ConditionExpression").is_some() || req.get("Expected").is_some() {
            // Refused rather than ignored: a condition the sim did not evaluate would pass
            // silently where AWS could refuse the write.
            return Err(ApiError::validation(
                "sluice-sim does not evaluate conditions on PutItem (ConditionExpression, Expected)",
            ));
        }
        let item = parse_item(req.get("Item"), "Item")?;
        self.with_active_table(str_field(req, "TableName")?, |t| {
            let key = t.key_of(&item)?;
            let size = checked_size(&item)?;
            let charges = t.put_charges(&key, &item, size)?;
            if let Err(r) = t.charge(&charges) {
                return Err(t.throttle_error(r));
            }
            let mut out = json!({});
            if let Some(c) = consumed(req, t, &charges) {
                out["ConsumedCapacity"] = c;
            }
            t.put(key, item, size);
            Ok(out)
        })
    }

    fn delete_item(&self, req: &Value) -> ApiResult {
        let key_map = parse_item(req.get("Key"), "Key")?;
        self.with_active_table(str_field(req, "TableName")?, |t| {
            let key = t.key_of_key(&key_map)?;
            let charges = t.delete_charges(&key);
            if let Err(r) = t.charge(&charges) {
                return Err(t.throttle_error(r));
            }
            let mut out = json!({});
            if let Some(c) = consumed(req, t, &charges) {
                out["ConsumedCapacity"] = c;
            }
            t.remove(&key);
            Ok(out)
        })
    }

    fn get_item(&self, req: &Value) -> ApiResult {
        let key_map = parse_item(req.get("Key"), "Key")?;
        self.with_active_table(str_field(req, "TableName")?, |t| {
            let key = t.key_of_key(&key_map)?;
            Ok(match t.items.get(&key) {
                Some(item) => json!({"Item": item}),
                None => json!({}),
            })
        })
    }

    fn batch_write_item(&self, req: &Value) -> ApiResult {
        let requests = batch_requests(req)?;
        let mut tables = self.lock();
        // Validate the whole request before writing anything, as DynamoDB does.
        let plan = requests
            .iter()
            .map(|(name, writes)| plan_table_writes(&tables, name, writes))
            .collect::<ApiResult<Vec<_>>>()?;
        let mut outcome = BatchOutcome::default();
        for (name, list) in plan {
            let table = tables.get_mut(&name).expect("checked above");
            outcome.write_table(req, name, table, list)?;
        }
        if outcome.done == 0 && outcome.left > 0 {
            return Err(outcome.refuse_whole(&mut tables));
        }
        let mut out = json!({"UnprocessedItems": outcome.unprocessed});
        if !outcome.consumed.is_empty() {
            out["ConsumedCapacity"] = Value::Array(outcome.consumed);
        }
        Ok(out)
    }

    fn query(&self, req: &Value) -> ApiResult {
        check_limit(req)?;
        let expr = str_field(req, "KeyConditionExpression")?;
        let names = req
            .get("ExpressionAttributeNames")
            .and_then(Value::as_object);
        let values = req
            .get("ExpressionAttributeValues")
            .and_then(Value::as_object);
        let (lhs, rhs) = expr.split_once('=').ok_or_else(|| {
            ApiError::validation("sluice-sim supports KeyConditionExpression `key = :value` only")
        })?;
        let (lhs, rhs) = (lhs.trim(), rhs.trim());
        let attr = if lhs.starts_with('#') {
            names
                .and_then(|n| n.get(lhs))
                .and_then(Value::as_str)
                .unwrap_or(lhs)
                .to_string()
        } else {
            lhs.to_string()
        };
        let value = values.and_then(|v| v.get(rhs)).cloned().ok_or_else(|| {
            ApiError::validation(format!("missing ExpressionAttributeValues {rhs}"))
        })?;
        let index = req.get("IndexName").and_then(Value::as_str);
        self.with_active_table(str_field(req, "TableName")?, |t| {
            if let Some(index) = index {
                return query_index(req, t, index, &attr, &value);
            }
            if attr != t.hash_key {
                return Err(ApiError::validation(format!(
                    "Query condition missed key schema element: {}",
                    t.hash_key
                )));
            }
            let mut matches: Vec<&Map<String, Value>> = t
                .items
                .values()
                .filter(|i| i.get(&attr) == Some(&value))
                .collect();
            // A partition's items come in sort-key order (N numerically), reversed when
            // ScanIndexForward is false, and a page starts after ExclusiveStartKey.
            let forward = req
                .get("ScanIndexForward")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let order = |a: &Map<String, Value>, b: &Map<String, Value>| match &t.range_key {
                Some(range) => {
                    let o = compare_key(t.key_type(range), a.get(range), b.get(range));
                    if forward { o } else { o.reverse() }
                }
                None => Ordering::Equal,
            };
            matches.sort_by(|a, b| order(a, b));
            if let Some(start) = req.get("ExclusiveStartKey").and_then(Value::as_object) {
                t.key_of(start)?;
                matches.retain(|i| t.range_key.is_some() && order(i, start) == Ordering::Greater);
            }
            Ok(page(
                req,
                t,
                matches
                    .into_iter()
                    .map(|i| (t.key_of(i).unwrap_or_default(), i)),
            ))
        })
    }

    fn scan(&self, req: &Value) -> ApiResult {
        check_limit(req)?;
        self.with_active_table(str_field(req, "TableName")?, |t| {
            let start = match req.get("ExclusiveStartKey").and_then(Value::as_object) {
                Some(k) => Bound::Excluded(t.key_of(k)?),
                None => Bound::Unbounded,
            };
            let iter = t
                .items
                .range::<String, _>((start, Bound::Unbounded))
                .map(|(k, v)| (k.clone(), v));
            Ok(page(req, t, iter))
        })
    }

    /// Per-table capacity facts for the admin endpoint.
    pub fn capacity_report(&self, name: &str) -> ApiResult {
        self.with_table(name, |t| {
            let now = Instant::now();
            let mut report = t.meter.report(now);
            report["table"] = json!(t.name);
            report["items"] = json!(t.items.len());
            // Requests and items refused by any meter of the table (an index refusing a base
            // write throttles the table's writes).
            let mut indexes = Map::new();
            let (mut throttled, mut unprocessed) = (
                t.meter.log.throttled_requests,
                t.meter.log.unprocessed_items,
            );
            for g in &mut t.gsis {
                throttled += g.meter.log.throttled_requests;
                unprocessed += g.meter.log.unprocessed_items;
                indexes.insert(g.name.clone(), g.meter.report(now));
            }
            report["throttled_requests"] = json!(throttled);
            report["unprocessed_items"] = json!(unprocessed);
            report["indexes"] = Value::Object(indexes);
            Ok(report)
        })
    }
}

/// Scan's and Query's Limit: at least 1 when given.
fn check_limit(req: &Value) -> ApiResult<()> {
    match req.get("Limit") {
        Some(l) if l.as_i64().is_none_or(|l| l < 1) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{l}' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
        ))),
        _ => Ok(()),
    }
}

/// One page of Scan or Query results: Limit, 1 MB pages, Select=COUNT, ProjectionExpression.
/// A Query on a global secondary index: the items whose index partition key equals `value` (and
/// that carry the index's sort key, if it has one), sorted by it, projected as the index
/// projects. One page only: sluice-sim refuses ExclusiveStartKey on an index.
fn query_index(req: &Value, t: &Table, index: &str, attr: &str, value: &Value) -> ApiResult {
    let gsi = t.gsis.iter().find(|g| g.name == index).ok_or_else(|| {
        ApiError::validation(format!(
            "The table does not have the specified index: {index}"
        ))
    })?;
    if attr != gsi.hash_key {
        return Err(ApiError::validation(format!(
            "Query condition missed key schema element: {}",
            gsi.hash_key
        )));
    }
    if req.get("ExclusiveStartKey").is_some() {
        return Err(ApiError::validation(
            "sluice-sim does not page Query on an index (ExclusiveStartKey with IndexName)",
        ));
    }
    let mut matches: Vec<&Map<String, Value>> = t
        .items
        .values()
        .filter(|i| i.get(attr) == Some(value))
        .filter(|i| gsi.range_key.as_ref().is_none_or(|r| i.contains_key(r)))
        .collect();
    if let Some(range) = &gsi.range_key {
        let ty = t.key_type(range);
        matches.sort_by(|a, b| compare_key(ty, a.get(range), b.get(range)));
    }
    let keep = |name: &str| {
        t.table_keys().contains(&name)
            || name == gsi.hash_key
            || gsi.range_key.as_deref() == Some(name)
            || match &gsi.projection {
                crate::meter::Projection::All => true,
                crate::meter::Projection::KeysOnly => false,
                crate::meter::Projection::Include(names) => names.iter().any(|n| n == name),
            }
    };
    let projected: Vec<Map<String, Value>> = matches
        .into_iter()
        .map(|i| {
            i.iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect();
    Ok(page(
        req,
        t,
        projected
            .iter()
            .map(|i| (t.key_of(i).unwrap_or_default(), i)),
    ))
}

fn page<'a>(
    req: &Value,
    t: &Table,
    items: impl Iterator<Item = (String, &'a Map<String, Value>)>,
) -> Value {
    let limit = req.get("Limit").and_then(Value::as_u64).map(|l| l as usize);
    let count_only = req.get("Select").and_then(Value::as_str) == Some("COUNT");
    let projection: Option<Vec<String>> = req
        .get("ProjectionExpression")
        .and_then(Value::as_str)
        .map(|p| {
            let names = req
                .get("ExpressionAttributeNames")
                .and_then(Value::as_object);
            p.split(',')
                .map(|s| {
                    let s = s.trim();
                    names
                        .and_then(|n| n.get(s))
                        .and_then(Value::as_str)
                        .unwrap_or(s)
                        .to_string()
                })
                .collect()
        });
    let mut out = Vec::new();
    let (mut count, mut bytes) = (0usize, 0usize);
    let mut last = None;
    for (_, item) in items {
        if limit.is_some_and(|l| count >= l) || bytes >= PAGE_BYTES {
            break;
        }
        count += 1;
        bytes += item_size(item).unwrap_or(0);
        last = Some(t.key_map(item));
        if !count_only {
            out.push(match &projection {
                Some(attrs) => Value::Object(
                    attrs
                        .iter()
                        .filter_map(|a| item.get(a).map(|v| (a.clone(), v.clone())))
                        .collect(),
                ),
                None => Value::Object(item.clone()),
            });
        }
    }
    let more = limit.is_some_and(|l| count >= l) || bytes >= PAGE_BYTES;
    let mut res = json!({"Count": count, "ScannedCount": count});
    if !count_only {
        res["Items"] = Value::Array(out);
    }
    if more && let Some(k) = last {
        res["LastEvaluatedKey"] = k;
    }
    res
}
