//! Every limit a write is paced against: the table's budget, each global secondary index's, and
//! the partition key values DynamoDB has said are hot.
//!
//! DynamoDB charges a write on the table and on every index the item is in (or leaves), each
//! against its own capacity, and throttles the base-table write when any of them is over (a GSI
//! with a fifth of the table's capacity binds long before the table does). So each item's cost
//! is worked out per budget ([`Pacer::costs`]) and a batch waits at every budget it charges: the
//! tightest one binds.
//!
//! Throttles are read, not guessed: a refusal's `ThrottlingReasons` ([`ThrottleCause`]) say which
//! resource and which limit. A table or index over its capacity cuts that budget's rate (AIMD); a
//! hot key range puts the batch's keys for that resource on a per-key bucket below DynamoDB's
//! partition limit (1,000 WCU/s) for a while, instead of slowing everything; an account quota is
//! a configuration problem, said at ERROR. A throttle that names no reason (UnprocessedItems)
//! cuts every budget the batch charged. What DynamoDB reports a call consumed settles the
//! difference with the estimate ([`Pacer::on_consumed`]).

use crate::sync::Recover;
use sluice_common::catalog;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::rate::Bucket;

use crate::item::{AttrValue, Item, wcu_for_bytes};
use crate::rate::WcuLimiter;

/// What a global secondary index keeps of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projection {
    /// Every attribute of the item: an index write costs what the table write costs.
    All,
    /// The table key and the index keys only.
    KeysOnly,
    /// The keys and these attributes.
    Include(Vec<String>),
}

/// A global secondary index, as DescribeTable describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// The index's name, as in the ThrottlingReasons' resource ARN and the index metrics' label.
    pub name: String,
    /// The index's partition key attribute: an item without it is not in the index and costs
    /// nothing there.
    pub hash_key: String,
    /// The index's sort key attribute, if it has one: an item without it is not in the index
    /// either.
    pub range_key: Option<String>,
    /// What the index keeps of an item, hence what a write costs there.
    pub projection: Projection,
}

impl IndexSpec {
    /// What one write of `item` costs on this index, in WCU, and the item's partition key value
    /// there; None when the item is not in the index (it lacks a key attribute: a sparse index).
    /// The size is the projected item's: the table key and the index keys, plus every attribute
    /// (ALL) or the included ones.
    pub fn cost(&self, item: &Item, table_key: &str) -> Option<(u32, String)> {
        let attrs = item.attrs();
        let hash = attrs.get(&self.hash_key)?;
        if let Some(r) = &self.range_key {
            attrs.get(r)?;
        }
        let size = match &self.projection {
            Projection::All => item.size(),
            _ => attrs
                .iter()
                .filter(|(k, _)| {
                    k.as_str() == table_key
                        || *k == &self.hash_key
                        || self.range_key.as_ref() == Some(*k)
                        || matches!(&self.projection, Projection::Include(a) if a.contains(k))
                })
                .map(|(k, v)| k.len() + v.size())
                .sum(),
        };
        Some((wcu_for_bytes(size), key_text(hash)))
    }
}

fn key_text(v: &AttrValue) -> String {
    match v {
        AttrValue::S(s) | AttrValue::N(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Which resource a throttle names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// The base table.
    Table,
    /// A global secondary index, by name; empty when the reason said "index" but the ARN named
    /// none.
    Index(String),
}

/// Which limit a throttle names (the last part of DynamoDB's ThrottlingReason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// The table's or index's write capacity (provisioned, or what on demand has warmed to): cuts
    /// that budget's rate.
    ProvisionedThroughput,
    /// One partition's limit (1,000 WCU/s): a single hot key gets its own slower bucket; a batch of
    /// several keys slows the budget.
    KeyRange,
    /// The on-demand maximum set on the table or index (MaxWriteRequestUnits): cuts that budget's
    /// rate.
    MaxOnDemand,
    /// The account's per-table quota: a configuration problem, said at ERROR; the table's rate is
    /// cut meanwhile.
    AccountLimit,
    /// A reason sluice does not know, kept as DynamoDB wrote it.
    Other(String),
}

impl Limit {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Limit::ProvisionedThroughput => "capacity",
            Limit::KeyRange => "key_range",
            Limit::MaxOnDemand => "max_on_demand",
            Limit::AccountLimit => "account_limit",
            Limit::Other(_) => "other",
        }
    }
}

