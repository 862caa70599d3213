//! Queries over the audit log, answered from its index: filters, cursor paging in log order,
//! and statistics.

use std::collections::{BTreeMap, HashMap};

use aesp_core::{Error, Result, proto::v1::AuditEvent};
use base64::Engine as _;
use bytes::Bytes;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::{
    index::{BLOCK, Candidates, Dim, IndexState, RowKind, Sym, chunk},
    log::AuditLog,
    storage::Leaf,
};

/// The page size when a query names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page a query returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// How many candidate events one page may read and discard (for the non-indexed `fields`
/// filters) before it returns what it has, with a cursor to go on.
const SCAN_BUDGET: usize = 16 * 1024;
/// How many entries older than the index one page (of a query or an export) may read from
/// storage to index them before it returns what it has, with a cursor to go on.
pub(crate) const OLD_SCAN_BUDGET: u64 = 256 * 1024;

/// Which events: the filters of a query, a statistics request, an export or a report.
///
/// Tenant, time, event types, principal, outcome and resource are answered from the index;
/// `fields` are exact matches checked on the events the index selected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this tenant's events (`None`: every tenant, for platform administrators).
    pub tenant: Option<String>,
    /// Events at or after this time (Unix milliseconds).
    pub start_ms: u64,
    /// Events before this time (Unix milliseconds); `None`: no end.
    pub end_ms: Option<u64>,
    /// Only events of these types (any of them); empty: every type.
    pub event_types: Vec<String>,
    /// Only events of this principal.
    pub principal: Option<String>,
    /// Only events with this outcome.
    pub outcome: Option<String>,
    /// Only events on this resource.
    pub resource: Option<String>,
    /// Exact matches on other fields: `action`, `session_id`, `source_ip`, `user_agent`,
    /// `event_id`, `risk_score`, or `metadata.<key>`.
    pub fields: BTreeMap<String, String>,
}

/// A query: filters and a page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Which events.
    pub filter: AuditFilter,
    /// The most events in the page (0: [`DEFAULT_PAGE_SIZE`]; at most [`MAX_PAGE_SIZE`]).
    pub limit: usize,
    /// The previous page's `next_cursor`; `None` for the first page.
    pub cursor: Option<String>,
}

/// An event as the log holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedEvent {
    /// Its index in the log (its leaf index).
    pub index: u64,
    /// The event.
    pub event: AuditEvent,
    /// Its exact leaf bytes (the event's canonical encoding), for proofs.
    pub leaf: Bytes,
}

/// One page of a query, in log order.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// The events.
    pub events: Vec<IndexedEvent>,
    /// The cursor of the next page; `None` when this is the last.
    pub next_cursor: Option<String>,
    /// The log size the query runs against: later events are not part of it, so paging
    /// neither skips nor repeats while the log grows.
    pub as_of: u64,
}

/// Counts over the events a filter selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditStatistics {
    /// How many events.
    pub total: u64,
    /// By event type.
    pub by_event_type: BTreeMap<String, u64>,
    /// By outcome.
    pub by_outcome: BTreeMap<String, u64>,
    /// By principal (all of them; see [`AuditStatistics::top_principals`]).
    pub by_principal: BTreeMap<String, u64>,
    /// By tenant.
    pub by_tenant: BTreeMap<String, u64>,
    /// How many record a policy violation.
    pub policy_violations: u64,
    /// The earliest event time (Unix milliseconds), if any event matched.
    pub first_at_ms: Option<u64>,
    /// The latest event time (Unix milliseconds), if any event matched.
    pub last_at_ms: Option<u64>,
    /// The log size the counts were taken at.
    pub as_of: u64,
}

