//! Wiring: settings and SDK configs into a running engine (SQS source → writer → DynamoDB).

use sluice_common::catalog;
use sluice_core::sync::Recover;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use aws_config::SdkConfig;
use std::time::Duration;

use sluice_core::{
    Engine, EngineConfig, EngineStats, StatsSnapshot, WcuLimiter, Writer, WriterStats,
};
use sluice_dynamodb::DynamoDbWriter;
use sluice_sqs::{SqsSource, SqsSourceConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use std::num::NonZeroU32;

use sluice_core::{FleetConfig, IndexSpec, LeaseSource, Pacer, Schema, WriteCache, WriterConfig};
use sluice_dynamodb::{Capacity, TableCapacity, TableLimits};
use sluice_kafka::KafkaSource;
use sluice_redis::{BucketRate, RedisBucket};

use crate::config::{RateMode, Settings};

/// What stopping may take after the engine has returned (closing the Kafka consumer, the writer's
/// last calls): with the engine's bound, `sluice run` exits within `worker.shutdown_grace` +
/// [`sluice_core::engine::SHUTDOWN_MARGIN`] + this.
pub const AFTER_ENGINE: Duration = Duration::from_secs(2);

/// The longest a Kafka receive waits for records before it returns empty.
const KAFKA_POLL_WAIT: Duration = Duration::from_secs(1);

/// The engine over the configured buffer.
enum Engines {
    Sqs(Engine<SqsSource>),
    Kafka(Engine<KafkaSource>, Arc<KafkaSource>),
}

pub struct Pipeline {
    engine: Engines,
    writer_stats: Arc<WriterStats>,
    writer_task: JoinHandle<()>,
    limiter: Arc<WcuLimiter>,
    breaker: Arc<sluice_core::Breaker>,
    poll_wait: Duration,
    refresh: Option<(CancellationToken, JoinHandle<()>)>,
    /// This instance's lease in the fleet (rate.mode = "membership").
    member: Option<crate::membership::Member>,
}

/// Budgets derived from the table's capacity and the rate settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budgets {
    /// What the whole fleet may write, WCU per second.
    pub table: f64,
    /// What this instance paces to on its own: its share of `table`.
    pub local: f64,
}

/// The write budgets for a capacity: an explicit rate.wcu_per_second wins; otherwise
/// target_utilization × capacity (provisioned, or the configured on-demand ceiling). None: no
/// pacing (an on-demand table without a configured ceiling).
pub fn budgets(settings: &Settings, capacity: Option<TableCapacity>) -> Option<Budgets> {
    let capacity = capacity.map(|c| match c {
        TableCapacity::Provisioned(w) => Capacity::Provisioned(w),
        TableCapacity::OnDemand => Capacity::OnDemand(Default::default()),
    });
    budget_for(settings, capacity, true).map(|(b, _)| b)
}

/// How budgets will be found, in words, for `sluice validate` (which has no AWS access): the
/// figures are logged at start-up, once DescribeTable has given the capacities.
pub fn budget_rule(settings: &Settings) -> String {
    let r = &settings.rate;
    let u = r.target_utilization;
    let on_demand = match r.on_demand_wcu_per_second {
        Some(c) => format!(
            "{c} WCU/s (rate.on_demand_wcu_per_second), under MaxWriteRequestUnits when set"
        ),
        None => "MaxWriteRequestUnits when set, else the warm throughput".to_string(),
    };
    let table = match r.wcu_per_second {
        Some(w) => format!("table {w} WCU/s (rate.wcu_per_second)"),
        None => format!("table {u} × its provisioned WCU (on demand: {u} × {on_demand})"),
    };
    let share = match r.mode {
        RateMode::Membership => format!(
            "1 / the live members in lease table `{}` (rate.mode membership)",
            r.membership.table
        ),
        _ => format!("this instance's share {}", r.share()),
    };
    format!(
        "{table}; each global secondary index {u} × its own (same rule); × {share}; the tightest binds; the figures are logged at start"
    )
}

