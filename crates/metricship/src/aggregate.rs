//! The one aggregation both outputs read.
//!
//! Each series keeps a cumulative state for Prometheus (counter totals,
//! histogram buckets, the last gauge value) and an interval state for
//! CloudWatch (the counter sum, the gauge's last value, the distinct
//! observation values with their counts) that [`Aggregator::flush`] drains.
//!
//! The hot path is [`Aggregator::ingest`]: a line's raw identity (name, type and
//! tags as sent) is looked up in a cache, so mapping rules and label building run
//! once per distinct raw name, not once per line. Live series are bounded by
//! `max_series` (new ones beyond it are dropped and counted) and expire after
//! `ttl` without samples.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::datum::{Allowlist, Datum, DatumValue, Unit};
use crate::mapping::{Mapped, Mapper, Target};
use crate::signal::{Role, SignalInputs, role_of};
use crate::statsd::{
    Line, MetricType, ParseError, Sample, lines, parse_line, parse_str, str_lines,
};

/// CloudWatch takes at most 150 distinct values per datum; beyond that a
/// series is sent as a statistic set.
pub const MAX_DISTINCT_VALUES: usize = 150;

/// Distinct members kept per set per interval (memory bound against hostile senders).
pub const MAX_SET_MEMBERS: usize = 10_000;

/// Default Prometheus histogram buckets, in seconds for timers: Airflow's
/// durations run from milliseconds (scheduler loops) to hours (DAG runs).
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    1800.0, 3600.0, 7200.0,
];

/// Counters of what ingest did since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestStats {
    /// Lines parsed successfully.
    pub lines: u64,
    /// Lines rejected by the parser.
    pub malformed: u64,
    /// Lines dropped by a mapping rule.
    pub mapped_drop: u64,
    /// Lines dropped as ambiguous (a name that needs tags it did not have).
    pub ambiguous: u64,
    /// Lines whose type conflicts with the existing series of the same name.
    pub type_conflict: u64,
    /// Lines dropped because the series cap was reached.
    pub over_cap: u64,
    /// Series created.
    pub series_created: u64,
    /// Series refused because of the cap (distinct raw names refused).
    pub series_refused: u64,
    /// Series refused because the memory budget was full.
    pub series_refused_budget: u64,
    /// Lines dropped because their series was refused by the memory budget.
    pub over_budget: u64,
    /// Set members not kept because the memory budget (or the per-set cap) was reached.
    pub set_members_refused: u64,
    /// Times the raw-name cache was cleared to stay within its share of the budget.
    pub cache_clears: u64,
    /// Series expired after the TTL.
    pub series_expired: u64,
}

/// A series' identity. Ordered by name, then labels: the index keeps series in
/// exposition order, so a scrape can walk them a chunk at a time without sorting.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SeriesId {
    name: Arc<str>,
    labels: Box<[(Box<str>, Box<str>)]>,
}

