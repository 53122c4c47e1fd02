//! DynamoDB for sluice: [`DynamoDbWriter`] makes one BatchWriteItem call per batch for the
//! core's writer, which owns batching, retries and pacing. The client given here must have the
//! SDK's retries disabled ([`writer_client`]): two retry owners would multiply attempts and hide
//! throttles from the rate controller.
#![warn(missing_docs)]

pub mod stored;

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, KeyType, PutRequest, ReturnConsumedCapacity, ScalarAttributeType, WriteRequest,
};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use sluice_core::{
    AttrValue, BatchResult, BatchWriter, Consumed, IndexSpec, Item, Projection, ThrottleCause,
    WriteError, WriteErrorKind,
};

/// A DynamoDB client for the write path: same settings as `sdk_config`, SDK retries off, and a
/// backstop deadline on every call (the writer cuts BatchWriteItem sooner, at
/// `dynamodb.request_timeout`; DescribeTable has this one).
pub fn writer_client(sdk_config: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk_config)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .operation_timeout(CALL_DEADLINE)
                .build(),
        )
        .build();
    Client::from_conf(config)
}

/// A start-up check (DescribeTable) that failed, and whether waiting can mend it: a missing
/// table, a wrong key schema or a refused permission cannot; a throttle, a 5xx or a timeout can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CheckError {
    /// What failed and why, with the SDK's cause chain; fit to show an operator as is.
    pub message: String,
    /// True when retrying cannot help (missing table, wrong key schema, access denied, any other
    /// non-throttle 4xx); false for throttles, 5xx, time-outs and connection failures.
    pub permanent: bool,
}

impl CheckError {
    fn permanent(message: String) -> Self {
        CheckError {
            message,
            permanent: true,
        }
    }

    /// A failed call, sorted: the codes that say the request itself is wrong are permanent
    /// (a missing table, access denied, bad credentials, validation), and so is any other 4xx
    /// that is not a throttle; throttles, 5xx, time-outs and connection failures are not.
    pub fn of<E: ProvideErrorMetadata + std::error::Error + 'static>(
        context: &str,
        e: &SdkError<E, HttpResponse>,
    ) -> Self {
        let permanent = match e {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                classify(e) != WriteErrorKind::Throttled
                    && (400..500).contains(&status)
                    && status != 408
            }
            SdkError::ConstructionFailure(_) => true,
            _ => false,
        };
        CheckError {
            message: format!("{context}: {}", DisplayErrorContext(e)),
            permanent,
        }
    }
}

/// The longest any DynamoDB call of the write path may take.
pub const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The core's [`BatchWriter`] for one table: each batch is one BatchWriteItem call asking for
/// consumed capacity per index, with no retry of its own. It reports which items came back
/// unprocessed, and fails the whole batch (as transient) rather than report an unprocessed item it
/// cannot match as written.
pub struct DynamoDbWriter {
    client: Client,
    table: String,
    key_attribute: String,
}

impl DynamoDbWriter {
    /// A writer of `table`, whose partition key (type S) is named `key_attribute`. `client` should
    /// come from [`writer_client`] (SDK retries off). Makes no call;
    /// [`DynamoDbWriter::check_table`] checks the table.
    pub fn new(client: Client, table: impl Into<String>, key_attribute: impl Into<String>) -> Self {
        DynamoDbWriter {
            client,
            table: table.into(),
            key_attribute: key_attribute.into(),
        }
    }

    /// Checks the table exists and is keyed the way sluice writes it: a string partition key
    /// named `key_attribute` and no sort key. Returns a message saying what to fix.
    pub async fn check_table(&self) -> Result<(), CheckError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| {
                CheckError::of(
                    &format!("cannot describe table `{}` (dynamodb.table)", self.table),
                    &e,
                )
            })?;
        self.check_description(out.table())
            .map_err(CheckError::permanent)
    }

    fn check_description(
        &self,
        table: Option<&aws_sdk_dynamodb::types::TableDescription>,
    ) -> Result<(), String> {
        let Some(table) = table else {
            return Err(format!("table `{}` has no description", self.table));
        };
        let hash = table
            .key_schema()
            .iter()
            .find(|k| k.key_type() == &KeyType::Hash)
            .map(|k| k.attribute_name().to_string());
        if table
            .key_schema()
            .iter()
            .any(|k| k.key_type() == &KeyType::Range)
        {
            return Err(format!(
                "table `{}` has a sort key; sluice writes tables keyed by a partition key alone",
                self.table
            ));
        }
        if hash.as_deref() != Some(self.key_attribute.as_str()) {
            return Err(format!(
                "table `{}` is keyed by `{}`, but schema.key_attribute is `{}`: set schema.key_attribute to the table's partition key",
                self.table,
                hash.unwrap_or_default(),
                self.key_attribute
            ));
        }
        let key_type = table
            .attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == self.key_attribute)
            .map(|d| d.attribute_type().clone());
        if key_type != Some(ScalarAttributeType::S) {
            return Err(format!(
                "table `{}`'s partition key `{}` must be of type S (string)",
                self.table, self.key_attribute
            ));
        }
        Ok(())
    }
}