impl AuditStatistics {
    /// The `n` busiest principals, busiest first (ties by id).
    pub fn top_principals(&self, n: usize) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.by_principal.iter().map(|(k, &v)| (k.as_str(), v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(n);
        all
    }
}

/// The non-indexed fields a filter may name.
const FIELDS: [&str; 6] = ["action", "session_id", "source_ip", "user_agent", "event_id", "risk_score"];

fn field_of<'e>(event: &'e AuditEvent, name: &str) -> Option<&'e str> {
    Some(match name {
        "action" => &event.action,
        "session_id" => &event.session_id,
        "source_ip" => &event.source_ip,
        "user_agent" => &event.user_agent,
        "event_id" => &event.event_id,
        "risk_score" => &event.risk_score,
        _ => return event.metadata.get(name.strip_prefix("metadata.")?).map(String::as_str),
    })
}

impl AuditFilter {
    /// Every event of `tenant`.
    pub fn tenant(tenant: impl Into<String>) -> Self {
        Self { tenant: Some(tenant.into()), ..Self::default() }
    }

    /// Refuses field names it does not know and an empty time range.
    pub fn validate(&self) -> Result<()> {
        for name in self.fields.keys() {
            if !FIELDS.contains(&name.as_str()) && name.strip_prefix("metadata.").is_none_or(str::is_empty) {
                return Err(Error::invalid_argument(format!(
                    "unknown filter field `{name}`; filters are {} or metadata.<key>",
                    FIELDS.join(", ")
                ))
                .with_detail("field", name.clone()));
            }
        }
        if self.end_ms.is_some_and(|end| end < self.start_ms) {
            return Err(Error::invalid_argument("the end of the period is before its start"));
        }
        Ok(())
    }

    /// Whether `event` matches (the same test the index applies, on the event itself).
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == event.tenant_id)
            && event.timestamp_ms >= self.start_ms
            && self.end_ms.is_none_or(|end| event.timestamp_ms < end)
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.principal.as_ref().is_none_or(|p| *p == event.principal_id)
            && self.outcome.as_ref().is_none_or(|o| *o == event.outcome)
            && self.resource.as_ref().is_none_or(|r| *r == event.resource)
            && self.fields.iter().all(|(k, v)| field_of(event, k) == Some(v.as_str()))
    }

    /// The time range it selects, `start..end`.
    pub(crate) fn times(&self) -> (u64, u64) {
        (self.start_ms, self.end_ms.unwrap_or(u64::MAX))
    }

    /// A digest of the filter, bound into cursors so a cursor is not reused with another.
    fn digest(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        let mut put = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        put(self.tenant.as_deref().unwrap_or("\u{0}*"));
        put(&self.start_ms.to_string());
        put(&self.end_ms.map_or_else(|| "-".to_owned(), |e| e.to_string()));
        let mut types = self.event_types.clone();
        types.sort();
        types.dedup();
        for t in &types {
            put(t);
        }
        put("\u{0}");
        for v in [&self.principal, &self.outcome, &self.resource] {
            put(v.as_deref().unwrap_or("\u{0}*"));
        }
        for (k, v) in &self.fields {
            put(k);
            put(v);
        }
        let d = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
        out
    }
}

/// Where a query stands: the log size it runs against and the next index to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    as_of: u64,
    next: u64,
    filter: [u8; 8],
}

impl Cursor {
    fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(25);
        raw.push(1u8);
        raw.extend_from_slice(&self.as_of.to_le_bytes());
        raw.extend_from_slice(&self.next.to_le_bytes());
        raw.extend_from_slice(&self.filter);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode(text: &str, filter: [u8; 8]) -> Result<Self> {
        let bad = || Error::invalid_argument("the cursor is not one this log issued");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        if raw.len() != 25 || raw.first() != Some(&1) {
            return Err(bad());
        }
        let u64_at = |at: usize| -> Result<u64> {
            let mut b = [0u8; 8];
            b.copy_from_slice(raw.get(at..at + 8).ok_or_else(bad)?);
            Ok(u64::from_le_bytes(b))
        };
        let cursor = Self { as_of: u64_at(1)?, next: u64_at(9)?, filter: [0; 8] };
        if raw.get(17..25) != Some(&filter[..]) {
            return Err(Error::invalid_argument("the cursor belongs to a query with other filters"));
        }
        if cursor.next > cursor.as_of {
            return Err(bad());
        }
        Ok(Self { filter, ..cursor })
    }
}