/// One of DynamoDB's ThrottlingReasons, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleCause {
    /// What was over its limit: the table or an index.
    pub resource: Resource,
    /// Which limit it was over.
    pub limit: Limit,
}

impl ThrottleCause {
    /// Reads `TableWriteProvisionedThroughputExceeded` and the like, with the resource ARN
    /// (`…:table/NAME` or `…:table/NAME/index/INDEX`).
    pub fn parse(reason: &str, resource_arn: &str) -> ThrottleCause {
        let resource = match resource_arn.split_once("/index/") {
            Some((_, index)) => Resource::Index(index.to_owned()),
            None if reason.starts_with("Index") => Resource::Index(String::new()),
            None => Resource::Table,
        };
        let limit = if reason.ends_with("KeyRangeThroughputExceeded") {
            Limit::KeyRange
        } else if reason.ends_with("MaxOnDemandThroughputExceeded") {
            Limit::MaxOnDemand
        } else if reason.ends_with("AccountLimitExceeded") {
            Limit::AccountLimit
        } else if reason.ends_with("ProvisionedThroughputExceeded") {
            Limit::ProvisionedThroughput
        } else {
            Limit::Other(reason.to_owned())
        };
        ThrottleCause { resource, limit }
    }
}

/// What one call consumed, as DynamoDB reported it (ReturnConsumedCapacity=INDEXES).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consumed {
    /// WCU the call consumed on the table itself.
    pub table: f64,
    /// WCU consumed on each index the call touched, by index name; an index left out consumed
    /// nothing that DynamoDB reported.
    pub indexes: Vec<(String, f64)>,
}

/// What a hot key is paced to: under DynamoDB's 1,000 WCU/s partition limit.
const HOT_KEY_WCU: u32 = 900;
/// How long a key stays on its own bucket after a throttle named its key range.
const HOT_FOR: Duration = Duration::from_secs(60);
/// Hot keys remembered at most.
const MAX_HOT_KEYS: usize = 10_000;

/// An item's costs: WCU on each budget (0: not charged there), with the partition key value on
/// each (for hot keys). Index `0` is the table, `1 + i` the i-th index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Costs {
    /// WCU the item costs on each budget, in the order above; 0 where it is not charged (not in
    /// that index).
    pub wcu: Vec<u32>,
    /// The item's partition key value on each budget (for hot-key buckets); None where it is not
    /// charged.
    pub keys: Vec<Option<String>>,
}

/// A hot key's own bucket, until when it is kept, and whether DynamoDB named its key range
/// (`KeyRangeThroughputExceeded`) or sluice only suspects it (unprocessed items sharing it).
type HotKey = (Arc<Bucket>, Instant, bool);

/// The table's budget, its indexes' budgets, and hot keys.
pub struct Pacer {
    table: Arc<WcuLimiter>,
    indexes: Vec<(IndexSpec, Arc<WcuLimiter>)>,
    table_key: String,
    hot: Mutex<HashMap<(usize, String), HotKey>>,
}

impl From<Arc<WcuLimiter>> for Pacer {
    fn from(table: Arc<WcuLimiter>) -> Pacer {
        Pacer::new(table, "", Vec::new())
    }
}

impl From<WcuLimiter> for Pacer {
    fn from(table: WcuLimiter) -> Pacer {
        Pacer::from(Arc::new(table))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.locked()
}

impl Pacer {
    /// `table_key` is the table's partition key attribute; `indexes` the GSIs with their budgets.
    pub fn new(
        table: Arc<WcuLimiter>,
        table_key: impl Into<String>,
        indexes: Vec<(IndexSpec, Arc<WcuLimiter>)>,
    ) -> Pacer {
        Pacer {
            table,
            indexes,
            table_key: table_key.into(),
            hot: Mutex::new(HashMap::new()),
        }
    }