/// A table's (or an index's) write capacity, as DescribeTable reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableCapacity {
    /// Provisioned write capacity units per second.
    Provisioned(u64),
    /// PAY_PER_REQUEST: no provisioned figure to pace to.
    OnDemand,
}

/// An on-demand table's or index's limits, as DescribeTable reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OnDemandLimits {
    /// OnDemandThroughput.MaxWriteRequestUnits, when set.
    pub max_write: Option<u64>,
    /// WarmThroughput.WriteUnitsPerSecond: what it takes at once.
    pub warm_write: Option<u64>,
}

/// One budget's capacity: provisioned, or on demand with its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// Provisioned write capacity, in WCU per second.
    Provisioned(u64),
    /// PAY_PER_REQUEST, with whatever maximum and warm throughput the table declares.
    OnDemand(OnDemandLimits),
}

impl Capacity {
    /// The capacity without its on-demand limits, as [`describe_capacity`] reports it.
    pub fn kind(&self) -> TableCapacity {
        match self {
            Capacity::Provisioned(w) => TableCapacity::Provisioned(*w),
            Capacity::OnDemand(_) => TableCapacity::OnDemand,
        }
    }
}

/// Everything a write is metered against, as DescribeTable says: the table and each GSI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLimits {
    /// The table's own write capacity.
    pub table: Capacity,
    /// Each global secondary index sluice's writes also consume (those with a partition key), with
    /// its key schema and projection and its own capacity.
    pub indexes: Vec<(IndexSpec, Capacity)>,
}

fn capacity_of(
    on_demand: bool,
    provisioned: Option<i64>,
    max: Option<i64>,
    warm: Option<i64>,
) -> Capacity {
    let positive = |v: Option<i64>| v.filter(|&v| v > 0).map(|v| v as u64);
    match (on_demand, positive(provisioned)) {
        (false, Some(w)) => Capacity::Provisioned(w),
        _ => Capacity::OnDemand(OnDemandLimits {
            max_write: positive(max),
            warm_write: positive(warm),
        }),
    }
}

/// Reads the table's and its indexes' write limits (DescribeTable).
pub async fn describe_limits(client: &Client, table: &str) -> Result<TableLimits, CheckError> {
    let out = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| CheckError::of(&format!("DescribeTable `{table}`"), &e))?;
    let t = out.table().ok_or_else(|| {
        CheckError::permanent(format!("DescribeTable `{table}` returned no table"))
    })?;
    let on_demand = t
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .is_some_and(|m| m == &aws_sdk_dynamodb::types::BillingMode::PayPerRequest);
    let table_capacity = capacity_of(
        on_demand,
        t.provisioned_throughput()
            .and_then(|p| p.write_capacity_units()),
        t.on_demand_throughput()
            .and_then(|o| o.max_write_request_units()),
        t.warm_throughput().and_then(|w| w.write_units_per_second()),
    );
    let mut indexes = Vec::new();
    for g in t.global_secondary_indexes() {
        let Some(name) = g.index_name() else { continue };
        let key = |kind: KeyType| {
            g.key_schema()
                .iter()
                .find(|k| k.key_type() == &kind)
                .map(|k| k.attribute_name().to_string())
        };
        let Some(hash_key) = key(KeyType::Hash) else {
            continue;
        };
        let projection = match g.projection().and_then(|p| p.projection_type()) {
            Some(aws_sdk_dynamodb::types::ProjectionType::KeysOnly) => Projection::KeysOnly,
            Some(aws_sdk_dynamodb::types::ProjectionType::Include) => Projection::Include(
                g.projection()
                    .map(|p| p.non_key_attributes().to_vec())
                    .unwrap_or_default(),
            ),
            _ => Projection::All,
        };
        let capacity = capacity_of(
            on_demand,
            g.provisioned_throughput()
                .and_then(|p| p.write_capacity_units()),
            g.on_demand_throughput()
                .and_then(|o| o.max_write_request_units()),
            g.warm_throughput().and_then(|w| w.write_units_per_second()),
        );
        indexes.push((
            IndexSpec {
                name: name.to_string(),
                hash_key,
                range_key: key(KeyType::Range),
                projection,
            },
            capacity,
        ));
    }
    Ok(TableLimits {
        table: table_capacity,
        indexes,
    })
}