/// The budgets of one resource (the table when `table`, else an index) and why: an explicit
/// rate.wcu_per_second wins for the table; a provisioned capacity gives target_utilization ×
/// it; on demand, MaxWriteRequestUnits (capped by rate.on_demand_wcu_per_second when set), else
/// rate.on_demand_wcu_per_second, else the warm throughput (what DynamoDB takes at once). None:
/// no pacing (on demand with none of those known).
pub fn budget_for(
    settings: &Settings,
    capacity: Option<Capacity>,
    table: bool,
) -> Option<(Budgets, String)> {
    budget_with_share(settings, capacity, table, settings.rate.share())
}

/// [`budget_for`] with this instance's share given (membership moves it as the fleet changes).
fn budget_with_share(
    settings: &Settings,
    capacity: Option<Capacity>,
    table: bool,
    share: f64,
) -> Option<(Budgets, String)> {
    let r = &settings.rate;
    let u = r.target_utilization;
    // What DynamoDB refuses above, whatever sluice is told: the provisioned capacity, or an
    // on-demand maximum.
    let hard = match capacity {
        Some(Capacity::Provisioned(w)) => Some(w),
        Some(Capacity::OnDemand(l)) => l.max_write,
        None => None,
    };
    let (fleet, why) = match (r.wcu_per_second.filter(|_| table), capacity) {
        (Some(w), _) if hard.is_some_and(|h| u64::from(w.get()) > h) => {
            let h = hard.unwrap_or_default();
            (
                h as f64,
                format!(
                    "rate.wcu_per_second {w}, capped at the table's limit {h} (DynamoDB throttles above it)"
                ),
            )
        }
        (Some(w), _) => (f64::from(w.get()), "rate.wcu_per_second".to_string()),
        (None, Some(Capacity::Provisioned(w))) => {
            (w as f64 * u, format!("{u} × {w} WCU provisioned"))
        }
        (None, Some(Capacity::OnDemand(l))) => {
            match (l.max_write, r.on_demand_wcu_per_second, l.warm_write) {
                (Some(m), Some(c), _) if u64::from(c.get()) < m => (
                    f64::from(c.get()) * u,
                    format!(
                        "{u} × rate.on_demand_wcu_per_second {c} (under MaxWriteRequestUnits {m})"
                    ),
                ),
                (Some(m), _, _) => (
                    m as f64 * u,
                    format!("{u} × on-demand MaxWriteRequestUnits {m}"),
                ),
                (None, Some(c), _) => (
                    f64::from(c.get()) * u,
                    format!("{u} × rate.on_demand_wcu_per_second {c}"),
                ),
                (None, None, Some(w)) => (
                    w as f64 * u,
                    format!(
                        "{u} × on-demand warm throughput {w} (what DynamoDB takes at once; raise it with UpdateTable WarmThroughput, or set rate.on_demand_wcu_per_second, to let sluice go faster)"
                    ),
                ),
                (None, None, None) => return None,
            }
        }
        (None, None) => return None,
    };
    let why = if share < 1.0 {
        format!("{why}, this instance's share {share}")
    } else {
        why
    };
    Some((
        Budgets {
            table: fleet.max(1.0),
            local: (fleet * share).max(1.0),
        },
        why,
    ))
}

fn nonzero(x: f64) -> NonZeroU32 {
    NonZeroU32::new(x.floor().max(1.0) as u32).unwrap_or(NonZeroU32::MIN)
}

/// The key of a budget's shared bucket in Redis mode.
fn bucket_key(settings: &Settings, index: Option<&str>) -> String {
    let base = settings
        .rate
        .redis
        .key
        .clone()
        .unwrap_or_else(|| format!("sluice:bucket:{}", settings.dynamodb.table));
    match index {
        None => base,
        Some(i) => format!("{base}:index:{i}"),
    }
}