    /// The table's own budget.
    pub fn table(&self) -> &Arc<WcuLimiter> {
        &self.table
    }

    /// Each index with its budget, in the order of [`Costs`] (budget `1 + i`).
    pub fn indexes(&self) -> &[(IndexSpec, Arc<WcuLimiter>)] {
        &self.indexes
    }

    /// Budgets: the table and each index.
    pub fn len(&self) -> usize {
        1 + self.indexes.len()
    }

    /// Always false: there is always the table's budget. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    fn limiter(&self, b: usize) -> &WcuLimiter {
        if b == 0 {
            &self.table
        } else {
            &self.indexes[b - 1].1
        }
    }

    /// What writing `item` costs on each budget.
    pub fn costs(&self, item: &Item) -> Costs {
        let mut wcu = Vec::with_capacity(self.len());
        let mut keys = Vec::with_capacity(self.len());
        wcu.push(item.wcu());
        keys.push(Some(item.key().to_owned()));
        for (spec, _) in &self.indexes {
            match spec.cost(item, &self.table_key) {
                Some((w, k)) => {
                    wcu.push(w);
                    keys.push(Some(k));
                }
                None => {
                    wcu.push(0);
                    keys.push(None);
                }
            }
        }
        Costs { wcu, keys }
    }

    /// Seconds `wcu` (summed per budget) takes at the paced rates: the slowest budget's.
    pub fn seconds(&self, wcu: &[u64]) -> f64 {
        wcu.iter()
            .enumerate()
            .filter_map(|(b, &w)| {
                let rate = self.limiter(b).rate()?;
                Some(w as f64 / rate.max(1.0))
            })
            .fold(0.0, f64::max)
    }

    /// The most one batch may charge each budget: about a second of its paced rate.
    pub fn batch_caps(&self, seconds: f64) -> Vec<u64> {
        (0..self.len())
            .map(|b| {
                self.limiter(b)
                    .rate()
                    .map_or(u64::MAX, |r| ((r * seconds).floor() as u64).max(1))
            })
            .collect()
    }

    /// The paced rate of the table (None: unpaced).
    pub fn table_rate(&self) -> Option<f64> {
        self.table.rate()
    }

    /// Waits for a batch's WCU at every budget it charges, and at the bucket of every hot key
    /// among its items.
    pub async fn acquire(&self, per_budget: &[u64], items: &[&Costs]) {
        for (b, &w) in per_budget.iter().enumerate() {
            if w > 0 {
                self.limiter(b)
                    .acquire(u32::try_from(w).unwrap_or(u32::MAX))
                    .await;
            }
        }
        let hot: Vec<(Arc<Bucket>, u32)> = {
            let mut hot = lock(&self.hot);
            if hot.is_empty() {
                return;
            }
            let now = Instant::now();
            hot.retain(|_, (_, until, _)| *until > now);
            items
                .iter()
                .flat_map(|c| {
                    c.keys.iter().enumerate().filter_map(|(b, k)| {
                        let k = k.as_ref()?;
                        let (bucket, _, _) = hot.get(&(b, k.clone()))?;
                        Some((bucket.clone(), c.wcu[b]))
                    })
                })
                .collect()
        };
        for (bucket, wcu) in hot {
            let mut left = wcu.max(1);
            while left > 0 {
                let n = left.min(HOT_KEY_WCU);
                let slice = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
                if !bucket.take(slice).await {
                    break;
                }
                left -= n;
            }
        }
    }