impl SeriesId {
    /// The metric name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Where a walk over the series in exposition order stopped: the last series visited.
#[derive(Debug, Clone, Default)]
pub struct SeriesCursor(pub(crate) Option<Arc<SeriesId>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Counter,
    Gauge,
    Observer,
    Set,
}

impl Family {
    fn of(kind: MetricType) -> Self {
        match kind {
            MetricType::Counter => Family::Counter,
            MetricType::Gauge => Family::Gauge,
            MetricType::Set => Family::Set,
            _ => Family::Observer,
        }
    }
}

#[derive(Debug)]
struct Observer {
    /// `ms` timers: Prometheus in seconds, CloudWatch in milliseconds.
    millis: bool,
    buckets: Arc<[f64]>,
    bucket_counts: Box<[f64]>,
    sum: f64,
    count: f64,
    /// Only for series that go to CloudWatch (the others never need distinct values).
    interval: Option<Box<Interval>>,
}

#[derive(Debug, Default)]
struct Interval {
    values: Vec<(f64, f64)>,
    overflow: bool,
    count: f64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Interval {
    fn observe(&mut self, v: f64, weight: f64) {
        if self.count == 0.0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += weight;
        self.sum += v * weight;
        if self.overflow {
            return;
        }
        if let Some(e) = self.values.iter_mut().find(|(x, _)| *x == v) {
            e.1 += weight;
        } else if self.values.len() < MAX_DISTINCT_VALUES {
            self.values.push((v, weight));
        } else {
            self.overflow = true;
            self.values = Vec::new();
        }
    }

    fn take(&mut self) -> Option<DatumValue> {
        if self.count == 0.0 {
            return None;
        }
        let taken = std::mem::take(self);
        Some(if taken.overflow {
            DatumValue::Stats {
                count: taken.count,
                sum: taken.sum,
                min: taken.min,
                max: taken.max,
            }
        } else {
            let (values, counts) = taken.values.into_iter().unzip();
            DatumValue::Values { values, counts }
        })
    }
}

// The set is boxed on purpose: inline, its table header would make every series'
// state (counters and gauges included) three times larger.
#[allow(clippy::box_collection)]
#[derive(Debug)]
enum State {
    Counter {
        total: f64,
        interval: f64,
    },
    Gauge {
        value: f64,
    },
    Observer(Box<Observer>),
    Set {
        // Boxed: sets are rare, and inline the table would double every series' size.
        members: Box<HashSet<Box<str>>>,
        last: f64,
    },
}

#[derive(Debug)]
struct Series {
    id: Arc<SeriesId>,
    help: Option<Arc<str>>,
    state: State,
    generation: u32,
    /// Seconds since the aggregator started (4 bytes instead of an Instant's 16).
    last_seen: u32,
    touched: bool,
    cloudwatch: bool,
}

#[derive(Debug, Clone, Copy)]
enum Resolved {
    Series {
        slot: u32,
        generation: u32,
    },
    Drop,
    Ambiguous,
    Conflict,
    /// Refused by the cap (or, with `budget`, by the memory budget); valid while no
    /// series has expired since.
    OverCap {
        epoch: u64,
        budget: bool,
    },
}

#[derive(Debug, Clone)]
struct CacheEntry {
    resolved: Resolved,
    // Boxed: most lines have no role, and the cache has an entry per raw name.
    role: Option<Box<Role>>,
}

/// Settings of the aggregation.
#[derive(Debug, Clone)]
pub struct AggregatorSettings {
    /// Upper bound of live series.
    pub max_series: usize,
    /// Idle series expire after this long.
    pub ttl: Duration,
    /// Airflow's statsd_prefix, for the signal inputs.
    pub prefix: String,
    /// Series sent to CloudWatch.
    pub allowlist: Allowlist,
    /// Upper bound, in bytes, of the state a sender can make us keep: the raw-name cache
    /// (at most a quarter of it; cleared when full), the series' names and labels and
    /// their state, and set members. New series and set members beyond it are refused
    /// and counted. An estimate sized above what the allocator really uses.
    pub max_bytes: usize,
}

/// Bytes of state kept per part (see [`AggregatorSettings::max_bytes`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateBytes {
    /// The raw-name cache.
    pub cache: usize,
    /// Series identities and state.
    pub series: usize,
    /// Set members of the current interval.
    pub sets: usize,
}

impl StateBytes {
    /// The sum of the parts.
    pub fn total(&self) -> usize {
        self.cache + self.series + self.sets
    }
}

/// Estimated heap bytes of one raw-name cache entry besides its key: the table slot, the
/// boxed key's header and the entry (a role is counted by its own size).
const CACHE_ENTRY_OVERHEAD: usize = 96;
/// Estimated heap bytes of one series besides its names, labels and buckets: the slot,
/// the index entry, the `Arc`'d identity and the boxed state.
const SERIES_OVERHEAD: usize = 256;
/// Estimated heap bytes of one set member besides its text: the table slot and the box.
const SET_MEMBER_OVERHEAD: usize = 48;

/// One series as the Prometheus exposition sees it: (name, labels, help, value).
pub(crate) type SeriesView<'a> = (
    &'a str,
    &'a [(Box<str>, Box<str>)],
    Option<&'a str>,
    PromValue<'a>,
);