/// A budget's limiter: its local share, with the fleet bucket in Redis mode.
fn limiter_for(
    settings: &Settings,
    b: Budgets,
    index: Option<&str>,
) -> Result<(WcuLimiter, Option<Arc<RedisBucket>>)> {
    let limiter = match index {
        Some(i) => WcuLimiter::try_new_for_index(nonzero(b.local), settings.rate.burst_seconds, i),
        None => WcuLimiter::try_new(nonzero(b.local), settings.rate.burst_seconds),
    }
    .map_err(|e| anyhow!("rate.burst_seconds: {e}"))?;
    if settings.rate.mode != RateMode::Redis {
        return Ok((limiter, None));
    }
    let r = &settings.rate.redis;
    let shared = Arc::new(
        RedisBucket::new(
            r.url_str(),
            bucket_key(settings, index),
            bucket_rate(settings, b),
        )
        .map_err(|e| anyhow!("rate.redis.url: {e}"))?,
    );
    let lease = if r.lease_wcu > 0 {
        r.lease_wcu
    } else {
        ((b.table * 0.02) as u32).max(10)
    };
    let fleet = FleetConfig {
        lease_wcu: lease,
        timeout: r.timeout,
        retry_after: r.retry_after,
    };
    Ok((
        limiter.with_fleet(shared.clone() as Arc<dyn LeaseSource>, fleet),
        Some(shared),
    ))
}

fn bucket_rate(settings: &Settings, b: Budgets) -> BucketRate {
    BucketRate {
        wcu_per_second: b.table,
        burst_wcu: ((b.table * settings.rate.burst_seconds) as u32).max(1),
    }
}

/// The queue must exist; its visibility timeout (or sqs.visibility_timeout) is what the
/// heartbeat renews while a message is held.
async fn queue_visibility(settings: &Settings, sqs: &aws_sdk_sqs::Client) -> Result<Duration> {
    let queue = sluice_sqs::admin::visibility_timeout(sqs, settings.sqs.queue_url_str())
        .await
        .map_err(|e| {
            anyhow!(
                "cannot read queue `{}` (sqs.queue_url): {e}",
                settings.sqs.queue_url_str()
            )
        })?;
    let effective = settings.sqs.visibility_timeout.unwrap_or(queue);
    if effective < Duration::from_secs(2) {
        anyhow::bail!(
            "the queue's VisibilityTimeout is {}: set sqs.visibility_timeout to at least 2s so held messages can be kept invisible",
            humantime::format_duration(effective)
        );
    }
    Ok(effective)
}

