//! Everything a DynamoDB write is metered against, as DynamoDB documents it.
//!
//! A write is charged on the table and on every global secondary index the item appears in
//! (or leaves): each has its own capacity and its own per-partition limit, and the write goes
//! through only if every one of them can take its share. What refuses it is named in the
//! exception's `ThrottlingReasons` (`TableWriteProvisionedThroughputExceeded`,
//! `IndexWriteKeyRangeThroughputExceeded`, …, with the resource's ARN).
//!
//! - **Provisioned**: `W` WCU per second with burst credit ([`WriteCapacity`]); a write that finds
//!   a unit available is admitted whole and may run the bucket into debt.
//! - **On demand**: `OnDemandThroughput.MaxWriteRequestUnits` when set (`…MaxOnDemandThroughput
//!   Exceeded`), else the account's per-table quota (`…AccountLimitExceeded`). The warm throughput
//!   (`WarmThroughput.WriteUnitsPerSecond`, 4,000 for a new table) is reported, not enforced: it
//!   is what DynamoDB takes instantly, and what sluice paces to by default.
//! - **Partitions**: each partition key value takes at most 1,000 WCU per second, on the table
//!   and on each index (`…KeyRangeThroughputExceeded`).

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::capacity::{CapacityLog, WriteCapacity};

/// What one partition key value takes per second (DynamoDB's partition limit).
pub const PARTITION_WCU: u64 = 1000;

/// A new on-demand table's warm throughput.
pub const DEFAULT_WARM_WCU: u64 = 4000;

/// How a table or index is billed, hence what limits its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    /// PROVISIONED: writes are limited to the write capacity, with burst credit.
    Provisioned {
        /// Read capacity units: reported by DescribeTable, never enforced.
        rcu: u64,
        /// Write capacity units per second.
        wcu: u64,
    },
    /// PAY_PER_REQUEST: limited by the on-demand maximum, if set, else by the simulator's on-demand
    /// ceiling standing in for the account quota.
    OnDemand,
}

/// One table or index's write metering.
pub struct Meter {
    /// How the table or index is billed now.
    pub billing: Billing,
    /// OnDemandThroughput.MaxWriteRequestUnits (on-demand only; None or -1: no maximum).
    pub max_on_demand: Option<u64>,
    /// WarmThroughput.WriteUnitsPerSecond, WCU per second: reported by DescribeTable, never
    /// enforced.
    pub warm_wcu: u64,
    /// The table's or index's own write bucket (provisioned rate with burst credit, or the
    /// on-demand limit with one second of burst).
    pub capacity: WriteCapacity,
    /// What was consumed per second, and what was refused, for the capacity report.
    pub log: CapacityLog,
    /// Per partition key value.
    partitions: HashMap<String, WriteCapacity>,
}

impl Meter {
    /// A meter that starts with one second of capacity and no burst credit. `burst_seconds` applies
    /// to provisioned billing; `ceiling` (WCU per second) caps on-demand billing, and is the limit
    /// when `max_on_demand` is None.
    pub fn new(
        billing: Billing,
        max_on_demand: Option<u64>,
        warm_wcu: u64,
        burst_seconds: f64,
        ceiling: u64,
        now: Instant,
    ) -> Self {
        let capacity = Self::bucket(billing, max_on_demand, burst_seconds, ceiling, now);
        Meter {
            billing,
            max_on_demand,
            warm_wcu,
            capacity,
            log: CapacityLog::default(),
            partitions: HashMap::new(),
        }
    }

    fn bucket(
        billing: Billing,
        max_on_demand: Option<u64>,
        burst_seconds: f64,
        ceiling: u64,
        now: Instant,
    ) -> WriteCapacity {
        match billing {
            Billing::Provisioned { wcu, .. } => WriteCapacity::new(wcu, burst_seconds, now),
            Billing::OnDemand => {
                WriteCapacity::new(max_on_demand.unwrap_or(ceiling).min(ceiling), 1.0, now)
            }
        }
    }