/// A cumulative view of one series for the Prometheus exposition.
pub(crate) enum PromValue<'a> {
    Counter(f64),
    Gauge(f64),
    Histogram {
        buckets: &'a [f64],
        counts: &'a [f64],
        sum: f64,
        count: f64,
    },
}

/// The aggregation state. Not thread-safe by itself: the daemon keeps it behind a mutex
/// held by the receiver for one batch of packets at a time.
pub struct Aggregator {
    mapper: Arc<Mapper>,
    settings: AggregatorSettings,
    cache: FastMap<Box<[u8]>, CacheEntry>,
    /// Live series by identity, in exposition order (see [`SeriesId`]).
    index: BTreeMap<Arc<SeriesId>, u32>,
    /// The default buckets, shared by every histogram that has no buckets of its own.
    default_buckets: Arc<[f64]>,
    slots: Vec<Option<Series>>,
    free: Vec<u32>,
    live: usize,
    epoch: u64,
    started: Instant,
    key: Vec<u8>,
    bytes: StateBytes,
    /// Signal inputs, fed in the same pass.
    pub signal: SignalInputs,
    /// What ingest did.
    pub stats: IngestStats,
}

impl Aggregator {
    /// A new, empty aggregation.
    pub fn new(mapper: Arc<Mapper>, settings: AggregatorSettings) -> Self {
        Self {
            mapper,
            settings,
            cache: FastMap::default(),
            index: BTreeMap::new(),
            default_buckets: Arc::from(DEFAULT_BUCKETS),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            epoch: 0,
            started: Instant::now(),
            key: Vec::with_capacity(256),
            bytes: StateBytes::default(),
            signal: SignalInputs::default(),
            stats: IngestStats::default(),
        }
    }

    /// Live series.
    pub fn live_series(&self) -> usize {
        self.live
    }

    /// The state's estimated size, per part.
    pub fn state_bytes(&self) -> StateBytes {
        self.bytes
    }

    /// The budget the state is held to.
    pub fn max_bytes(&self) -> usize {
        self.settings.max_bytes
    }

    /// What the cache may hold: a quarter of the budget.
    fn cache_budget(&self) -> usize {
        self.settings.max_bytes / 4
    }

    /// Whether `more` bytes of series or set state still fit.
    fn state_fits(&self, more: usize) -> bool {
        self.bytes.series + self.bytes.sets + more <= self.settings.max_bytes - self.cache_budget()
    }

    /// Ingests one packet (one or more lines). Returns the number of lines seen.
    pub fn ingest_packet(&mut self, packet: &[u8], now: Instant) -> u64 {
        let secs = self.secs(now);
        let mut n = 0;
        // Almost every packet is valid UTF-8 as a whole: then it is checked once, not
        // line by line. A packet that is not is split as bytes, and its lines checked
        // one by one, so that its valid lines still count.
        if let Ok(text) = std::str::from_utf8(packet) {
            for line in str_lines(text) {
                n += 1;
                let parsed = parse_str(line);
                self.ingest_parsed(parsed, line.as_bytes(), now, secs);
            }
        } else {
            for raw in lines(packet) {
                n += 1;
                self.ingest_parsed(parse_line(raw), raw, now, secs);
            }
        }
        n
    }

    fn ingest_parsed(
        &mut self,
        parsed: Result<Line<'_>, ParseError>,
        raw: &[u8],
        now: Instant,
        secs: u32,
    ) {
        match parsed {
            Ok(line) => self.ingest_line(&line, now, secs),
            Err(e) => {
                self.stats.malformed += 1;
                tracing::trace!(error = %e, line = %String::from_utf8_lossy(raw), "malformed StatsD line");
            }
        }
    }

    /// Ingests one line.
    pub fn ingest(&mut self, raw: &[u8], now: Instant) -> Result<(), ParseError> {
        let line = parse_line(raw)?;
        let secs = self.secs(now);
        self.ingest_line(&line, now, secs);
        Ok(())
    }