/// A filter resolved against the index's symbols.
struct Resolved {
    tenant: Option<Sym>,
    principal: Option<Sym>,
    outcome: Option<Sym>,
    resource: Option<Sym>,
    types: Vec<Sym>,
    start: u64,
    end: u64,
}

impl Resolved {
    /// `None` when a value the filter names never occurs in the log: nothing can match.
    fn new(state: &IndexState, f: &AuditFilter) -> Option<Self> {
        let sym = |v: &Option<String>| -> Option<Option<Sym>> {
            match v {
                None => Some(None),
                Some(s) => state.strings.get(s).map(Some),
            }
        };
        let types: Vec<Sym> = f.event_types.iter().filter_map(|t| state.strings.get(t)).collect();
        if !f.event_types.is_empty() && types.is_empty() {
            return None;
        }
        Some(Self {
            tenant: sym(&f.tenant)?,
            principal: sym(&f.principal)?,
            outcome: sym(&f.outcome)?,
            resource: sym(&f.resource)?,
            types,
            start: f.start_ms,
            end: f.end_ms.unwrap_or(u64::MAX),
        })
    }

    /// The shortest way in: the smallest posting list (or union of them) among the filters.
    fn candidates<'s>(&self, state: &'s IndexState) -> Candidates<'s> {
        let mut best = Candidates::All;
        let mut consider = |c: Candidates<'s>| {
            if c.bound() < best.bound() {
                best = c;
            }
        };
        for (dim, sym) in
            [(Dim::Tenant, self.tenant), (Dim::Principal, self.principal), (Dim::Resource, self.resource)]
        {
            if let Some(sym) = sym {
                consider(Candidates::One { list: state.posting(dim, sym), at: 0 });
            }
        }
        if !self.types.is_empty() {
            consider(Candidates::Union(
                self.types.iter().map(|&t| (state.posting(Dim::EventType, t), 0usize)).collect(),
            ));
        }
        best
    }

    fn matches(&self, state: &IndexState, index: u64) -> bool {
        state.row(index).is_some_and(|r| {
            r.kind == RowKind::Event
                && r.time_ms >= self.start
                && r.time_ms < self.end
                && self.tenant.is_none_or(|s| s == r.tenant)
                && self.principal.is_none_or(|s| s == r.principal)
                && self.outcome.is_none_or(|s| s == r.outcome)
                && self.resource.is_none_or(|s| s == r.resource)
                && (self.types.is_empty() || self.types.contains(&r.event_type))
        })
    }

    /// Calls `each` on the matching indices in `from..to`, ascending, until it returns
    /// false; returns where it stopped (the next index to look at).
    fn walk(&self, state: &IndexState, from: u64, to: u64, mut each: impl FnMut(u64) -> bool) -> u64 {
        let mut candidates = self.candidates(state);
        let mut at = from;
        while at < to {
            let Some(index) = candidates.seek(at) else { return to };
            if index >= to {
                return to;
            }
            if !state.zone_overlaps(index, self.start, self.end) {
                at = (index / BLOCK).saturating_add(1).saturating_mul(BLOCK);
                continue;
            }
            at = index.saturating_add(1);
            if self.matches(state, index) && !each(index) {
                return at;
            }
        }
        to
    }
}

/// Calls `each` on the log indices in `from..to` (covered by `state`) that `filter` selects,
/// ascending, until it returns false; returns where it stopped then (the next index to look
/// at), or `None` if it did not.
pub(crate) fn select_in(
    state: &IndexState,
    filter: &AuditFilter,
    from: u64,
    to: u64,
    mut each: impl FnMut(u64) -> bool,
) -> Option<u64> {
    let resolved = Resolved::new(state, filter)?;
    let mut stopped = false;
    let stop = resolved.walk(state, from, to, |i| {
        stopped = !each(i);
        !stopped
    });
    stopped.then_some(stop)
}

/// What [`AuditLog::select`] found.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// The matching log indices, ascending.
    pub(crate) indexes: Vec<u64>,
    /// Where the walk stopped: the next index to look at.
    pub(crate) stop: u64,
}