    /// A throttle. `causes` are its ThrottlingReasons (empty: none given, e.g. UnprocessedItems);
    /// `per_budget` what the batch charged each budget; `items` its items' costs.
    pub fn on_throttle(&self, causes: &[ThrottleCause], per_budget: &[u64], items: &[&Costs]) {
        if causes.is_empty() {
            for (b, &w) in per_budget.iter().enumerate() {
                if w > 0 {
                    metrics::counter!(catalog::THROTTLES_TOTAL, "resource" => self.label(b), "reason" => "unknown")
                        .increment(1);
                    self.limiter(b).on_throttle();
                }
            }
            return;
        }
        for cause in causes {
            let b = match &cause.resource {
                Resource::Table => Some(0),
                Resource::Index(name) => self
                    .indexes
                    .iter()
                    .position(|(s, _)| &s.name == name)
                    .map(|i| i + 1),
            };
            let label = match &cause.resource {
                Resource::Table => "table".to_owned(),
                Resource::Index(n) => format!("index:{n}"),
            };
            metrics::counter!(catalog::THROTTLES_TOTAL, "resource" => label.clone(), "reason" => cause.limit.label())
                .increment(1);
            match (&cause.limit, b) {
                // One key value over its partition's limit: pace that key on its own. Several
                // values in one throttled range (a partition holds many, e.g. the table keyed
                // by unique request ids): per-key buckets would never meet them again, so the
                // budget itself slows.
                (Limit::KeyRange, Some(b)) if self.one_key(b, items) => self.heat(b, items, true),
                (Limit::AccountLimit, _) => {
                    tracing::error!(resource = %label, "DynamoDB throttled for the account's per-table quota: raise the quota (Service Quotas) or pace below it with rate.on_demand_wcu_per_second / rate.wcu_per_second");
                    self.table.on_throttle();
                }
                (_, Some(b)) => self.limiter(b).on_throttle(),
                (_, None) => {
                    // An index this instance does not know (created since the start): slow
                    // everything until the next capacity refresh learns it.
                    for (b, &w) in per_budget.iter().enumerate() {
                        if w > 0 {
                            self.limiter(b).on_throttle();
                        }
                    }
                }
            }
        }
    }

    /// Items a call left unprocessed. DynamoDB says nothing of why. When every one of them
    /// carries a key DynamoDB has named hot (a `KeyRangeThroughputExceeded` earlier), that is
    /// the reason: the keys stay on their own buckets and no budget is cut. Otherwise every
    /// budget the batch charged is cut (AIMD), as for any throttle without a reason; and when
    /// the items all share one index key value, that key is also put on its own bucket as a
    /// precaution (a likely cause, and pacing one key below the partition limit costs nothing
    /// if it is not). A suspected key never stops a budget cut: only a named one does.
    pub fn on_unprocessed(&self, per_budget: &[u64], items: &[&Costs]) {
        let named: Vec<(usize, Vec<&Costs>)> = {
            let hot = lock(&self.hot);
            let is_named = |b: usize, c: &Costs| {
                c.keys
                    .get(b)
                    .cloned()
                    .flatten()
                    .and_then(|k| hot.get(&(b, k)).map(|h| h.2))
                    .unwrap_or(false)
            };
            let all_named = !items.is_empty()
                && items
                    .iter()
                    .all(|c| (0..self.len()).any(|b| is_named(b, c)));
            if all_named {
                (0..self.len())
                    .map(|b| {
                        let on_b: Vec<&Costs> =
                            items.iter().copied().filter(|c| is_named(b, c)).collect();
                        (b, on_b)
                    })
                    .filter(|(_, on_b)| !on_b.is_empty())
                    .collect()
            } else {
                Vec::new()
            }
        };
        if !named.is_empty() {
            for (b, on_b) in named {
                metrics::counter!(catalog::THROTTLES_TOTAL, "resource" => self.label(b), "reason" => "key_range")
                    .increment(1);
                self.heat(b, &on_b, true);
            }
            return;
        }
        self.on_throttle(&[], per_budget, items);
        if items.len() >= 2
            && let Some(b) = (1..self.len()).find(|&b| self.one_key(b, items))
        {
            self.heat(b, items, false);
        }
    }

    /// Whether every item carries one and the same key value on budget `b`.
    fn one_key(&self, b: usize, items: &[&Costs]) -> bool {
        let Some(first) = items.first().and_then(|c| c.keys.get(b)).cloned().flatten() else {
            return false;
        };
        items
            .iter()
            .all(|c| c.keys.get(b).is_some_and(|k| k.as_ref() == Some(&first)))
    }