    /// A change by UpdateTable: billing, capacity, maximum.
    pub fn reconfigure(
        &mut self,
        billing: Billing,
        max_on_demand: Option<u64>,
        burst_seconds: f64,
        ceiling: u64,
        now: Instant,
    ) {
        match (self.billing, billing) {
            (Billing::Provisioned { .. }, Billing::Provisioned { wcu, .. }) => {
                self.capacity.set_rate(wcu, now)
            }
            _ => self.capacity = Self::bucket(billing, max_on_demand, burst_seconds, ceiling, now),
        }
        if billing == Billing::OnDemand && max_on_demand != self.max_on_demand {
            self.capacity = Self::bucket(billing, max_on_demand, burst_seconds, ceiling, now);
        }
        self.billing = billing;
        self.max_on_demand = max_on_demand;
    }

    /// The limit type a refusal of the meter's own capacity names.
    fn limit(&self) -> &'static str {
        match (self.billing, self.max_on_demand) {
            (Billing::Provisioned { .. }, _) => "ProvisionedThroughputExceeded",
            (Billing::OnDemand, Some(_)) => "MaxOnDemandThroughputExceeded",
            (Billing::OnDemand, None) => "AccountLimitExceeded",
        }
    }

    fn partition(&mut self, key: &str, now: Instant) -> &mut WriteCapacity {
        if self.partitions.len() > 50_000 {
            // Forget partitions that are idle (full again): they behave as new ones.
            self.partitions
                .retain(|_, c| c.available(now) < PARTITION_WCU as f64 - 1e-6);
        }
        self.partitions
            .entry(key.to_owned())
            .or_insert_with(|| WriteCapacity::new(PARTITION_WCU, 1.0, now))
    }

    /// Whether a write of `units` on partition `key` is admitted now; the limit type that
    /// refuses otherwise. The meter's bucket admits a write that finds a unit available (see
    /// [`WriteCapacity::admits`]); a partition's 1,000 WCU a second is a hard limit, so the
    /// partition must hold the whole cost (any item fits a partition that is not busy).
    pub fn check(&mut self, key: &str, units: u64, now: Instant) -> Result<(), &'static str> {
        if !self.capacity.admits(now, units) {
            return Err(self.limit());
        }
        if self.partition(key, now).available(now) + 1e-9 < units as f64 {
            return Err("KeyRangeThroughputExceeded");
        }
        Ok(())
    }

    /// Spends what [`Meter::check`] admitted, into debt if the write costs more than is there.
    pub fn spend(&mut self, key: &str, units: u64, now: Instant) {
        self.capacity.consume(now, units);
        self.partition(key, now).consume(now, units);
        self.log.record(units as f64);
    }

    /// The capacity report served at `/_sim/tables/{name}/capacity`: billing mode, provisioned,
    /// maximum and warm WCU, the bucket's rate and what it holds now, consumption in all and per
    /// second (the last hour), the peak second, throttled requests and unprocessed items.
    pub fn report(&mut self, now: Instant) -> Value {
        let (mode, provisioned) = match self.billing {
            Billing::Provisioned { wcu, .. } => ("PROVISIONED", Some(wcu)),
            Billing::OnDemand => ("PAY_PER_REQUEST", None),
        };
        let per_second: Vec<Value> = self
            .log
            .per_second
            .iter()
            .map(|(s, u)| json!([s, u]))
            .collect();
        json!({
            "billing_mode": mode,
            "provisioned_wcu": provisioned,
            "max_on_demand_wcu": self.max_on_demand,
            "warm_wcu": self.warm_wcu,
            "rate_wcu": self.capacity.rate(),
            "available_wcu": self.capacity.available(now),
            "consumed_wcu_total": self.log.consumed_total,
            "peak_wcu_per_s": self.log.peak(),
            "throttled_requests": self.log.throttled_requests,
            "unprocessed_items": self.log.unprocessed_items,
            "per_second": per_second,
        })
    }

    /// ProvisionedThroughput / OnDemandThroughput / WarmThroughput as DescribeTable shows them.
    pub fn describe_into(&self, out: &mut Map<String, Value>) {
        let (rcu, wcu) = match self.billing {
            Billing::Provisioned { rcu, wcu } => (rcu, wcu),
            Billing::OnDemand => (0, 0),
        };
        out.insert(
            "ProvisionedThroughput".into(),
            json!({"ReadCapacityUnits": rcu, "WriteCapacityUnits": wcu, "NumberOfDecreasesToday": 0}),
        );
        if self.billing == Billing::OnDemand {
            out.insert(
                "OnDemandThroughput".into(),
                json!({
                    "MaxReadRequestUnits": -1,
                    "MaxWriteRequestUnits": self.max_on_demand.map_or(-1, |m| m as i64),
                }),
            );
        }
        out.insert(
            "WarmThroughput".into(),
            json!({
                "ReadUnitsPerSecond": 12000,
                "WriteUnitsPerSecond": self.warm_wcu,
                "Status": "ACTIVE",
            }),
        );
    }
}

