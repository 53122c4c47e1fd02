//! The DynamoDB half: tables with a partition key (and optional sort key), items as the wire's
//! AttributeValue JSON, and write capacity enforced per table (see [`crate::capacity`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::capacity::{CapacityLog, WriteCapacity};
use crate::error::{ApiError, ApiResult};

pub const MAX_ITEM_BYTES: usize = 400 * 1024;
const MAX_BATCH_WRITE: usize = 25;
const PAGE_BYTES: usize = 1024 * 1024;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Billing {
    Provisioned { rcu: u64, wcu: u64 },
    OnDemand,
}

struct Table {
    name: String,
    created: f64,
    key_schema: Value,
    attribute_definitions: Value,
    hash_key: String,
    range_key: Option<String>,
    billing: Billing,
    capacity: WriteCapacity,
    log: CapacityLog,
    items: BTreeMap<String, Map<String, Value>>,
    bytes: usize,
}

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
    pub const NOT_A_NUMBER: &str = "A value provided cannot be converted into a number";
    pub const PRECISION: &str = "DynamoDB only supports precision up to 38 digits";
    pub const OVERFLOW: &str =
        "Number overflow. Attempting to store a number with magnitude larger than supported range";
    pub const UNDERFLOW: &str = "Number underflow. Attempting to store a number with magnitude smaller than supported range";
    pub const NESTING: &str = "Nesting Levels have exceeded supported limits: Attributes in the item have nested levels beyond supported limit";
    pub const KEY_TOO_LONG: &str = "Hash primary key values must be under 2048 bytes, and range primary key values must be under 1024 bytes";
    pub const NAME_TOO_LONG: &str = "Attribute name is too large, must be less than 65536 bytes";
    pub const EMPTY_NAME: &str = "Empty attribute name";
    pub const ITEM_TOO_LARGE: &str = "Item size has exceeded the maximum allowed size";
    pub const DUPLICATE_KEYS: &str = "Provided list of item keys contains duplicates";
    pub const KEY_MISSING: &str = "One of the required keys was not given a value";
    pub const KEY_TYPE: &str = "One or more parameter values were invalid: Type mismatch for key";
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
    let bad = || refusals::NOT_A_NUMBER.to_string();
    let (negative, unsigned) = match n.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, n.strip_prefix('+').unwrap_or(n)),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => {
            let e = &unsigned[i + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9
            {
                return Err(bad());
            }
            (&unsigned[..i], e.parse::<i64>().map_err(|_| bad())?)
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
        return Ok(1);
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
    Ok(pairs + 1 + usize::from(negative))
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
        ("SS", v) => list(v)?
            .iter()
            .map(|s| s.as_str().map_or(0, str::len))
            .sum(),
        ("NS", v) => {
            let mut size = 0;
            for n in list(v)? {
                size += number_bytes(
                    n.as_str()
                        .ok_or_else(|| refusals::NOT_A_NUMBER.to_string())?,
                )?;
            }
            size
        }
        ("BS", v) => list(v)?
            .iter()
            .map(|s| s.as_str().map_or(0, binary_bytes))
            .sum(),
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
                return Err(ApiError::validation(format!(
                    "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty string value. Key: {attr}"
                )));
            }
            let limit = if i == 0 {
                MAX_HASH_KEY_BYTES
            } else {
                MAX_RANGE_KEY_BYTES
            };
            if v.len() > limit {
                return Err(ApiError::validation(refusals::KEY_TOO_LONG));
            }
            if !key.is_empty() {
                key.push('\u{0}');
            }
            key.push_str(v);
        }
        Ok(key)
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

    fn description(&self) -> Value {
        let (rcu, wcu, mode) = match self.billing {
            Billing::Provisioned { rcu, wcu } => (rcu, wcu, "PROVISIONED"),
            Billing::OnDemand => (0, 0, "PAY_PER_REQUEST"),
        };
        json!({
            "TableName": self.name,
            "TableStatus": "ACTIVE",
            "TableArn": format!("arn:aws:dynamodb:us-east-1:000000000000:table/{}", self.name),
            "TableId": format!("sim-{}", self.name),
            "CreationDateTime": self.created,
            "KeySchema": self.key_schema,
            "AttributeDefinitions": self.attribute_definitions,
            "ProvisionedThroughput": {
                "ReadCapacityUnits": rcu,
                "WriteCapacityUnits": wcu,
                "NumberOfDecreasesToday": 0
            },
            "BillingModeSummary": {"BillingMode": mode},
            "ItemCount": self.items.len(),
            "TableSizeBytes": self.bytes,
        })
    }

    /// Spends capacity for a write of `units`; false means refused.
    fn charge(&mut self, units: u64) -> bool {
        if self.capacity.try_consume(Instant::now(), units) {
            self.log.record(units as f64);
            true
        } else {
            false
        }
    }

    fn throttle_error(&mut self) -> ApiError {
        self.log.throttled_requests += 1;
        match self.billing {
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
        }
    }

    /// What a put costs: DynamoDB charges the larger of the new item and the one it replaces.
    fn put_cost(&self, key: &str, size: usize) -> u64 {
        let old = self
            .items
            .get(key)
            .and_then(|i| item_size(i).ok())
            .unwrap_or(0);
        wcu(size.max(old))
    }

    fn put(&mut self, key: String, item: Map<String, Value>, size: usize) {
        if let Some(old) = self.items.insert(key, item) {
            self.bytes -= item_size(&old).unwrap_or(0);
        }
        self.bytes += size;
    }
}