/// The capacity of the table and of each of its indexes (DescribeTable, riding out a bad
/// minute). None when it cannot be read and the table is paced by `rate.wcu_per_second` alone (or
/// not at all); an error when the table is checked and nothing else gives a budget.
async fn discover_limits(
    settings: &Settings,
    ddb: &aws_sdk_dynamodb::Client,
) -> Result<Option<TableLimits>> {
    let table = &settings.dynamodb.table;
    let retry_for = settings.dynamodb.startup_retry_for;
    let limits = match crate::startup::retry("capacity discovery", retry_for, || {
        sluice_dynamodb::describe_limits(ddb, table)
    })
    .await
    {
        Ok(l) => l,
        Err(e) if settings.dynamodb.check_table && settings.rate.wcu_per_second.is_none() => {
            return Err(anyhow!(
                "{e}: cannot discover the write capacity (or set rate.wcu_per_second)"
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the table's limits: the table is paced to rate.wcu_per_second only (if set), its indexes not at all");
            return Ok(None);
        }
    };
    if let Capacity::Provisioned(w) = limits.table {
        metrics::gauge!(catalog::TABLE_CAPACITY_WCU).set(w as f64);
    }
    Ok(Some(limits))
}

/// The table's budget as a limiter (and its Redis bucket in `rate.mode = "redis"`); unlimited
/// when nothing gives the table a budget.
fn table_limiter(
    settings: &Settings,
    limits: Option<&TableLimits>,
) -> Result<(Arc<WcuLimiter>, Option<Arc<RedisBucket>>)> {
    let capacity = limits.map(|l| l.table.kind());
    match budget_for(settings, limits.map(|l| l.table), true) {
        Some((b, why)) => {
            metrics::gauge!(catalog::FLEET_WRITE_BUDGET_WCU_PER_SECOND).set(b.table);
            tracing::info!(table_budget_wcu_per_s = b.table.round(), local_budget_wcu_per_s = b.local.round(), mode = ?settings.rate.mode, capacity = ?capacity, why = %why, "write budget: table");
            let (limiter, shared) = limiter_for(settings, b, None)?;
            Ok((Arc::new(limiter), shared))
        }
        None => {
            tracing::warn!(
                "no write budget for the table (on-demand without MaxWriteRequestUnits, warm throughput or rate.on_demand_wcu_per_second, or capacity unknown): writes are not paced"
            );
            Ok((Arc::new(WcuLimiter::unlimited()), None))
        }
    }
}

/// A limiter per global secondary index with a known limit (an on-demand index without one is
/// not paced on its own).
#[allow(clippy::type_complexity)]
fn index_limiters(
    settings: &Settings,
    limits: Option<&TableLimits>,
) -> Result<Vec<(IndexSpec, Arc<WcuLimiter>, Option<Arc<RedisBucket>>)>> {
    let mut out = Vec::new();
    for (spec, cap) in limits.map_or(&[][..], |l| &l.indexes[..]) {
        match budget_for(settings, Some(*cap), false) {
            Some((b, why)) => {
                tracing::info!(index = %spec.name, budget_wcu_per_s = b.table.round(), local_budget_wcu_per_s = b.local.round(), why = %why, "write budget: index");
                let (l, shared) = limiter_for(settings, b, Some(&spec.name))?;
                out.push((spec.clone(), Arc::new(l), shared));
            }
            None => {
                tracing::info!(index = %spec.name, "index on demand without a known limit: not paced on its own")
            }
        }
    }
    Ok(out)
}

/// The look-aside write cache, when `cache.enabled`: local, or in front of the fleet's in Redis
/// (`cache.shared`).
fn write_cache(settings: &Settings) -> Result<Option<Arc<WriteCache>>> {
    let c = &settings.cache;
    if !c.enabled {
        return Ok(None);
    }
    let mut cache = WriteCache::new(c.config());
    if c.shared {
        let redis = &settings.rate.redis;
        // Beside the fleet's bucket: fleets that keep their buckets apart keep their caches apart.
        let prefix = match &redis.key {
            Some(key) => format!("{key}:seen:"),
            None => format!("sluice:seen:{}:", settings.dynamodb.table),
        };
        let shared =
            sluice_redis::RedisSeen::new(redis.url_str(), prefix, redis.timeout, redis.retry_after)
                .map_err(|e| anyhow!("cache.shared: {e}"))?;
        cache = cache.with_shared(Box::new(shared));
    }
    tracing::info!(capacity = c.capacity, window = ?c.window, shared = c.shared, "write cache on: a log written with the same content within the window is acked without a write");
    Ok(Some(Arc::new(cache)))
}

/// The engine on a Kafka consumer group (no visibility timeout, so no heartbeat).
fn kafka_engine(
    settings: &Settings,
    schema: Schema,
    writer: Writer,
) -> Result<(Engines, Duration)> {
    let k = &settings.kafka;
    let source = Arc::new(KafkaSource::start(k.kafka_config()).map_err(|e| {
        anyhow!(
            "cannot start the Kafka consumer (kafka.brokers `{}`, group `{}`): {e}",
            k.brokers,
            k.group_id
        )
    })?);
    let engine = Engine::new(
        source.clone(),
        writer,
        schema,
        EngineConfig {
            visibility_timeout: None,
            poll_wait: KAFKA_POLL_WAIT,
            ..settings.engine_config()
        },
    );
    Ok((Engines::Kafka(engine, source), KAFKA_POLL_WAIT))
}

/// The engine on the SQS queue, holding messages for the queue's (or the configured)
/// visibility timeout.
async fn sqs_engine(
    settings: &Settings,
    schema: Schema,
    sqs: &SdkConfig,
    writer: Writer,
) -> Result<(Engines, Duration)> {
    let sqs_client = sluice_sqs::client_with_deadlines(sqs, settings.sqs.request_timeout);
    let visibility = queue_visibility(settings, &sqs_client).await?;
    let source = SqsSource::new(
        sqs_client,
        SqsSourceConfig {
            queue_url: settings.sqs.queue_url_str().to_owned(),
            wait_time_seconds: settings.sqs.wait_time_seconds,
            visibility_timeout: settings.sqs.visibility_timeout,
            dead_letter_queue_url: settings.sqs.dead_letter_queue_url_string(),
            request_timeout: settings.sqs.request_timeout,
        },
    );
    let engine = Engine::new(
        Arc::new(source),
        writer,
        schema,
        EngineConfig {
            visibility_timeout: Some(visibility),
            ..settings.engine_config()
        },
    );
    let poll_wait = Duration::from_secs(u64::from(settings.sqs.wait_time_seconds));
    Ok((Engines::Sqs(engine), poll_wait))
}

impl Pipeline {
    /// Builds the pipeline; checks the table first when `dynamodb.check_table` is on.
    pub async fn build(settings: &Settings, sqs: &SdkConfig, dynamodb: &SdkConfig) -> Result<Self> {
        if let Some(n) = settings.worker.write_queue_items {
            tracing::warn!(
                write_queue_items = n,
                "worker.write_queue_items is no longer used (the writer takes each message whole; worker.max_in_flight_bytes bounds memory): remove it"
            );
        }
        let table_writer = DynamoDbWriter::new(
            sluice_dynamodb::writer_client(dynamodb),
            &settings.dynamodb.table,
            &settings.schema.key_attribute,
        );
        if settings.dynamodb.check_table {
            let retry_for = settings.dynamodb.startup_retry_for;
            crate::startup::retry("the table check", retry_for, || table_writer.check_table())
                .await
                .map_err(|e| anyhow!(e))?;
        }
        let ddb = sluice_dynamodb::writer_client(dynamodb);
        // The table and every index: each is a budget, the tightest binds.
        let limits = discover_limits(settings, &ddb).await?;
        let schema = Schema {
            compression: crate::items::compression(settings, &ddb, limits.as_ref()).await?,
            ..settings.schema()
        };
        let (limiter, bucket) = table_limiter(settings, limits.as_ref())?;
        let indexes = index_limiters(settings, limits.as_ref())?;
        let pacer = Pacer::new(
            limiter.clone(),
            settings.schema.key_attribute.clone(),
            indexes
                .iter()
                .map(|(s, l, _)| (s.clone(), l.clone()))
                .collect(),
        );
        pacer.describe_throttles();
        let budgeted = Arc::new(Budgeted {
            settings: settings.clone(),
            table: limiter.clone(),
            bucket,
            indexes,
            state: std::sync::Mutex::new((limits.clone(), settings.rate.share())),
        });
        // Follow capacity changes (UpdateTable) of the table and its indexes.
        let refresh = limits.is_some().then(|| {
            let stop = CancellationToken::new();
            let task = tokio::spawn(refresh_budget(
                settings.clone(),
                ddb.clone(),
                budgeted.clone(),
                stop.clone(),
            ));
            (stop, task)
        });
        let writer_config = WriterConfig {
            cache: write_cache(settings)?,
            ..settings.writer_config()
        };
        let (writer, writer_task) = Writer::spawn(Arc::new(table_writer), pacer, writer_config);
        let writer_stats = writer.stats();
        let breaker = writer.breaker();
        let (engine, poll_wait) = if settings.kafka.enabled {
            kafka_engine(settings, schema, writer)?
        } else {
            sqs_engine(settings, schema, sqs, writer).await?
        };
        // Join the fleet: every budget is held until the other members have made room.
        let member = if settings.rate.mode == RateMode::Membership {
            Some(crate::membership::join(settings, ddb, budgeted).await?)
        } else {
            None
        };
        Ok(Pipeline {
            engine,
            writer_stats,
            writer_task,
            limiter,
            breaker,
            poll_wait,
            refresh,
            member,
        })
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        match &self.engine {
            Engines::Sqs(e) => e.stats(),
            Engines::Kafka(e, _) => e.stats(),
        }
    }

    pub fn writer_stats(&self) -> Arc<WriterStats> {
        self.writer_stats.clone()
    }

    pub fn limiter(&self) -> Arc<WcuLimiter> {
        self.limiter.clone()
    }

    pub fn breaker(&self) -> Arc<sluice_core::Breaker> {
        self.breaker.clone()
    }

    pub fn poll_wait(&self) -> Duration {
        self.poll_wait
    }

    /// Runs until `shutdown`, drains, and returns the final counts.
    pub async fn run(self, shutdown: CancellationToken) -> StatsSnapshot {
        let snapshot = match self.engine {
            Engines::Sqs(e) => e.run(shutdown).await,
            Engines::Kafka(e, source) => {
                let snapshot = e.run(shutdown).await;
                // Every record is written or returned: commit and leave the group.
                if tokio::time::timeout(AFTER_ENGINE, source.close())
                    .await
                    .is_err()
                {
                    tracing::error!(
                        "the Kafka consumer did not close in time; uncommitted records are read again by the group"
                    );
                }
                snapshot
            }
        };
        // The engine has returned within shutdown_grace + SHUTDOWN_MARGIN; what the writer still
        // does is for messages that were already given up on.
        if tokio::time::timeout(AFTER_ENGINE, self.writer_task)
            .await
            .is_err()
        {
            tracing::warn!("the writer had calls in flight at exit; their messages come back");
        }
        if let Some((stop, task)) = self.refresh {
            stop.cancel();
            task.abort(); // a DescribeTable in flight is of no use any more
            let _ = task.await;
        }
        // Nothing is written any more: the others may take this instance's share.
        if let Some(member) = self.member {
            member.leave().await;
        }
        snapshot
    }
}

/// The limiters the capacity refresh and fleet membership move: the table's and each index's,
/// with their shared buckets in Redis mode, and what their budgets are made from.
struct Budgeted {
    settings: Settings,
    table: Arc<WcuLimiter>,
    bucket: Option<Arc<RedisBucket>>,
    indexes: Vec<(IndexSpec, Arc<WcuLimiter>, Option<Arc<RedisBucket>>)>,
    /// The last capacities read (None: unknown, rate.wcu_per_second alone) and this instance's
    /// share.
    state: std::sync::Mutex<(Option<TableLimits>, f64)>,
}

impl Budgeted {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<TableLimits>, f64)> {
        self.state.locked()
    }

    fn set_limits(&self, limits: TableLimits) {
        self.lock().0 = Some(limits);
        self.apply();
    }

    /// Moves every budget to what the capacities and the share give now. The state stays
    /// locked throughout: the refresh and the membership task apply one after the other, so
    /// an older share can never be written over a newer one.
    fn apply(&self) {
        let state = self.lock();
        let (limits, share) = state.clone();
        let settings = &self.settings;
        match budget_with_share(settings, limits.as_ref().map(|l| l.table), true, share) {
            Some((b, _)) => {
                metrics::gauge!(catalog::FLEET_WRITE_BUDGET_WCU_PER_SECOND).set(b.table);
                self.table.set_budget(nonzero(b.local));
                if let Some(bucket) = &self.bucket {
                    bucket.set_rate(bucket_rate(settings, b));
                }
            }
            None => tracing::warn!(
                capacity = ?limits.as_ref().map(|l| l.table),
                "the table has no capacity to pace to now; keeping the current budget"
            ),
        }
        let Some(limits) = limits else { return };
        for (spec, limiter, bucket) in &self.indexes {
            let Some((_, cap)) = limits.indexes.iter().find(|(s, _)| s.name == spec.name) else {
                continue;
            };
            if let Some((b, _)) = budget_with_share(settings, Some(*cap), false, share) {
                limiter.set_budget(nonzero(b.local));
                if let Some(bucket) = bucket {
                    bucket.set_rate(bucket_rate(settings, b));
                }
            }
        }
    }
}

impl crate::membership::Shared for Budgeted {
    fn set_share(&self, share: f64) {
        let changed = {
            let mut state = self.lock();
            let changed = (state.1 - share).abs() > f64::EPSILON;
            state.1 = share;
            changed
        };
        if changed {
            self.apply();
        }
    }

    fn hold(&self, held: bool) {
        self.table.hold(held);
        for (_, limiter, _) in &self.indexes {
            limiter.hold(held);
        }
    }
}

/// Reads the table's and its indexes' capacity every rate.refresh_interval and moves the budgets
/// with it.
async fn refresh_budget(
    settings: Settings,
    ddb: aws_sdk_dynamodb::Client,
    budgets: Arc<Budgeted>,
    stop: CancellationToken,
) {
    let table = settings.dynamodb.table.clone();
    let mut warned = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.rate.refresh_interval) => {}
        }
        let limits = match sluice_dynamodb::describe_limits(&ddb, &table).await {
            Ok(l) => l,
            Err(error) => {
                crate::events::CapacityRefreshFailed { error: &error }.emit();
                continue;
            }
        };
        if budgets.lock().0.as_ref() == Some(&limits) {
            continue;
        }
        if let Capacity::Provisioned(w) = limits.table {
            metrics::gauge!(catalog::TABLE_CAPACITY_WCU).set(w as f64);
        }
        budgets.set_limits(limits.clone());
        // Indexes are paced from the budgets made at the start; one created since is said once
        // (compared with what the start paced, so one created before the first refresh is
        // said too).
        for (spec, _) in &limits.indexes {
            if !budgets.indexes.iter().any(|(s, _, _)| s.name == spec.name)
                && warned.insert(spec.name.clone())
            {
                tracing::warn!(index = %spec.name, "an index sluice does not pace on its own (created since the start, or on demand without a known limit): it is paced from the next start of sluice, and throttles naming it slow every budget meanwhile");
                if settings.schema.compression == crate::config::CompressionKind::Zstd {
                    tracing::warn!(index = %spec.name, hash_key = %spec.hash_key, "if this index was created since the start, compressed items keep its attributes inside `_log` until sluice restarts (the plain attributes are read at start), and those items are not in the index: restart sluice");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.sqs.queue_url = Some("https://q/x".parse().unwrap());
        s.dynamodb.table = "tbl".into();
        s
    }

    #[test]
    fn the_budget_is_target_utilization_times_provisioned_capacity() {
        let s = settings();
        let b = budgets(&s, Some(TableCapacity::Provisioned(1000))).unwrap();
        assert_eq!((b.table, b.local), (980.0, 980.0));
    }

    #[test]
    fn an_explicit_budget_wins_over_discovery() {
        let mut s = settings();
        s.rate.wcu_per_second = std::num::NonZeroU32::new(300);
        let b = budgets(&s, Some(TableCapacity::Provisioned(1000))).unwrap();
        assert_eq!(b.table, 300.0);
        assert_eq!(budgets(&s, None).unwrap().table, 300.0);
    }

    #[test]
    fn on_demand_tables_pace_to_the_configured_ceiling_or_not_at_all() {
        let mut s = settings();
        assert_eq!(budgets(&s, Some(TableCapacity::OnDemand)), None);
        s.rate.on_demand_wcu_per_second = std::num::NonZeroU32::new(4000);
        assert_eq!(
            budgets(&s, Some(TableCapacity::OnDemand)).unwrap().table,
            3920.0
        );
    }

    #[test]
    fn each_instance_takes_its_share_of_the_table_budget() {
        let mut s = settings();
        s.rate.expected_replicas = std::num::NonZeroU32::new(4);
        let b = budgets(&s, Some(TableCapacity::Provisioned(1000))).unwrap();
        assert_eq!((b.table, b.local), (980.0, 245.0));
        s.rate.expected_replicas = None;
        s.rate.share = Some(0.5);
        assert_eq!(
            budgets(&s, Some(TableCapacity::Provisioned(1000)))
                .unwrap()
                .local,
            490.0
        );
    }

    #[test]
    fn on_demand_budgets_come_from_the_maximum_the_setting_or_the_warm_throughput() {
        use sluice_dynamodb::OnDemandLimits;
        let s = settings();
        let od = |max_write, warm_write| {
            Some(Capacity::OnDemand(OnDemandLimits {
                max_write,
                warm_write,
            }))
        };
        let (b, why) = budget_for(&s, od(Some(500), Some(4000)), true).unwrap();
        assert_eq!(b.table, 490.0);
        assert!(why.contains("MaxWriteRequestUnits 500"), "{why}");
        let (b, why) = budget_for(&s, od(None, Some(4000)), true).unwrap();
        assert_eq!(b.table, 3920.0);
        assert!(why.contains("warm throughput 4000"), "{why}");
        assert!(
            budget_for(&s, od(None, None), true).is_none(),
            "nothing known: unpaced"
        );
        let mut s = settings();
        s.rate.on_demand_wcu_per_second = std::num::NonZeroU32::new(200);
        let (b, why) = budget_for(&s, od(Some(500), Some(4000)), true).unwrap();
        assert_eq!(b.table, 196.0, "the setting, under the maximum");
        assert!(why.contains("rate.on_demand_wcu_per_second 200"), "{why}");
        let (b, _) = budget_for(&s, od(None, Some(4000)), true).unwrap();
        assert_eq!(b.table, 196.0, "the setting over the warm throughput");
        // An explicit budget is the table's only: an index keeps its own.
        let mut s = settings();
        s.rate.wcu_per_second = std::num::NonZeroU32::new(1000);
        assert_eq!(
            budget_for(&s, Some(Capacity::Provisioned(60)), false)
                .unwrap()
                .0
                .table,
            58.8
        );
    }

    #[test]
    fn an_explicit_budget_never_exceeds_what_dynamodb_refuses_above() {
        use sluice_dynamodb::OnDemandLimits;
        let mut s = settings();
        s.rate.wcu_per_second = std::num::NonZeroU32::new(1000);
        let max = Some(Capacity::OnDemand(OnDemandLimits {
            max_write: Some(500),
            warm_write: Some(4000),
        }));
        let (b, why) = budget_for(&s, max, true).unwrap();
        assert_eq!(b.table, 500.0);
        assert!(why.contains("capped at the table's limit 500"), "{why}");
        let (b, _) = budget_for(&s, Some(Capacity::Provisioned(200)), true).unwrap();
        assert_eq!(b.table, 200.0);
        s.rate.wcu_per_second = std::num::NonZeroU32::new(150);
        let (b, _) = budget_for(&s, Some(Capacity::Provisioned(200)), true).unwrap();
        assert_eq!(b.table, 150.0, "below the limit, the setting stands");
    }
}