impl AuditLog {
    /// The durable size, with the index caught up to it.
    pub(crate) async fn indexed_size(&self) -> Result<u64> {
        let size = *self.durable.borrow();
        self.index.catch_up(self.storage().as_ref(), size).await?;
        Ok(size)
    }

    /// Calls `each` on index states covering `from..to` in log order, with the part of it each
    /// covers: below the log's index, chunks of older entries built from storage (at most
    /// `max_old` entries' worth in all, and at least one chunk), skipping the blocks whose
    /// times are known to fall outside `times`; then the index itself. `each` returns where
    /// it stopped, if it did; the result is that, or where the walk ended.
    ///
    /// The index's lock is held only while `each` runs on it, never across a read.
    pub(crate) async fn over_index(
        &self,
        from: u64,
        to: u64,
        times: (u64, u64),
        max_old: u64,
        mut each: impl FnMut(&IndexState, u64, u64) -> Option<u64>,
    ) -> Result<u64> {
        let mut at = from;
        let mut old = 0u64;
        while at < to {
            let base = self.index.read().base();
            if at < base {
                let below = to.min(base);
                {
                    let state = self.index.read();
                    while at < below && !state.old_zone_may_hold(at / BLOCK, times.0, times.1) {
                        at = (at / BLOCK).saturating_add(1).saturating_mul(BLOCK);
                    }
                }
                at = at.min(below);
                if at == below {
                    continue;
                }
                if old >= max_old {
                    return Ok(at);
                }
                let step = self.index.chunk_entries();
                let end = below.min((at / step).saturating_add(1).saturating_mul(step));
                let state = chunk(self.storage().as_ref(), at, end).await?;
                self.index.learn_zones(&state);
                old = old.saturating_add(end - at);
                if let Some(stop) = each(&state, at, end) {
                    return Ok(stop);
                }
                at = end;
                continue;
            }
            let state = self.index.read();
            if at < state.base() {
                // Dropped from the index meanwhile: read from storage after all.
                continue;
            }
            let end = to.min(state.size()).max(at);
            return Ok(each(&state, at, end).unwrap_or(end));
        }
        Ok(at.min(to))
    }

    /// The log indices `filter` selects in `from..to`, at most `limit`, and where the walk
    /// stopped; from the index, and below it from at most `max_old` older entries (at least
    /// one chunk of them) indexed from storage.
    pub(crate) async fn select(
        &self,
        filter: &AuditFilter,
        from: u64,
        to: u64,
        limit: usize,
        max_old: u64,
    ) -> Result<Selection> {
        let mut indexes = Vec::new();
        let stop = self
            .over_index(from, to, filter.times(), max_old, |state, from, to| {
                select_in(state, filter, from, to, |i| {
                    indexes.push(i);
                    indexes.len() < limit
                })
            })
            .await?;
        Ok(Selection { indexes, stop })
    }

    /// Reads the events at `indexes` (ascending), grouping near ones into one read.
    pub(crate) async fn fetch(&self, indexes: &[u64]) -> Result<Vec<IndexedEvent>> {
        let mut out = Vec::with_capacity(indexes.len());
        let mut i = 0usize;
        while let Some(&start) = indexes.get(i) {
            // A run of indices no more than 64 apart is read in one call.
            let mut j = i;
            while let (Some(&a), Some(&b)) = (indexes.get(j), indexes.get(j.saturating_add(1))) {
                if b.saturating_sub(a) > 64 {
                    break;
                }
                j = j.saturating_add(1);
            }
            let end = indexes.get(j).map_or(start, |&e| e).saturating_add(1);
            let mut leaves: HashMap<u64, Leaf> = HashMap::new();
            let mut at = start;
            while at < end {
                let got = self.storage().read_leaves(at, end).await?;
                if got.is_empty() {
                    return Err(Error::internal("the storage returned no leaves"));
                }
                for leaf in got {
                    leaves.insert(at, leaf);
                    at = at.saturating_add(1);
                }
            }
            for &index in indexes.get(i..=j).unwrap_or_default() {
                // An entry pruned since the index selected it is left out.
                if let Some(Leaf::Entry(leaf)) = leaves.remove(&index) {
                    let event = AuditEvent::decode(leaf.clone()).map_err(|e| {
                        Error::corrupted(format!("audit entry {index} is not an AuditEvent: {e}"))
                    })?;
                    out.push(IndexedEvent { index, event, leaf });
                }
            }
            i = j.saturating_add(1);
        }
        Ok(out)
    }