    fn label(&self, b: usize) -> String {
        if b == 0 {
            "table".into()
        } else {
            format!("index:{}", self.indexes[b - 1].0.name)
        }
    }

    /// Every `sluice_throttles_total` series this pacer can report, at zero, so a rate() or an
    /// alert on one sees it before the first throttle.
    pub fn describe_throttles(&self) {
        for b in 0..self.len() {
            for reason in [
                "capacity",
                "key_range",
                "max_on_demand",
                "account_limit",
                "other",
                "unknown",
            ] {
                metrics::counter!(catalog::THROTTLES_TOTAL, "resource" => self.label(b), "reason" => reason)
                    .increment(0);
            }
        }
    }

    /// Puts the partition key values of `items` on budget `b` on their own buckets (`named`:
    /// DynamoDB named the key range; a suspicion never downgrades a named key). At most
    /// MAX_HOT_KEYS are kept: expired ones are dropped first, and a full map still renews the
    /// keys it holds.
    fn heat(&self, b: usize, items: &[&Costs], named: bool) {
        let mut hot = lock(&self.hot);
        let now = Instant::now();
        let until = now + HOT_FOR;
        let mut new = 0;
        for c in items {
            let Some(Some(k)) = c.keys.get(b) else {
                continue;
            };
            let key = (b, k.clone());
            if let Some(e) = hot.get_mut(&key) {
                e.1 = until;
                e.2 |= named;
                continue;
            }
            if hot.len() >= MAX_HOT_KEYS {
                hot.retain(|_, (_, until, _)| *until > now);
                if hot.len() >= MAX_HOT_KEYS {
                    continue;
                }
            }
            let rate = NonZeroU32::new(HOT_KEY_WCU).unwrap_or(NonZeroU32::MIN);
            hot.insert(key, (Arc::new(Bucket::new(rate, rate)), until, named));
            new += 1;
        }
        if new > 0 {
            tracing::warn!(
                keys = new,
                budget = b,
                named,
                "a key range is hot: its keys are paced on their own below DynamoDB's partition limit"
            );
        }
    }