    /// Ingests a parsed line; `secs` is `now` as [`Aggregator::secs`] counts it.
    fn ingest_line(&mut self, line: &Line<'_>, now: Instant, secs: u32) {
        self.stats.lines += 1;
        // The raw identity: name (with Influx tags), type, DogStatsD tags.
        self.key.clear();
        self.key.extend_from_slice(line.name.as_bytes());
        if let Some(t) = line.influx_tags {
            self.key.push(b',');
            self.key.extend_from_slice(t.as_bytes());
        }
        self.key.push(b'|');
        self.key.extend_from_slice(line.kind.code().as_bytes());
        if let Some(t) = line.dog_tags {
            self.key.push(b'#');
            self.key.extend_from_slice(t.as_bytes());
        }
        // The entry is used in place: cloning it would clone its role (an allocation).
        let resolved = match self.cache.get(self.key.as_slice()) {
            Some(e) if self.still_valid(&e.resolved) => {
                if let Some(role) = &e.role {
                    self.signal.observe(role, last_sample(line), now);
                }
                e.resolved
            }
            _ => {
                let e = self.resolve(line, now);
                if let Some(role) = &e.role {
                    self.signal.observe(role, last_sample(line), now);
                }
                let resolved = e.resolved;
                let cost = self.key.len()
                    + CACHE_ENTRY_OVERHEAD
                    + e.role.as_ref().map_or(0, |r| role_bytes(r));
                if self.cache.len() >= self.settings.max_series.saturating_mul(4).max(1024)
                    || self.bytes.cache + cost > self.cache_budget()
                {
                    // Bounded in entries and bytes: many raw spellings of few series, or
                    // an attack. A cache: clearing it costs only the lookups to refill it.
                    self.cache.clear();
                    self.bytes.cache = 0;
                    self.stats.cache_clears += 1;
                }
                self.bytes.cache += cost;
                self.cache.insert(self.key.clone().into_boxed_slice(), e);
                resolved
            }
        };
        match resolved {
            Resolved::Series { slot, .. } => self.apply(slot, line, secs),
            Resolved::Drop => self.stats.mapped_drop += 1,
            Resolved::Ambiguous => self.stats.ambiguous += 1,
            Resolved::Conflict => self.stats.type_conflict += 1,
            Resolved::OverCap { budget: false, .. } => self.stats.over_cap += 1,
            Resolved::OverCap { budget: true, .. } => self.stats.over_budget += 1,
        }
    }