/// What a GSI keeps of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projection {
    /// Every attribute of the item.
    All,
    /// The table's and the index's key attributes only.
    KeysOnly,
    /// The key attributes and these non-key attributes.
    Include(Vec<String>),
}

impl Projection {
    /// Reads a CreateTable `Projection`; a missing or unknown ProjectionType is ALL.
    pub fn parse(v: Option<&Value>) -> Projection {
        let Some(p) = v else {
            return Projection::All;
        };
        match p.get("ProjectionType").and_then(Value::as_str) {
            Some("KEYS_ONLY") => Projection::KeysOnly,
            Some("INCLUDE") => Projection::Include(
                p.get("NonKeyAttributes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => Projection::All,
        }
    }

    /// The `Projection` as DescribeTable shows it.
    pub fn describe(&self) -> Value {
        match self {
            Projection::All => json!({"ProjectionType": "ALL"}),
            Projection::KeysOnly => json!({"ProjectionType": "KEYS_ONLY"}),
            Projection::Include(a) => json!({"ProjectionType": "INCLUDE", "NonKeyAttributes": a}),
        }
    }
}

/// A global secondary index.
pub struct Gsi {
    /// The index's name.
    pub name: String,
    /// The index's KeySchema as CreateTable gave it, returned by DescribeTable.
    pub key_schema: Value,
    /// The index's partition key attribute: an item without it is not in the index.
    pub hash_key: String,
    /// The index's sort key attribute, if any: an item without it is not in the index either.
    pub range_key: Option<String>,
    /// What the index keeps of an item, hence what a write costs there.
    pub projection: Projection,
    /// The index's own capacity and partition limits.
    pub meter: Meter,
}

impl Gsi {
    /// The index's view of an item: None when the item lacks its key attributes (a sparse
    /// index: it is not in it); else the partition key value and the projected item.
    pub fn project(
        &self,
        item: &Map<String, Value>,
        table_keys: &[&str],
    ) -> Option<(String, Map<String, Value>)> {
        let hash = item.get(&self.hash_key)?;
        if let Some(r) = &self.range_key {
            item.get(r)?;
        }
        let keep = |name: &str| -> bool {
            match &self.projection {
                Projection::All => true,
                Projection::KeysOnly => false,
                Projection::Include(a) => a.iter().any(|x| x == name),
            }
        };
        let projected: Map<String, Value> = item
            .iter()
            .filter(|(k, _)| {
                table_keys.contains(&k.as_str())
                    || *k == &self.hash_key
                    || self.range_key.as_deref() == Some(k.as_str())
                    || keep(k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some((hash.to_string(), projected))
    }
}