/// Reads the table's write capacity (DescribeTable).
pub async fn describe_capacity(client: &Client, table: &str) -> Result<TableCapacity, String> {
    let out = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| format!("DescribeTable `{table}`: {}", DisplayErrorContext(&e)))?;
    let t = out
        .table()
        .ok_or_else(|| format!("DescribeTable `{table}` returned no table"))?;
    let on_demand = t
        .billing_mode_summary()
        .and_then(|b| b.billing_mode())
        .is_some_and(|m| m == &aws_sdk_dynamodb::types::BillingMode::PayPerRequest);
    let wcu = t
        .provisioned_throughput()
        .and_then(|p| p.write_capacity_units())
        .unwrap_or(0);
    Ok(if on_demand || wcu <= 0 {
        TableCapacity::OnDemand
    } else {
        TableCapacity::Provisioned(wcu as u64)
    })
}

/// One item as the PutRequest of a BatchWriteItem.
pub fn write_request(item: &Item) -> Result<WriteRequest, WriteError> {
    let attrs: HashMap<String, AttributeValue> = item
        .attrs()
        .iter()
        .map(|(k, v)| (k.clone(), to_attribute_value(v)))
        .collect();
    let put = PutRequest::builder()
        .set_item(Some(attrs))
        .build()
        .map_err(|e| WriteError::new(WriteErrorKind::InvalidItem, e.to_string()))?;
    Ok(WriteRequest::builder().put_request(put).build())
}

/// Core attribute values into the SDK's.
pub fn to_attribute_value(v: &AttrValue) -> AttributeValue {
    match v {
        AttrValue::S(s) => AttributeValue::S(s.clone()),
        AttrValue::N(n) => AttributeValue::N(n.clone()),
        AttrValue::Bool(b) => AttributeValue::Bool(*b),
        AttrValue::Null => AttributeValue::Null(true),
        AttrValue::M(m) => AttributeValue::M(
            m.iter()
                .map(|(k, v)| (k.clone(), to_attribute_value(v)))
                .collect(),
        ),
        AttrValue::L(l) => AttributeValue::L(l.iter().map(to_attribute_value).collect()),
        AttrValue::B(b) => AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(b.clone())),
    }
}

/// The SDK's attribute values into the core's, for reading items back. Sets (which sluice never
/// writes) become lists.
pub fn from_attribute_value(v: &AttributeValue) -> AttrValue {
    match v {
        AttributeValue::S(s) => AttrValue::S(s.clone()),
        AttributeValue::N(n) => AttrValue::N(n.clone()),
        AttributeValue::Bool(b) => AttrValue::Bool(*b),
        AttributeValue::B(b) => AttrValue::B(b.as_ref().to_vec()),
        AttributeValue::M(m) => AttrValue::M(
            m.iter()
                .map(|(k, v)| (k.clone(), from_attribute_value(v)))
                .collect(),
        ),
        AttributeValue::L(l) => AttrValue::L(l.iter().map(from_attribute_value).collect()),
        AttributeValue::Ss(set) => AttrValue::L(set.iter().cloned().map(AttrValue::S).collect()),
        AttributeValue::Ns(set) => AttrValue::L(set.iter().cloned().map(AttrValue::N).collect()),
        AttributeValue::Bs(set) => AttrValue::L(
            set.iter()
                .map(|b| AttrValue::B(b.as_ref().to_vec()))
                .collect(),
        ),
        _ => AttrValue::Null,
    }
}

/// An item as the SDK returns it, as the core's attributes.
pub fn from_item(
    item: &HashMap<String, AttributeValue>,
) -> std::collections::BTreeMap<String, AttrValue> {
    item.iter()
        .map(|(k, v)| (k.clone(), from_attribute_value(v)))
        .collect()
}