    fn still_valid(&self, r: &Resolved) -> bool {
        match *r {
            Resolved::Series { slot, generation } => self
                .slots
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.generation == generation),
            Resolved::OverCap { epoch, .. } => epoch == self.epoch,
            _ => true,
        }
    }

    fn resolve(&mut self, line: &Line<'_>, now: Instant) -> CacheEntry {
        let role = role_of(&self.settings.prefix, line);
        let resolved = match self.mapper.map(line) {
            Mapped::Drop => Resolved::Drop,
            Mapped::Ambiguous => Resolved::Ambiguous,
            Mapped::Keep(target) => self.series_for(target, line.kind, now),
        };
        CacheEntry {
            resolved,
            role: role.map(Box::new),
        }
    }

    fn series_for(&mut self, target: Target, kind: MetricType, now: Instant) -> Resolved {
        let id = SeriesId {
            name: target.name.as_str().into(),
            labels: target
                .labels
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        };
        let family = Family::of(kind);
        let cloudwatch = self.settings.allowlist.allows(&id.name);
        if let Some(&slot) = self.index.get(&id) {
            let s = self.slots[slot as usize]
                .as_ref()
                .expect("indexed slot is live");
            let existing = match s.state {
                State::Counter { .. } => Family::Counter,
                State::Gauge { .. } => Family::Gauge,
                State::Observer(_) => Family::Observer,
                State::Set { .. } => Family::Set,
            };
            return if existing == family {
                Resolved::Series {
                    slot,
                    generation: s.generation,
                }
            } else {
                Resolved::Conflict
            };
        }
        if self.live >= self.settings.max_series {
            self.stats.series_refused += 1;
            return Resolved::OverCap {
                epoch: self.epoch,
                budget: false,
            };
        }
        let buckets_len = match family {
            Family::Observer => target
                .buckets
                .as_ref()
                .map_or(self.default_buckets.len(), |b| b.len()),
            _ => 0,
        };
        let cost = series_bytes(&id, family, buckets_len, cloudwatch);
        if !self.state_fits(cost) {
            self.stats.series_refused_budget += 1;
            return Resolved::OverCap {
                epoch: self.epoch,
                budget: true,
            };
        }
        self.bytes.series += cost;
        let state = match family {
            Family::Counter => State::Counter {
                total: 0.0,
                interval: 0.0,
            },
            Family::Gauge => State::Gauge { value: 0.0 },
            Family::Set => State::Set {
                members: Box::default(),
                last: 0.0,
            },
            Family::Observer => {
                let buckets = target
                    .buckets
                    .unwrap_or_else(|| self.default_buckets.clone());
                State::Observer(Box::new(Observer {
                    millis: kind == MetricType::Timer,
                    bucket_counts: vec![0.0; buckets.len()].into_boxed_slice(),
                    buckets,
                    sum: 0.0,
                    count: 0.0,
                    interval: cloudwatch.then(Box::default),
                }))
            }
        };
        let id = Arc::new(id);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let generation =
            self.epoch as u32 ^ slot.rotate_left(16) ^ self.stats.series_created as u32;
        self.slots[slot as usize] = Some(Series {
            id: id.clone(),
            help: target.help,
            state,
            generation,
            last_seen: self.secs(now),
            touched: false,
            cloudwatch,
        });
        self.index.insert(id, slot);
        self.live += 1;
        self.stats.series_created += 1;
        Resolved::Series { slot, generation }
    }

    fn secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.started).as_secs()).unwrap_or(u32::MAX)
    }

    fn apply(&mut self, slot: u32, line: &Line<'_>, last_seen: u32) {
        let Some(series) = self.slots[slot as usize].as_mut() else {
            return;
        };
        series.last_seen = last_seen;
        series.touched = true;
        if let State::Set { members, .. } = &mut series.state {
            if !members.contains(line.values) {
                let cost = line.values.len() + SET_MEMBER_OVERHEAD;
                let fits = self.bytes.series + self.bytes.sets + cost
                    <= self.settings.max_bytes - self.settings.max_bytes / 4;
                if members.len() < MAX_SET_MEMBERS && fits {
                    members.insert(line.values.into());
                    self.bytes.sets += cost;
                } else {
                    self.stats.set_members_refused += 1;
                }
            }
            return;
        }
        // 1/1 is 1: the division is only worth doing for sampled lines.
        let weight = if line.rate == 1.0 {
            1.0
        } else {
            1.0 / line.rate
        };
        match line.single_sample() {
            Some(sample) => apply_sample(&mut series.state, sample, weight),
            None => {
                for sample in line.samples() {
                    apply_sample(&mut series.state, sample, weight);
                }
            }
        }
    }

    /// Ends an interval: returns the CloudWatch datums of allowlisted series touched in it,
    /// resets interval state and expires idle series.
    pub fn flush(&mut self, now: Instant, at: SystemTime) -> Vec<Datum> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        let now_secs = self.secs(now);
        let ttl_secs = self.settings.ttl.as_secs();
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            let Some(series) = entry.as_mut() else {
                continue;
            };
            if series.touched {
                series.touched = false;
                let (value, unit) = match &mut series.state {
                    State::Counter { interval, .. } => (
                        Some(DatumValue::Single(std::mem::take(interval))),
                        Unit::Count,
                    ),
                    State::Gauge { value } => (Some(DatumValue::Single(*value)), Unit::None),
                    State::Observer(o) => (
                        o.interval.as_mut().and_then(|i| i.take()),
                        if o.millis {
                            Unit::Milliseconds
                        } else {
                            Unit::None
                        },
                    ),
                    State::Set { members, last } => {
                        *last = members.len() as f64;
                        let freed: usize =
                            members.iter().map(|m| m.len() + SET_MEMBER_OVERHEAD).sum();
                        self.bytes.sets = self.bytes.sets.saturating_sub(freed);
                        // A set that held many members gives its table back too.
                        **members = HashSet::default();
                        (Some(DatumValue::Single(*last)), Unit::Count)
                    }
                };
                if let (true, Some(value)) = (series.cloudwatch, value) {
                    out.push(Datum {
                        name: series.id.name.clone(),
                        dimensions: series
                            .id
                            .labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        value,
                        unit,
                        high_resolution: false,
                        timestamp: at,
                    });
                }
            } else if u64::from(now_secs.saturating_sub(series.last_seen)) > ttl_secs {
                expired.push(slot);
            }
        }
        for slot in expired {
            if let Some(series) = self.slots[slot].take() {
                let (family, buckets, cloudwatch) = match &series.state {
                    State::Counter { .. } => (Family::Counter, 0, false),
                    State::Gauge { .. } => (Family::Gauge, 0, false),
                    State::Set { .. } => (Family::Set, 0, false),
                    State::Observer(o) => (Family::Observer, o.buckets.len(), o.interval.is_some()),
                };
                self.bytes.series = self
                    .bytes
                    .series
                    .saturating_sub(series_bytes(&series.id, family, buckets, cloudwatch));
                self.index.remove(&series.id);
                self.free.push(slot as u32);
                self.live -= 1;
                self.stats.series_expired += 1;
            }
        }
        if self.stats.series_expired > 0 {
            // Series were freed: cached cap refusals may now fit.
            self.epoch += 1;
        }
        out
    }

    /// The live series after `cursor`, in exposition order (by name, then labels), each
    /// with its identity (to resume from) and its view: (name, labels, help, value).
    pub(crate) fn series_after<'a>(
        &'a self,
        cursor: &SeriesCursor,
    ) -> impl Iterator<Item = (&'a Arc<SeriesId>, SeriesView<'a>)> {
        let from = match &cursor.0 {
            Some(id) => Bound::Excluded(&**id),
            None => Bound::Unbounded,
        };
        self.index
            .range::<SeriesId, _>((from, Bound::Unbounded))
            .filter_map(|(id, &slot)| {
                let series = self.slots.get(slot as usize)?.as_ref()?;
                Some((id, series))
            })
            .map(|(id, series)| {
                let value = match &series.state {
                    State::Counter { total, .. } => PromValue::Counter(*total),
                    State::Gauge { value } => PromValue::Gauge(*value),
                    State::Set { last, .. } => PromValue::Gauge(*last),
                    State::Observer(o) => PromValue::Histogram {
                        buckets: &o.buckets,
                        counts: &o.bucket_counts,
                        sum: o.sum,
                        count: o.count,
                    },
                };
                (
                    id,
                    (
                        &*series.id.name,
                        &*series.id.labels,
                        series.help.as_deref(),
                        value,
                    ),
                )
            })
    }
}