fn consumed(req: &Value, table: &str, units: f64) -> Option<Value> {
    match req.get("ReturnConsumedCapacity").and_then(Value::as_str) {
        Some("TOTAL") | Some("INDEXES") => {
            Some(json!({"TableName": table, "CapacityUnits": units}))
        }
        _ => None,
    }
}

fn parse_item(v: Option<&Value>, what: &str) -> ApiResult<Map<String, Value>> {
    v.and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ApiError::validation(format!("{what} is required")))
}

fn checked_size(item: &Map<String, Value>) -> ApiResult<usize> {
    let size = item_size(item).map_err(ApiError::validation)?;
    if size > MAX_ITEM_BYTES {
        return Err(ApiError::validation(refusals::ITEM_TOO_LARGE));
    }
    Ok(size)
}

impl DynamoDb {
    pub fn new(settings: TableSettings) -> Self {
        DynamoDb {
            tables: Mutex::new(HashMap::new()),
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Table>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_table<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Table) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut tables = self.lock();
        let table = tables.get_mut(name).ok_or_else(|| {
            ApiError::resource_not_found(format!(
                "Requested resource not found: Table: {name} not found"
            ))
        })?;
        f(table)
    }

    pub fn handle(&self, op: &str, req: &Value) -> ApiResult {
        match op {
            "CreateTable" => self.create_table(req),
            "DescribeTable" => self.with_table(str_field(req, "TableName")?, |t| {
                Ok(json!({"Table": t.description()}))
            }),
            "UpdateTable" => self.update_table(req),
            "DeleteTable" => {
                let name = str_field(req, "TableName")?;
                let table = self.lock().remove(name).ok_or_else(|| {
                    ApiError::resource_not_found(format!(
                        "Requested resource not found: Table: {name} not found"
                    ))
                })?;
                Ok(json!({"TableDescription": table.description()}))
            }
            "ListTables" => {
                let mut names: Vec<String> = self.lock().keys().cloned().collect();
                names.sort();
                Ok(json!({"TableNames": names}))
            }
            "PutItem" => self.put_item(req),
            "GetItem" => self.get_item(req),
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
        let keys = key_schema.as_array().cloned().unwrap_or_default();
        let key_named = |kind: &str| {
            keys.iter()
                .find(|k| k["KeyType"] == kind)
                .and_then(|k| k["AttributeName"].as_str())
                .map(String::from)
        };
        let hash_key = key_named("HASH")
            .ok_or_else(|| ApiError::validation("KeySchema needs one HASH key"))?;
        let range_key = key_named("RANGE");
        for attr in std::iter::once(&hash_key).chain(range_key.iter()) {
            let defined = attribute_definitions
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["AttributeName"] == attr.as_str()));
            if !defined {
                return Err(ApiError::validation(format!(
                    "One or more parameter values were invalid: key attribute {attr} has no AttributeDefinition"
                )));
            }
        }
        let billing = match req.get("BillingMode").and_then(Value::as_str) {
            Some("PAY_PER_REQUEST") => Billing::OnDemand,
            _ => {
                let pt = req.get("ProvisionedThroughput").ok_or_else(|| {
                    ApiError::validation("No provisioned throughput specified for the table")
                })?;
                let rcu = pt["ReadCapacityUnits"].as_u64().unwrap_or(0);
                let wcu = pt["WriteCapacityUnits"].as_u64().unwrap_or(0);
                if rcu == 0 || wcu == 0 {
                    return Err(ApiError::validation(
                        "ProvisionedThroughput units must be at least 1",
                    ));
                }
                Billing::Provisioned { rcu, wcu }
            }
        };
        let mut tables = self.lock();
        if tables.contains_key(&name) {
            return Err(ApiError::dynamodb(
                400,
                "ResourceInUseException",
                format!("Table already exists: {name}"),
            ));
        }
        let now = Instant::now();
        let capacity = match billing {
            Billing::Provisioned { wcu, .. } => {
                WriteCapacity::new(wcu, self.settings.burst_seconds, now)
            }
            Billing::OnDemand => WriteCapacity::new(self.settings.on_demand_ceiling_wcu, 1.0, now),
        };
        let table = Table {
            name: name.clone(),
            created: now_secs(),
            key_schema,
            attribute_definitions,
            hash_key,
            range_key,
            billing,
            capacity,
            log: CapacityLog::default(),
            items: BTreeMap::new(),
            bytes: 0,
        };
        let description = table.description();
        tables.insert(name, table);
        Ok(json!({"TableDescription": description}))
    }

    fn update_table(&self, req: &Value) -> ApiResult {
        let ceiling = self.settings.on_demand_ceiling_wcu;
        let burst = self.settings.burst_seconds;
        self.with_table(str_field(req, "TableName")?, |t| {
            let now = Instant::now();
            match req.get("BillingMode").and_then(Value::as_str) {
                Some("PAY_PER_REQUEST") => {
                    t.billing = Billing::OnDemand;
                    t.capacity = WriteCapacity::new(ceiling, 1.0, now);
                }
                Some("PROVISIONED") | None => {
                    if let Some(pt) = req.get("ProvisionedThroughput") {
                        let rcu = pt["ReadCapacityUnits"].as_u64().unwrap_or(1).max(1);
                        let wcu = pt["WriteCapacityUnits"].as_u64().unwrap_or(1).max(1);
                        if matches!(t.billing, Billing::OnDemand) {
                            t.capacity = WriteCapacity::new(wcu, burst, now);
                        } else {
                            t.capacity.set_rate(wcu, now);
                        }
                        t.billing = Billing::Provisioned { rcu, wcu };
                    }
                }
                Some(other) => {
                    return Err(ApiError::validation(format!("unknown BillingMode {other}")));
                }
            }
            Ok(json!({"TableDescription": t.description()}))
        })
    }

    fn put_item(&self, req: &Value) -> ApiResult {
        let item = parse_item(req.get("Item"), "Item")?;
        self.with_table(str_field(req, "TableName")?, |t| {
            let key = t.key_of(&item)?;
            let size = checked_size(&item)?;
            let units = t.put_cost(&key, size);
            if !t.charge(units) {
                return Err(t.throttle_error());
            }
            t.put(key, item, size);
            let mut out = json!({});
            if let Some(c) = consumed(req, &t.name, units as f64) {
                out["ConsumedCapacity"] = c;
            }
            Ok(out)
        })
    }

    fn get_item(&self, req: &Value) -> ApiResult {
        let key_map = parse_item(req.get("Key"), "Key")?;
        self.with_table(str_field(req, "TableName")?, |t| {
            let key = t.key_of(&key_map)?;
            Ok(match t.items.get(&key) {
                Some(item) => json!({"Item": item}),
                None => json!({}),
            })
        })
    }

    fn batch_write_item(&self, req: &Value) -> ApiResult {
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
        let mut tables = self.lock();
        // Validate the whole request before writing anything, as DynamoDB does.
        enum Write {
            Put(String, Map<String, Value>, usize),
            Delete(String),
        }
        let mut plan: Vec<(String, Vec<(Write, Value)>)> = Vec::new();
        for (name, writes) in requests {
            let table = tables.get(name).ok_or_else(|| {
                ApiError::resource_not_found(format!(
                    "Requested resource not found: Table: {name} not found"
                ))
            })?;
            let mut seen = HashSet::new();
            let mut list = Vec::new();
            for w in writes.as_array().into_iter().flatten() {
                let (write, key) = if let Some(put) = w.get("PutRequest") {
                    let item = parse_item(put.get("Item"), "PutRequest.Item")?;
                    let key = table.key_of(&item)?;
                    let size = checked_size(&item)?;
                    (Write::Put(key.clone(), item, size), key)
                } else if let Some(del) = w.get("DeleteRequest") {
                    let key_map = parse_item(del.get("Key"), "DeleteRequest.Key")?;
                    let key = table.key_of(&key_map)?;
                    (Write::Delete(key.clone()), key)
                } else {
                    return Err(ApiError::validation(
                        "each write needs a PutRequest or a DeleteRequest",
                    ));
                };
                if !seen.insert(key) {
                    return Err(ApiError::validation(refusals::DUPLICATE_KEYS));
                }
                list.push((write, w.clone()));
            }
            plan.push((name.clone(), list));
        }

        let mut unprocessed = Map::new();
        let mut consumed_list = Vec::new();
        let (mut done, mut left) = (0usize, 0usize);
        for (name, list) in plan {
            let table = tables.get_mut(&name).expect("checked above");
            let mut units_spent = 0u64;
            let mut rest = Vec::new();
            for (write, raw) in list {
                let units = match &write {
                    Write::Put(key, _, size) => table.put_cost(key, *size),
                    Write::Delete(key) => wcu(table
                        .items
                        .get(key)
                        .and_then(|i| item_size(i).ok())
                        .unwrap_or(0)),
                };
                if !table.charge(units) {
                    rest.push(raw);
                    continue;
                }
                units_spent += units;
                done += 1;
                match write {
                    Write::Put(key, item, size) => table.put(key, item, size),
                    Write::Delete(key) => {
                        if let Some(old) = table.items.remove(&key) {
                            table.bytes -= item_size(&old).unwrap_or(0);
                        }
                    }
                }
            }
            if let Some(c) = consumed(req, &name, units_spent as f64) {
                consumed_list.push(c);
            }
            if !rest.is_empty() {
                left += rest.len();
                table.log.unprocessed_items += rest.len() as u64;
                unprocessed.insert(name, Value::Array(rest));
            }
        }
        if done == 0 && left > 0 {
            // Nothing fit: the whole request is refused rather than handed back.
            let name = unprocessed.keys().next().cloned().unwrap_or_default();
            let table = tables.get_mut(&name).expect("exists");
            table.log.unprocessed_items -= left as u64;
            return Err(table.throttle_error());
        }
        let mut out = json!({"UnprocessedItems": unprocessed});
        if !consumed_list.is_empty() {
            out["ConsumedCapacity"] = Value::Array(consumed_list);
        }
        Ok(out)
    }

    fn query(&self, req: &Value) -> ApiResult {
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
        self.with_table(str_field(req, "TableName")?, |t| {
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
        self.with_table(str_field(req, "TableName")?, |t| {
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
            let available = t.capacity.available(Instant::now());
            let (mode, provisioned) = match t.billing {
                Billing::Provisioned { wcu, .. } => ("PROVISIONED", Some(wcu)),
                Billing::OnDemand => ("PAY_PER_REQUEST", None),
            };
            let per_second: Vec<Value> = t
                .log
                .per_second
                .iter()
                .map(|(s, u)| json!([s, u]))
                .collect();
            Ok(json!({
                "table": t.name,
                "billing_mode": mode,
                "provisioned_wcu": provisioned,
                "rate_wcu": t.capacity.rate(),
                "available_wcu": available,
                "consumed_wcu_total": t.log.consumed_total,
                "peak_wcu_per_s": t.log.peak(),
                "throttled_requests": t.log.throttled_requests,
                "unprocessed_items": t.log.unprocessed_items,
                "items": t.items.len(),
                "per_second": per_second,
            }))
        })
    }
}

/// One page of Scan or Query results: Limit, 1 MB pages, Select=COUNT, ProjectionExpression.
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