    /// Settles what a call consumed against what was taken for its written items.
    pub fn on_consumed(&self, estimated: &[u64], consumed: &Consumed) {
        self.table.correct(consumed.table - estimated[0] as f64);
        for (name, used) in &consumed.indexes {
            if let Some(i) = self.indexes.iter().position(|(s, _)| &s.name == name) {
                self.indexes[i].1.correct(used - estimated[i + 1] as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Schema, decode_message};

    fn item(body: &str) -> Item {
        decode_message(
            body.as_bytes(),
            &Schema {
                required_fields: vec![],
                ..Schema::default()
            },
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn an_index_is_charged_the_projected_item_only_when_the_item_is_in_it() {
        let pad = "x".repeat(1500);
        let it = item(&format!(
            r#"{{"request_id":"r","user_id":"u1","pad":"{pad}"}}"#
        ));
        let all = IndexSpec {
            name: "by_user".into(),
            hash_key: "user_id".into(),
            range_key: None,
            projection: Projection::All,
        };
        assert_eq!(all.cost(&it, "request_id"), Some((2, "u1".into())));
        let keys = IndexSpec {
            projection: Projection::KeysOnly,
            ..all.clone()
        };
        assert_eq!(keys.cost(&it, "request_id").map(|c| c.0), Some(1));
        let include = IndexSpec {
            projection: Projection::Include(vec!["pad".into()]),
            ..all.clone()
        };
        assert_eq!(include.cost(&it, "request_id").map(|c| c.0), Some(2));
        let sparse = item(r#"{"request_id":"r2"}"#);
        assert_eq!(all.cost(&sparse, "request_id"), None);
    }

    #[test]
    fn throttling_reasons_are_read() {
        let c = ThrottleCause::parse(
            "IndexWriteProvisionedThroughputExceeded",
            "arn:aws:dynamodb:eu-west-1:1:table/logs/index/by_user",
        );
        assert_eq!(
            c,
            ThrottleCause {
                resource: Resource::Index("by_user".into()),
                limit: Limit::ProvisionedThroughput
            }
        );
        let c = ThrottleCause::parse(
            "TableWriteKeyRangeThroughputExceeded",
            "arn:aws:dynamodb:eu-west-1:1:table/logs",
        );
        assert_eq!((c.resource, c.limit), (Resource::Table, Limit::KeyRange));
        assert_eq!(
            ThrottleCause::parse("TableWriteMaxOnDemandThroughputExceeded", "x").limit,
            Limit::MaxOnDemand
        );
        assert_eq!(
            ThrottleCause::parse("TableWriteAccountLimitExceeded", "x").limit,
            Limit::AccountLimit
        );
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;
    use crate::codec::{Schema, decode_message};

    fn limiter(w: u32) -> Arc<WcuLimiter> {
        Arc::new(WcuLimiter::try_new(NonZeroU32::new(w).unwrap(), 0.1).unwrap())
    }

    fn pacer() -> Pacer {
        Pacer::new(
            limiter(1000),
            "request_id",
            vec![(
                IndexSpec {
                    name: "by_user".into(),
                    hash_key: "user_id".into(),
                    range_key: None,
                    projection: Projection::All,
                },
                limiter(1000),
            )],
        )
    }

    fn costs(p: &Pacer, user: Option<&str>) -> Costs {
        let body = match user {
            Some(u) => format!(r#"{{"request_id":"r-{u}","user_id":"{u}"}}"#),
            None => r#"{"request_id":"r-none"}"#.to_string(),
        };
        let schema = Schema {
            required_fields: vec![],
            ..Schema::default()
        };
        p.costs(&decode_message(body.as_bytes(), &schema).unwrap()[0])
    }

    #[test]
    fn a_throttle_slows_only_the_resource_it_names() {
        let p = pacer();
        let c = costs(&p, Some("u1"));
        assert_eq!(c.wcu, vec![1, 1]);
        p.on_throttle(
            &[ThrottleCause {
                resource: Resource::Index("by_user".into()),
                limit: Limit::ProvisionedThroughput,
            }],
            &[1, 1],
            &[&c],
        );
        assert_eq!(p.table().rate(), Some(1000.0), "the table is not slowed");
        assert_eq!(p.indexes()[0].1.rate(), Some(800.0), "the index is");
        // No reason given (UnprocessedItems): every budget the batch charged.
        let p = pacer();
        p.on_throttle(&[], &[1, 0], &[&costs(&p, None)]);
        assert_eq!(p.table().rate(), Some(800.0));
        assert_eq!(
            p.indexes()[0].1.rate(),
            Some(1000.0),
            "not charged, not slowed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hot_key_range_paces_its_keys_not_the_table() {
        let p = pacer();
        let hot = costs(&p, Some("hot"));
        let cold = costs(&p, Some("cold"));
        p.on_throttle(
            &[ThrottleCause {
                resource: Resource::Index("by_user".into()),
                limit: Limit::KeyRange,
            }],
            &[1, 1],
            &[&hot],
        );
        assert_eq!(p.table().rate(), Some(1000.0));
        assert_eq!(p.indexes()[0].1.rate(), Some(1000.0), "no budget is cut");
        assert_eq!(lock(&p.hot).len(), 1);
        // The hot key now goes at its own bucket's 900 WCU/s (a full burst of 900): 1,800 WCU
        // of it take exactly 1 s on tokio's paused clock; the budgets charge nothing here.
        let big = Costs {
            wcu: vec![0, 0],
            keys: hot.keys.clone(),
        };
        let mut wide = big.clone();
        wide.wcu = vec![0, 1800];
        let started = Instant::now();
        p.acquire(&[0, 0], &[&wide]).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let started = Instant::now();
        let mut cold_wide = cold.clone();
        cold_wide.wcu = vec![0, 1800];
        p.acquire(&[0, 0], &[&cold_wide]).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "a cold key is not held");
    }

    #[test]
    fn unprocessed_items_sharing_a_key_nobody_named_still_slow_the_budgets() {
        // Every log carries the same index key value ("GET") and another writer takes the
        // capacity: items come back unprocessed, again and again. A suspected hot key must not
        // stop the budgets from coming down.
        let p = pacer();
        let a = costs(&p, Some("GET"));
        let mut b = a.clone();
        b.keys[0] = Some("r-other".into());
        p.on_unprocessed(&[2, 2], &[&a, &b]);
        let once = p.indexes()[0].1.rate().unwrap();
        assert!(once < 1000.0, "the index budget is cut: {once}");
        assert_eq!(
            lock(&p.hot).len(),
            1,
            "the key is paced too, as a precaution"
        );
        std::thread::sleep(Duration::from_millis(1100));
        p.on_unprocessed(&[2, 2], &[&a, &b]);
        assert!(
            p.indexes()[0].1.rate().unwrap() < once,
            "a second time, cut again"
        );
    }

    /// DynamoDB naming the by_user index's key range.
    fn key_range_on_by_user() -> ThrottleCause {
        ThrottleCause {
            resource: Resource::Index("by_user".into()),
            limit: Limit::KeyRange,
        }
    }

    #[test]
    fn unprocessed_items_on_a_key_dynamodb_named_do_not_cut_the_budgets() {
        let p = pacer();
        let hot = costs(&p, Some("hot"));
        let cause = key_range_on_by_user();
        p.on_throttle(std::slice::from_ref(&cause), &[1, 1], &[&hot]);
        p.on_unprocessed(&[1, 1], &[&hot, &hot]);
        assert_eq!(p.table().rate(), Some(1000.0));
        assert_eq!(p.indexes()[0].1.rate(), Some(1000.0));
    }

    #[test]
    fn a_key_range_of_many_values_slows_its_budget() {
        // The table is keyed by unique request ids: a throttled key range holds many of them,
        // and none comes back, so per-key buckets would do nothing.
        let p = pacer();
        let (a, b) = (costs(&p, Some("u1")), costs(&p, Some("u2")));
        p.on_throttle(
            &[ThrottleCause {
                resource: Resource::Table,
                limit: Limit::KeyRange,
            }],
            &[2, 2],
            &[&a, &b],
        );
        assert_eq!(p.table().rate(), Some(800.0));
        assert!(lock(&p.hot).is_empty());
    }

    #[test]
    fn a_full_hot_key_map_still_renews_the_keys_it_holds() {
        let p = pacer();
        let hot = costs(&p, Some("hot"));
        let cause = key_range_on_by_user();
        p.on_throttle(std::slice::from_ref(&cause), &[1, 1], &[&hot]);
        {
            let mut map = lock(&p.hot);
            let until = Instant::now() + HOT_FOR;
            let one = NonZeroU32::MIN;
            for i in 0..MAX_HOT_KEYS {
                map.insert(
                    (0, format!("k{i}")),
                    (Arc::new(Bucket::new(one, one)), until, true),
                );
            }
            map.get_mut(&(1, "hot".to_string())).unwrap().1 = Instant::now();
        }
        p.on_throttle(&[cause], &[1, 1], &[&hot]);
        assert!(
            lock(&p.hot)[&(1, "hot".to_string())].1 > Instant::now() + HOT_FOR / 2,
            "renewed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_table_reports_consumed_settles_the_estimate() {
        // Estimated 10, consumed 110 (an overwrite of a much larger item): the next acquire of
        // 10 at 1,000 WCU/s waits for 110 more, about 0.1 s.
        let p = pacer();
        p.table().acquire(100).await; // spend the burst
        p.on_consumed(
            &[10, 0],
            &Consumed {
                table: 110.0,
                indexes: vec![],
            },
        );
        let started = Instant::now();
        p.table().acquire(10).await;
        // On tokio's paused clock: exactly the 110 WCU at 1,000 WCU/s.
        assert_eq!(started.elapsed(), Duration::from_millis(110));
    }
}