/// The last sample of a line (what a signal input reads), without an iterator for the
/// usual single value.
/// The estimated heap bytes of a series: its identity (held twice: slot and index share
/// one `Arc`), its state and, for a histogram, its buckets and interval values.
fn series_bytes(id: &SeriesId, family: Family, buckets: usize, cloudwatch: bool) -> usize {
    let labels: usize = id.labels.iter().map(|(k, v)| k.len() + v.len() + 32).sum();
    let state = match family {
        Family::Observer => {
            64 + buckets * 16
                + if cloudwatch {
                    64 + MAX_DISTINCT_VALUES * 16
                } else {
                    0
                }
        }
        Family::Set => 64,
        Family::Counter | Family::Gauge => 0,
    };
    SERIES_OVERHEAD + id.name.len() + labels + state
}

/// The heap bytes of a cached role (its pool or executor name).
fn role_bytes(role: &Role) -> usize {
    match role {
        Role::PoolQueued(p) | Role::ExecutorQueued(Some(p)) | Role::ExecutorRunning(Some(p)) => {
            48 + p.len()
        }
        _ => 32,
    }
}

fn last_sample(line: &Line<'_>) -> Option<Sample> {
    line.single_sample().or_else(|| line.samples().last())
}

/// Adds one sample to a series' state (sets are handled by the caller).
fn apply_sample(state: &mut State, sample: Sample, weight: f64) {
    match state {
        State::Counter { total, interval } => {
            let (Sample::Value(v) | Sample::Delta(v)) = sample;
            *total += v * weight;
            *interval += v * weight;
        }
        State::Gauge { value } => match sample {
            Sample::Value(v) => *value = v,
            Sample::Delta(d) => *value += d,
        },
        State::Observer(o) => {
            let (Sample::Value(v) | Sample::Delta(v)) = sample;
            let prom = if o.millis { v / 1000.0 } else { v };
            o.sum += prom * weight;
            o.count += weight;
            // Buckets are cumulative at render time; here each sample lands in one.
            if let Some(i) = o.buckets.iter().position(|b| prom <= *b) {
                o.bucket_counts[i] += weight;
            }
            if let Some(interval) = o.interval.as_mut() {
                interval.observe(v, weight);
            }
        }
        State::Set { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(max_series: usize, allow: &[&str]) -> Aggregator {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Aggregator::new(
            Arc::new(crate::catalogue::airflow("airflow").unwrap()),
            AggregatorSettings {
                max_series,
                ttl: Duration::from_secs(60),
                prefix: "airflow".into(),
                allowlist: Allowlist::new(&allow).unwrap(),
                max_bytes: 64 << 20,
            },
        )
    }

    fn datum<'a>(ds: &'a [Datum], name: &str) -> &'a Datum {
        ds.iter()
            .find(|d| &*d.name == name)
            .unwrap_or_else(|| panic!("{name} not in {ds:?}"))
    }

    #[test]
    fn counters_sum_with_rates_gauges_keep_last() {
        let mut a = agg(100, &["*"]);
        let now = Instant::now();
        a.ingest_packet(
            b"c:1|c\nc:2|c|@0.5\nc:-1|c\ng:5|g\ng:+2|g\ng:-10|g\ng:3|g",
            now,
        );
        let ds = a.flush(now, SystemTime::now());
        assert_eq!(datum(&ds, "c").value, DatumValue::Single(4.0));
        assert_eq!(datum(&ds, "c").unit, Unit::Count);
        assert_eq!(datum(&ds, "g").value, DatumValue::Single(3.0));
        // A second interval with no samples sends nothing (missing, not zero).
        assert!(a.flush(now, SystemTime::now()).is_empty());
    }

    #[test]
    fn timers_as_values_and_counts_then_statistic_sets() {
        let mut a = agg(100, &["*"]);
        let now = Instant::now();
        a.ingest_packet(b"t:10|ms\nt:10|ms\nt:20|ms|@0.5\nh:1:2:3|h", now);
        let ds = a.flush(now, SystemTime::now());
        assert_eq!(
            datum(&ds, "t").value,
            DatumValue::Values {
                values: vec![10.0, 20.0],
                counts: vec![2.0, 2.0]
            }
        );
        assert_eq!(datum(&ds, "t").unit, Unit::Milliseconds);
        assert_eq!(datum(&ds, "h").unit, Unit::None);
        for i in 0..200 {
            a.ingest(format!("t:{i}|ms").as_bytes(), now).unwrap();
        }
        let ds = a.flush(now, SystemTime::now());
        assert_eq!(
            datum(&ds, "t").value,
            DatumValue::Stats {
                count: 200.0,
                sum: 19900.0,
                min: 0.0,
                max: 199.0
            }
        );
    }

    #[test]
    fn sets_count_distinct_members() {
        let mut a = agg(100, &["*"]);
        let now = Instant::now();
        a.ingest_packet(b"u:a|s\nu:b|s\nu:a|s", now);
        assert_eq!(
            datum(&a.flush(now, SystemTime::now()), "u").value,
            DatumValue::Single(2.0)
        );
    }

    #[test]
    fn state_stays_within_its_byte_budget() {
        let mut a = agg(1_000_000, &[]);
        a.settings.max_bytes = 1 << 20;
        let now = Instant::now();
        // 20,000 distinct 200-byte names: ~5 MB of series if nothing held them back.
        for i in 0..20_000 {
            let line = format!("{}{i:08}:1|c", "n".repeat(192));
            a.ingest(line.as_bytes(), now).unwrap();
            assert!(a.state_bytes().total() <= 1 << 20, "{:?}", a.state_bytes());
        }
        let stats = a.stats;
        assert!(stats.series_refused_budget > 0, "{stats:?}");
        assert_eq!(stats.series_created + stats.series_refused_budget, 20_000);
        assert!(
            stats.cache_clears > 0,
            "the cache was cleared to stay in its share"
        );
        // Sets with 1 KiB members: the members beyond the budget are refused and counted.
        let mut b = agg(100, &["*"]);
        b.settings.max_bytes = 1 << 20;
        let member = "m".repeat(1024);
        for i in 0..5_000 {
            b.ingest(format!("users:{member}{i}|s").as_bytes(), now)
                .unwrap();
            assert!(b.state_bytes().total() <= 1 << 20);
        }
        assert!(b.stats.set_members_refused > 0);
        let kept = match datum(&b.flush(now, SystemTime::now()), "users").value {
            DatumValue::Single(v) => v,
            ref other => panic!("{other:?}"),
        };
        assert_eq!(kept as u64 + b.stats.set_members_refused, 5_000);
        assert_eq!(b.state_bytes().sets, 0, "a flush frees the members");
    }

    #[test]
    fn allowlist_and_cap_and_ttl() {
        let mut a = agg(2, &["keep*"]);
        let now = Instant::now();
        a.ingest_packet(b"keep_a:1|c\nother:1|c\nthird:1|c\nthird:1|c", now);
        assert_eq!(a.live_series(), 2);
        assert_eq!(a.stats.over_cap, 2);
        assert_eq!(a.stats.series_refused, 1);
        let ds = a.flush(now, SystemTime::now());
        assert_eq!(ds.len(), 1);
        assert_eq!(&*ds[0].name, "keep_a");
        // After the TTL the idle series expire and make room.
        let later = now + Duration::from_secs(61);
        a.flush(later, SystemTime::now());
        assert_eq!(a.live_series(), 0);
        assert_eq!(a.stats.series_expired, 2);
        a.ingest(b"third:1|c", later).unwrap();
        assert_eq!(a.live_series(), 1);
    }

    #[test]
    fn type_conflicts_and_garbage_are_counted() {
        let mut a = agg(100, &[]);
        let now = Instant::now();
        a.ingest_packet(b"x:1|c\nx:1|g\n\xff\nnope\nx:1|c", now);
        assert_eq!(a.stats.lines, 3);
        assert_eq!(a.stats.malformed, 2);
        assert_eq!(a.stats.type_conflict, 1);
    }

    #[test]
    fn legacy_and_tagged_pool_names_share_one_series() {
        let mut a = agg(100, &["*"]);
        let now = Instant::now();
        a.ingest_packet(
            b"airflow.pool.queued_slots.etl:4|g\nairflow.pool.queued_slots:9|g\nairflow.pool.queued_slots:5|g|#pool_name:etl",
            now,
        );
        let ds = a.flush(now, SystemTime::now());
        let pools: Vec<_> = ds
            .iter()
            .filter(|d| &*d.name == "airflow_pool_queued_slots")
            .collect();
        assert_eq!(pools.len(), 1, "{ds:?}");
        assert_eq!(
            pools[0].dimensions,
            vec![("pool_name".to_string(), "etl".to_string())]
        );
        assert_eq!(pools[0].value, DatumValue::Single(5.0));
        assert_eq!(a.stats.ambiguous, 1);
    }
}