    /// One page of the events `query` selects, in log order.
    pub async fn query(&self, query: &AuditQuery) -> Result<Page> {
        let filter = &query.filter;
        filter.validate()?;
        let limit = match query.limit {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let digest = filter.digest();
        let size = self.indexed_size().await?;
        let cursor = match &query.cursor {
            Some(text) => Cursor::decode(text, digest)?,
            None => Cursor { as_of: size, next: 0, filter: digest },
        };
        if cursor.as_of > size {
            return Err(Error::invalid_argument("the cursor is not one this log issued"));
        }
        let mut events = Vec::with_capacity(limit);
        let mut next = cursor.next;
        let mut budget = SCAN_BUDGET.max(limit);
        let mut old_budget = OLD_SCAN_BUDGET;
        while events.len() < limit && next < cursor.as_of && budget > 0 && old_budget > 0 {
            let want = if filter.fields.is_empty() { limit - events.len() } else { budget.min(1024) };
            let selected = self.select(filter, next, cursor.as_of, want, old_budget).await?;
            budget = budget.saturating_sub(selected.indexes.len().max(1));
            let base = self.index.read().base();
            old_budget = old_budget.saturating_sub(selected.stop.min(base).saturating_sub(next));
            let fetched = self.fetch(&selected.indexes).await?;
            next = selected.stop;
            for e in fetched {
                if events.len() == limit {
                    next = e.index;
                    break;
                }
                if filter.matches(&e.event) {
                    events.push(e);
                }
            }
        }
        let next_cursor = (next < cursor.as_of).then(|| Cursor { next, ..cursor }.encode());
        Ok(Page { events, next_cursor, as_of: cursor.as_of })
    }

    /// Counts of the events `filter` selects, from the index. `filter.fields` must be empty
    /// (statistics count from the index alone).
    pub async fn statistics(&self, filter: &AuditFilter) -> Result<AuditStatistics> {
        filter.validate()?;
        if !filter.fields.is_empty() {
            return Err(Error::invalid_argument("statistics take the indexed filters only (no `fields`)"));
        }
        let size = self.indexed_size().await?;
        let mut stats = AuditStatistics { as_of: size, ..AuditStatistics::default() };
        let [mut types, mut outcomes, mut principals, mut tenants] = <[BTreeMap<String, u64>; 4]>::default();
        self.over_index(0, size, filter.times(), u64::MAX, |state, from, to| {
            let resolved = Resolved::new(state, filter)?;
            let mut counts: [HashMap<Sym, u64>; 4] = Default::default();
            resolved.walk(state, from, to, |index| {
                if let Some(row) = state.row(index) {
                    stats.total += 1;
                    for (map, sym) in
                        counts.iter_mut().zip([row.event_type, row.outcome, row.principal, row.tenant])
                    {
                        *map.entry(sym).or_default() += 1;
                    }
                    stats.policy_violations += u64::from(row.violation);
                    stats.first_at_ms = Some(stats.first_at_ms.map_or(row.time_ms, |t| t.min(row.time_ms)));
                    stats.last_at_ms = Some(stats.last_at_ms.map_or(row.time_ms, |t| t.max(row.time_ms)));
                }
                true
            });
            for (named, counts) in
                [&mut types, &mut outcomes, &mut principals, &mut tenants].into_iter().zip(counts)
            {
                for (sym, n) in counts {
                    *named.entry(state.strings.name(sym).to_owned()).or_default() += n;
                }
            }
            None
        })
        .await?;
        stats.by_event_type = types;
        stats.by_outcome = outcomes;
        stats.by_principal = principals;
        stats.by_tenant = tenants;
        Ok(stats)
    }
}