/// DynamoDB's ThrottlingReasons on a refused call, read.
pub fn throttle_causes(
    err: &SdkError<
        aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError,
        HttpResponse,
    >,
) -> Vec<ThrottleCause> {
    use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError as E;
    let reasons = match err.as_service_error() {
        Some(E::ProvisionedThroughputExceededException(x)) => x.throttling_reasons(),
        Some(E::ThrottlingException(x)) => x.throttling_reasons(),
        Some(E::RequestLimitExceeded(x)) => x.throttling_reasons(),
        _ => &[],
    };
    reasons
        .iter()
        .map(|r| {
            ThrottleCause::parse(
                r.reason().unwrap_or_default(),
                r.resource().unwrap_or_default(),
            )
        })
        .collect()
}

/// Sorts a failed call into the writer's retry classes.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> WriteErrorKind
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(se) => match se.err().code() {
            Some(
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "Throttling"
                | "RequestLimitExceeded"
                | "TooManyRequestsException",
            ) => WriteErrorKind::Throttled,
            Some("ValidationException" | "ItemCollectionSizeLimitExceededException") => {
                WriteErrorKind::InvalidItem
            }
            Some(
                "InternalServerError"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "ReplicatedWriteConflictException"
                | "TransactionConflictException",
            ) => WriteErrorKind::Transient,
            _ => {
                let status = se.raw().status().as_u16();
                if status >= 500 {
                    WriteErrorKind::Transient
                } else if status == 413 {
                    // The request is over DynamoDB's 16 MB once written as JSON (escaping can
                    // make 25 items of 400 KB much larger): sent item by item, each fits.
                    WriteErrorKind::InvalidItem
                } else {
                    WriteErrorKind::Fatal
                }
            }
        },
        SdkError::ConstructionFailure(_) => WriteErrorKind::Fatal,
        // Time-outs, connection failures, unreadable responses: the call may not have happened.
        _ => WriteErrorKind::Transient,
    }
}

impl BatchWriter for DynamoDbWriter {
    async fn write_batch(&self, items: &[&Item]) -> Result<BatchResult, WriteError> {
        let mut requests = Vec::with_capacity(items.len());
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            index.insert(item.key(), i);
            requests.push(write_request(item)?);
        }
        let out = self
            .client
            .batch_write_item()
            .request_items(&self.table, requests)
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await
            .map_err(|e| {
                WriteError::new(
                    classify(&e),
                    format!(
                        "BatchWriteItem on `{}`: {}",
                        self.table,
                        DisplayErrorContext(&e)
                    ),
                )
                .with_causes(throttle_causes(&e))
            })?;
        let mut unprocessed = Vec::new();
        if let Some(left) = out.unprocessed_items().and_then(|m| m.get(&self.table)) {
            for request in left {
                let key = request
                    .put_request()
                    .and_then(|p| p.item().get(&self.key_attribute))
                    .and_then(|v| v.as_s().ok());
                match key.and_then(|k| index.get(k.as_str())) {
                    Some(&i) => unprocessed.push(i),
                    None => {
                        // Cannot tell which item it was: retry the whole batch rather than
                        // risk reporting an unwritten item as written.
                        return Err(WriteError::new(
                            WriteErrorKind::Transient,
                            "BatchWriteItem returned an unprocessed item sluice cannot match",
                        ));
                    }
                }
            }
        }
        let total = out
            .consumed_capacity()
            .iter()
            .filter_map(|c| c.capacity_units())
            .sum::<f64>();
        // With INDEXES, the table's own share and each index's; servers that only give the total
        // leave the breakdown out (and the estimate stands).
        let by_budget = out
            .consumed_capacity()
            .iter()
            .find(|c| c.table_name() == Some(self.table.as_str()))
            .and_then(|c| {
                let table = c.table()?.capacity_units()?;
                let indexes = c
                    .global_secondary_indexes()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.capacity_units().unwrap_or(0.0)))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(Consumed { table, indexes })
            });
        Ok(BatchResult {
            unprocessed,
            consumed_wcu: (total > 0.0).then_some(total),
            consumed: by_budget,
        })
    }
}

pub mod members;

/// Table creation, deletion and scans for `sluice demo`, the tools and the tests; not used on the
/// write path. Errors come back as text naming the call that failed.
pub mod admin {
    use std::time::Duration;

    use aws_sdk_dynamodb::Client;
    use aws_sdk_dynamodb::error::DisplayErrorContext;
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        OnDemandThroughput, Projection, ProjectionType, ProvisionedThroughput, ScalarAttributeType,
        TableStatus,
    };

    /// A global secondary index keyed by one string attribute, projecting ALL.
    #[derive(Debug, Clone)]
    pub struct IndexSpec {
        /// The index's name.
        pub name: String,
        /// The index's partition key attribute (type S); the index has no sort key.
        pub key: String,
        /// Provisioned write units (the table must be provisioned too); None on an on-demand
        /// table.
        pub wcu: Option<i64>,
    }

    /// A table keyed by a string partition key, for [`create_table_from`].
    #[derive(Debug, Clone)]
    pub struct TableSpec {
        /// The table's name.
        pub name: String,
        /// The partition key attribute (type S); the table has no sort key.
        pub key: String,
        /// Provisioned write (and read) units; None: on-demand.
        pub wcu: Option<i64>,
        /// On-demand only: `OnDemandThroughput.MaxWriteRequestUnits`.
        pub max_on_demand_wcu: Option<i64>,
        /// Global secondary indexes created with the table; empty for none.
        pub indexes: Vec<IndexSpec>,
    }

    fn throughput(w: i64) -> Result<ProvisionedThroughput, String> {
        ProvisionedThroughput::builder()
            .read_capacity_units(w.max(1))
            .write_capacity_units(w.max(1))
            .build()
            .map_err(|e| e.to_string())
    }

    fn string_attribute(name: &str) -> Result<AttributeDefinition, String> {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| e.to_string())
    }

    fn hash_key(name: &str) -> Result<KeySchemaElement, String> {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| e.to_string())
    }

    /// Creates a table keyed by a string partition key — on-demand, or provisioned with
    /// `wcu` write units — and waits until it is active.
    pub async fn create_table(
        client: &Client,
        name: &str,
        key: &str,
        wcu: Option<i64>,
    ) -> Result<(), String> {
        create_table_from(
            client,
            &TableSpec {
                name: name.into(),
                key: key.into(),
                wcu,
                max_on_demand_wcu: None,
                indexes: Vec::new(),
            },
        )
        .await
    }

    /// Creates the table `spec` describes (its indexes, an on-demand maximum) and waits until it
    /// is active.
    pub async fn create_table_from(client: &Client, spec: &TableSpec) -> Result<(), String> {
        let name = spec.name.as_str();
        let mut request = client
            .create_table()
            .table_name(name)
            .attribute_definitions(string_attribute(&spec.key)?)
            .key_schema(hash_key(&spec.key)?);
        request = match spec.wcu {
            None => request.billing_mode(BillingMode::PayPerRequest),
            Some(w) => request
                .billing_mode(BillingMode::Provisioned)
                .provisioned_throughput(throughput(w)?),
        };
        if let Some(max) = spec.max_on_demand_wcu {
            request = request.on_demand_throughput(
                OnDemandThroughput::builder()
                    .max_write_request_units(max)
                    .build(),
            );
        }
        for index in &spec.indexes {
            if index.key != spec.key {
                request = request.attribute_definitions(string_attribute(&index.key)?);
            }
            let mut gsi = GlobalSecondaryIndex::builder()
                .index_name(&index.name)
                .key_schema(hash_key(&index.key)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                );
            if let Some(w) = index.wcu {
                gsi = gsi.provisioned_throughput(throughput(w)?);
            }
            request = request.global_secondary_indexes(gsi.build().map_err(|e| e.to_string())?);
        }
        request
            .send()
            .await
            .map_err(|e| format!("CreateTable {name}: {}", DisplayErrorContext(&e)))?;
        for _ in 0..300 {
            let d = client
                .describe_table()
                .table_name(name)
                .send()
                .await
                .map_err(|e| format!("DescribeTable {name}: {}", DisplayErrorContext(&e)))?;
            if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("table {name} did not become active in 30 s"))
    }

    /// Starts deleting the table (DeleteTable) and returns without waiting for it to be gone. Err:
    /// the SDK error as text, a missing table included.
    pub async fn delete_table(client: &Client, name: &str) -> Result<(), String> {
        client
            .delete_table()
            .table_name(name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("DeleteTable {name}: {}", DisplayErrorContext(&e)))
    }

    /// Every partition key value in the table, one entry per row (a full, paginated scan).
    pub async fn scan_keys(client: &Client, table: &str, key: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let out = client
                .scan()
                .table_name(table)
                .projection_expression("#k")
                .expression_attribute_names("#k", key)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| format!("Scan {table}: {}", DisplayErrorContext(&e)))?;
            for item in out.items() {
                if let Some(v) = item.get(key).and_then(|v| v.as_s().ok()) {
                    keys.push(v.clone());
                }
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(keys),
            }
        }
    }
}
