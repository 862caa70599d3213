//! The query index of the audit log: derived data kept in memory, built from the log's entries
//! and never a second source of truth.
//!
//! One compact row per log index (time and the interned tenant, principal, event type, outcome
//! and resource), posting lists of log indices per tenant, principal, event type and resource,
//! and per block of [`BLOCK`] indices the span of event times (a zone map), so a time range
//! skips the blocks it cannot match. The index follows the log from the batches the committer
//! hands it (no extra read, no fsync) and catches up from storage when it missed some or
//! starts on an existing log.
//!
//! It covers the most recent entries only (`AuditLogOptions::index_entries`), so that its
//! memory stays bounded however long the log runs: older rows are dropped a block at a time.
//! Readers that reach below it build the same structure for a chunk of older entries from
//! storage ([`chunk`]) and walk that instead.

use std::{
    collections::HashMap,
    sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use aesp_core::Result;
use bytes::Bytes;

use crate::storage::LogStorage;

/// How many consecutive log indices one zone-map entry covers.
pub(crate) const BLOCK: u64 = 1024;
/// How many leaves a catch-up reads per storage call.
const CATCH_UP_CHUNK: u64 = 16 * 1024;
/// The fewest entries the index covers.
pub(crate) const MIN_ENTRIES: u64 = BLOCK;
/// The most entries one chunk of older entries, built from storage, covers.
pub(crate) const MAX_CHUNK: u64 = 16 * BLOCK;

/// An interned string.
pub(crate) type Sym = u32;

/// Strings seen in the log, each stored once.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<Box<[u8]>, Sym>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn get(&self, s: &str) -> Option<Sym> {
        self.ids.get(s.as_bytes()).copied()
    }

    pub(crate) fn name(&self, sym: Sym) -> &str {
        self.names.get(sym as usize).map_or("", |s| s)
    }

    /// The symbol of `bytes`, interning them; `None` if they are not UTF-8.
    fn intern(&mut self, bytes: &[u8]) -> Option<Sym> {
        if let Some(&id) = self.ids.get(bytes) {
            return Some(id);
        }
        let s = std::str::from_utf8(bytes).ok()?;
        let id = Sym::try_from(self.names.len()).ok()?;
        self.names.push(s.into());
        self.ids.insert(bytes.into(), id);
        Some(id)
    }
}

/// What kind of leaf a row describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowKind {
    /// An audit event, indexed.
    Event,
    /// Pruned: its fields are no longer known (after a rebuild) or no longer shown.
    Pruned,
    /// Bytes that are not an audit event (appended with `append_encoded`).
    Opaque,
}

/// One log index, as the index knows it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Row {
    pub(crate) time_ms: u64,
    pub(crate) tenant: Sym,
    pub(crate) principal: Sym,
    pub(crate) event_type: Sym,
    pub(crate) outcome: Sym,
    pub(crate) resource: Sym,
    pub(crate) violation: bool,
    pub(crate) kind: RowKind,
}

const NO_ROW: Row = Row {
    time_ms: 0,
    tenant: 0,
    principal: 0,
    event_type: 0,
    outcome: 0,
    resource: 0,
    violation: false,
    kind: RowKind::Opaque,
};

/// The indexed dimensions with posting lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dim {
    Tenant,
    Principal,
    EventType,
    Resource,
}

/// The fields of an audit event the index keeps, borrowed from its encoding.
#[derive(Default)]
struct Fields<'a> {
    time_ms: u64,
    event_type: &'a [u8],
    principal: &'a [u8],
    tenant: &'a [u8],
    resource: &'a [u8],
    outcome: &'a [u8],
    violation: bool,
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads the indexed fields of an `AuditEvent` encoding without decoding the rest (the
/// metadata map, ids and agent strings are skipped); `None` if it is not a valid encoding.
fn scan_event(mut buf: &[u8]) -> Option<Fields<'_>> {
    let mut f = Fields::default();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                let v = varint(&mut buf)?;
                if field == 2 {
                    f.time_ms = v;
                }
            }
            1 => buf = buf.get(8..)?,
            5 => buf = buf.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (value, rest) = buf.split_at_checked(len)?;
                buf = rest;
                match field {
                    3 => f.event_type = value,
                    4 => f.principal = value,
                    5 => f.tenant = value,
                    7 => f.resource = value,
                    9 => f.outcome = value,
                    14 => f.violation = true,
                    _ => {}
                }
            }
            _ => return None,
        }
        if field == 0 {
            return None;
        }
    }
    Some(f)
}

/// The index proper, of the log indices `base..size()`.
#[derive(Debug, Default)]
pub(crate) struct IndexState {
    pub(crate) strings: Interner,
    /// The first log index covered (a multiple of [`BLOCK`]).
    base: u64,
    /// The rows of `base..`.
    rows: Vec<Row>,
    /// Where each (dimension, value) keeps its posting list in `lists`.
    postings: HashMap<(Dim, Sym), usize>,
    /// The posting lists: the log indices of the events with one value of one dimension.
    lists: Vec<Vec<u64>>,
    /// Per block from `base`: the least and greatest event time of its indexed events.
    zones: Vec<(u64, u64)>,
    /// Per block below `base`: its zone, kept when its rows were dropped (16 bytes a block,
    /// for the life of the index), so that a time range skips older blocks without reading
    /// them; [`UNKNOWN_ZONE`] for blocks this index never saw whole.
    old_zones: Vec<(u64, u64)>,
    /// The two values each field saw last, so that the run of events of one tenant, one
    /// principal or one tool interns and posts without hashing.
    recent: Recent,
}

/// The zone of a block without events: it holds no time.
const EMPTY_ZONE: (u64, u64) = (u64::MAX, 0);
/// The zone of a block not seen: it may hold any time.
const UNKNOWN_ZONE: (u64, u64) = (0, u64::MAX);

/// Whether `zone` may hold a time in `start..end`.
fn zone_may_hold(zone: (u64, u64), start: u64, end: u64) -> bool {
    let (lo, hi) = zone;
    lo <= hi && hi >= start && lo < end
}

/// The fields of a row, in the order of [`Recent`]'s slots.
const FIELDS: usize = 5;

/// Per field of a row, its two most recent values: (symbol, posting list of the dimension it
/// has one in).
#[derive(Debug, Default)]
struct Recent([[Option<(Sym, usize)>; 2]; FIELDS]);

impl Recent {
    /// The cached value of `field` whose text is `bytes`, moved to the front.
    fn find(&mut self, field: usize, bytes: &[u8], strings: &Interner) -> Option<(Sym, usize)> {
        let slots = self.0.get_mut(field)?;
        let hit =
            slots.iter().position(|s| s.is_some_and(|(sym, _)| strings.name(sym).as_bytes() == bytes))?;
        slots.swap(0, hit);
        slots[0]
    }

    fn remember(&mut self, field: usize, value: (Sym, usize)) {
        if let Some(slots) = self.0.get_mut(field) {
            slots[1] = slots[0];
            slots[0] = Some(value);
        }
    }
}

impl IndexState {
    /// An empty index whose first log index is `base` (rounded down to a [`BLOCK`]).
    fn starting_at(base: u64) -> Self {
        Self { base: base / BLOCK * BLOCK, ..Self::default() }
    }

    /// The first log index covered.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// The log index after the last one covered.
    pub(crate) fn size(&self) -> u64 {
        self.base.saturating_add(self.rows.len() as u64)
    }

    /// Drops the rows below `base` (rounded down to a [`BLOCK`]), and with them their places in
    /// the posting lists and their zones; past the end, everything, and the index starts
    /// again at `base`.
    fn drop_below(&mut self, base: u64) {
        let base = base / BLOCK * BLOCK;
        if base <= self.base {
            return;
        }
        let size = self.size();
        // The zones of the blocks dropped: known for whole blocks, unknown past the rows.
        let whole = usize::try_from((size.min(base) - self.base) / BLOCK).unwrap_or(usize::MAX);
        let known = self.zones.len().min(whole);
        self.old_zones.extend(self.zones.drain(..known));
        self.old_zones.resize(self.old_zones.len().saturating_add(whole - known), EMPTY_ZONE);
        self.old_zones.resize(usize::try_from(base / BLOCK).unwrap_or(usize::MAX), UNKNOWN_ZONE);
        if base >= size {
            self.rows.clear();
            self.zones.clear();
        } else {
            self.rows.drain(..usize::try_from(base - self.base).unwrap_or(usize::MAX));
        }
        for list in &mut self.lists {
            let gone = list.partition_point(|&i| i < base);
            list.drain(..gone);
            // A list whose values no longer occur gives its memory back.
            if list.len() < list.capacity() / 4 {
                list.shrink_to_fit();
            }
        }
        self.base = base;
    }

    /// Whether block `block` (below `base`) may hold an event time in `start..end`.
    pub(crate) fn old_zone_may_hold(&self, block: u64, start: u64, end: u64) -> bool {
        let zone = usize::try_from(block).ok().and_then(|b| self.old_zones.get(b).copied());
        zone_may_hold(zone.unwrap_or(UNKNOWN_ZONE), start, end)
    }

    /// Keeps the zones of the whole blocks `chunk` covers below `base`, where they were not
    /// known.
    fn learn_zones(&mut self, chunk: &IndexState) {
        let first = usize::try_from(chunk.base / BLOCK).unwrap_or(usize::MAX);
        let whole = usize::try_from((chunk.size() - chunk.base) / BLOCK).unwrap_or(0);
        for b in 0..whole {
            if let Some(zone) = self.old_zones.get_mut(first.saturating_add(b))
                && *zone == UNKNOWN_ZONE
            {
                *zone = chunk.zones.get(b).copied().unwrap_or(EMPTY_ZONE);
            }
        }
    }

    fn push(&mut self, entry: Option<&[u8]>) {
        let index = self.size();
        let row = entry.and_then(|e| self.row_of(e, index)).unwrap_or(Row {
            kind: if entry.is_some() { RowKind::Opaque } else { RowKind::Pruned },
            ..NO_ROW
        });
        if row.kind == RowKind::Event {
            let block = usize::try_from((index - self.base) / BLOCK).unwrap_or(usize::MAX);
            if self.zones.len() <= block {
                self.zones.resize(block.saturating_add(1), (u64::MAX, 0));
            }
            if let Some(zone) = self.zones.get_mut(block) {
                zone.0 = zone.0.min(row.time_ms);
                zone.1 = zone.1.max(row.time_ms);
            }
        }
        self.rows.push(row);
    }

    /// The row of an event, its values interned and `index` added to their posting lists;
    /// `None` (and nothing posted) if `entry` is not an audit event.
    fn row_of(&mut self, entry: &[u8], index: u64) -> Option<Row> {
        let f = scan_event(entry)?;
        let tenant = self.resolve(0, Some(Dim::Tenant), f.tenant)?;
        let principal = self.resolve(1, Some(Dim::Principal), f.principal)?;
        let event_type = self.resolve(2, Some(Dim::EventType), f.event_type)?;
        let outcome = self.resolve(3, None, f.outcome)?;
        let resource = self.resolve(4, Some(Dim::Resource), f.resource)?;
        for (_, list) in [tenant, principal, event_type, resource] {
            if let Some(list) = self.lists.get_mut(list) {
                list.push(index);
            }
        }
        Some(Row {
            time_ms: f.time_ms,
            tenant: tenant.0,
            principal: principal.0,
            event_type: event_type.0,
            outcome: outcome.0,
            resource: resource.0,
            violation: f.violation,
            kind: RowKind::Event,
        })
    }

    /// The symbol of `bytes`, the value of row field `field`, interned, and its posting list
    /// in `dim` (`usize::MAX` for a field without one); `None` if it is not UTF-8.
    fn resolve(&mut self, field: usize, dim: Option<Dim>, bytes: &[u8]) -> Option<(Sym, usize)> {
        if let Some(hit) = self.recent.find(field, bytes, &self.strings) {
            return Some(hit);
        }
        let sym = self.strings.intern(bytes)?;
        let list = match dim {
            Some(dim) => *self.postings.entry((dim, sym)).or_insert_with(|| {
                self.lists.push(Vec::new());
                self.lists.len() - 1
            }),
            None => usize::MAX,
        };
        self.recent.remember(field, (sym, list));
        Some((sym, list))
    }

    /// Whether the zone of `index`'s block may hold a time in `start..end`.
    pub(crate) fn zone_overlaps(&self, index: u64, start: u64, end: u64) -> bool {
        let Some(offset) = index.checked_sub(self.base) else { return false };
        let block = usize::try_from(offset / BLOCK).unwrap_or(usize::MAX);
        self.zones.get(block).is_some_and(|&zone| zone_may_hold(zone, start, end))
    }

    pub(crate) fn row(&self, index: u64) -> Option<&Row> {
        self.rows.get(usize::try_from(index.checked_sub(self.base)?).ok()?)
    }

    pub(crate) fn posting(&self, dim: Dim, sym: Sym) -> &[u64] {
        self.postings.get(&(dim, sym)).and_then(|&list| self.lists.get(list)).map_or(&[], Vec::as_slice)
    }
}

/// The in-memory index of one log, shared by its readers.
#[derive(Debug)]
pub(crate) struct AuditIndex {
    state: RwLock<IndexState>,
    /// Serialises catching up, so two readers do not both read the same leaves.
    follow: tokio::sync::Mutex<()>,
    /// How many of the latest entries it covers (at least [`MIN_ENTRIES`]).
    entries: u64,
}

impl AuditIndex {
    /// An index of the latest `entries` entries (at least [`MIN_ENTRIES`]).
    pub(crate) fn new(entries: u64) -> Self {
        Self {
            state: RwLock::new(IndexState::default()),
            follow: tokio::sync::Mutex::new(()),
            entries: entries.max(MIN_ENTRIES),
        }
    }

    /// How many entries one chunk of older entries covers: as many as the index, within
    /// [`BLOCK`] and [`MAX_CHUNK`].
    pub(crate) fn chunk_entries(&self) -> u64 {
        self.entries.clamp(BLOCK, MAX_CHUNK) / BLOCK * BLOCK
    }

    /// Drops what is below the latest `entries`, once a quarter more has gathered (so the rows
    /// and posting lists move in memory once per quarter of the index, not once per block).
    fn bound(&self, state: &mut IndexState) {
        let covered = state.size().saturating_sub(state.base);
        if covered > self.entries.saturating_add(self.entries / 4) {
            state.drop_below(state.size().saturating_sub(self.entries));
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, IndexState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the zones of the older blocks `chunk` (built from storage) covers.
    pub(crate) fn learn_zones(&self, chunk: &IndexState) {
        self.write().learn_zones(chunk);
    }

    /// Indexes a durable batch handed over by the committer; a gap before it is read from
    /// storage first.
    pub(crate) async fn ingest(&self, storage: &dyn LogStorage, first: u64, entries: &[Bytes]) -> Result<()> {
        let _follow = self.follow.lock().await;
        self.catch_up_locked(storage, first).await?;
        let mut state = self.write();
        let skip = usize::try_from(state.size().saturating_sub(first)).unwrap_or(usize::MAX);
        if state.size() >= first {
            for entry in entries.iter().skip(skip) {
                state.push(Some(entry));
            }
            self.bound(&mut state);
        }
        Ok(())
    }

    /// Indexes every leaf below `target` not indexed yet, reading them from storage.
    pub(crate) async fn catch_up(&self, storage: &dyn LogStorage, target: u64) -> Result<()> {
        if self.read().size() >= target {
            return Ok(());
        }
        let _follow = self.follow.lock().await;
        self.catch_up_locked(storage, target).await
    }

    async fn catch_up_locked(&self, storage: &dyn LogStorage, target: u64) -> Result<()> {
        {
            // Entries the index would drop at once are not read at all (a log opened on a
            // long history reads only its tail).
            let mut state = self.write();
            if state.size() < target.saturating_sub(self.entries) {
                state.drop_below(target.saturating_sub(self.entries));
            }
        }
        loop {
            let from = self.read().size();
            if from >= target {
                return Ok(());
            }
            let leaves = storage.read_leaves(from, target.min(from.saturating_add(CATCH_UP_CHUNK))).await?;
            if leaves.is_empty() {
                return Err(aesp_core::Error::internal("the storage returned no leaves"));
            }
            let mut state = self.write();
            for leaf in &leaves {
                state.push(leaf.entry().map(|b| &b[..]));
            }
            self.bound(&mut state);
        }
    }

    /// Marks indices as pruned: they no longer match any query. (Those below the index are
    /// read from storage, which has them pruned.)
    pub(crate) fn mark_pruned(&self, indexes: &[u64]) {
        let mut state = self.write();
        let base = state.base;
        for &i in indexes {
            let at = i.checked_sub(base).and_then(|at| usize::try_from(at).ok());
            if let Some(row) = at.and_then(|at| state.rows.get_mut(at)) {
                row.kind = RowKind::Pruned;
            }
        }
    }
}

/// The index of the entries `from..to` (`from` rounded down to a [`BLOCK`]), built from
/// storage: what the log's index covered before it dropped them.
pub(crate) async fn chunk(storage: &dyn LogStorage, from: u64, to: u64) -> Result<IndexState> {
    let mut state = IndexState::starting_at(from);
    while state.size() < to {
        let leaves = storage.read_leaves(state.size(), to).await?;
        if leaves.is_empty() {
            return Err(aesp_core::Error::internal("the storage returned no leaves"));
        }
        for leaf in &leaves {
            state.push(leaf.entry().map(|b| &b[..]));
        }
    }
    Ok(state)
}

/// A walk over the candidate log indices of a query, ascending.
#[derive(Debug)]
pub(crate) enum Candidates<'a> {
    /// Every index.
    All,
    /// The indices of one posting list; `at` is where the last seek stopped.
    One { list: &'a [u64], at: usize },
    /// The union of several posting lists.
    Union(Vec<(&'a [u64], usize)>),
}

/// The first position at or after `at` in `list` whose value is `>= target` (galloping, so
/// a walk forward costs little per step).
fn gallop(list: &[u64], mut at: usize, target: u64) -> usize {
    let mut step = 1usize;
    let mut hi = at;
    while list.get(hi).is_some_and(|&v| v < target) {
        at = hi.saturating_add(1);
        hi = hi.saturating_add(step);
        step = step.saturating_mul(2);
    }
    let hi = hi.min(list.len());
    at.saturating_add(list.get(at..hi).unwrap_or_default().partition_point(|&v| v < target))
}

impl Candidates<'_> {
    /// The least candidate `>= target`, if any.
    pub(crate) fn seek(&mut self, target: u64) -> Option<u64> {
        match self {
            Self::All => Some(target),
            Self::One { list, at } => {
                *at = gallop(list, *at, target);
                list.get(*at).copied()
            }
            Self::Union(lists) => lists
                .iter_mut()
                .filter_map(|(list, at)| {
                    *at = gallop(list, *at, target);
                    list.get(*at).copied()
                })
                .min(),
        }
    }

    /// How many candidates there are at most.
    pub(crate) fn bound(&self) -> u64 {
        match self {
            Self::All => u64::MAX,
            Self::One { list, .. } => list.len() as u64,
            Self::Union(lists) => lists.iter().map(|(l, _)| l.len() as u64).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::proto::v1::AuditEvent;
    use prost::Message as _;

    use super::*;

    #[test]
    fn the_scanner_reads_what_prost_encodes() {
        let event = AuditEvent {
            event_id: "e".into(),
            timestamp_ms: 1_700_000_000_123,
            event_type: "AUTHORIZATION_DENIED".into(),
            principal_id: "alice".into(),
            tenant_id: "acme".into(),
            resource: "tool:x".into(),
            outcome: "DENIED".into(),
            metadata: [("k".to_owned(), "v".to_owned())].into(),
            policy_violations: vec!["p1".into()],
            ..AuditEvent::default()
        };
        let bytes = event.encode_to_vec();
        let f = scan_event(&bytes).unwrap();
        assert_eq!(f.time_ms, event.timestamp_ms);
        assert_eq!(f.event_type, b"AUTHORIZATION_DENIED");
        assert_eq!(
            (f.principal, f.tenant, f.resource, f.outcome),
            (&b"alice"[..], &b"acme"[..], &b"tool:x"[..], &b"DENIED"[..])
        );
        assert!(f.violation);
        assert!(scan_event(&[0xff, 0xff]).is_none());
        assert!(scan_event(&bytes[..bytes.len() - 1]).is_none());
    }

    #[tokio::test]
    async fn the_index_keeps_only_the_latest_entries_and_frees_the_rest() {
        let storage = crate::MemoryStorage::default();
        let index = AuditIndex::new(2048);
        let mut next = 0u64;
        for round in 0..40u64 {
            // Each principal acts for 1,000 entries and is not seen again.
            let entries: Vec<Bytes> = (next..next + 500)
                .map(|i| {
                    let event = AuditEvent {
                        timestamp_ms: 1_700_000_000_000 + i,
                        event_type: "TOOL_INVOCATION_START".into(),
                        principal_id: format!("p{}", i / 1000),
                        tenant_id: format!("t{}", round % 3),
                        resource: "tool:x".into(),
                        outcome: "SUCCESS".into(),
                        ..AuditEvent::default()
                    };
                    Bytes::from(event.encode_to_vec())
                })
                .collect();
            index.ingest(&storage, next, &entries).await.unwrap();
            next += 500;
            let state = index.read();
            assert_eq!(state.size(), next);
            assert_eq!(state.base() % BLOCK, 0);
            let covered = state.size() - state.base();
            assert!(
                covered >= next.min(2048) && covered <= (2048 + 512).max(2048 + BLOCK - 1),
                "{covered} at {next}"
            );
            assert_eq!(state.zones.len() as u64, covered.div_ceil(BLOCK));
            // The dropped blocks keep their zones: exactly the times they held.
            assert_eq!(state.old_zones.len() as u64, state.base() / BLOCK);
            for (b, &zone) in (0u64..).zip(&state.old_zones) {
                let first = 1_700_000_000_000 + b * BLOCK;
                assert_eq!(zone, (first, first + BLOCK - 1));
            }
            let mut posted = 0;
            for list in &state.lists {
                assert!(list.iter().all(|&i| i >= state.base() && i < next));
                if list.is_empty() {
                    assert_eq!(list.capacity(), 0, "an emptied posting list keeps its memory");
                }
                posted += list.len() as u64;
            }
            // Tenant, principal, event type and resource: four postings per covered row.
            assert_eq!(posted, 4 * covered);
            assert!(state.row(state.base().wrapping_sub(1)).is_none());
            assert_eq!(state.row(next - 1).unwrap().time_ms, 1_700_000_000_000 + next - 1);
        }
        // A catch-up far ahead of the index (a log opened on a long history) skips to the
        // latest entries without reading the older ones.
        let far = 1_000_000;
        let mut state = index.write();
        state.drop_below(far);
        assert_eq!((state.base(), state.size()), (far / BLOCK * BLOCK, far / BLOCK * BLOCK));
        assert!(state.lists.iter().all(Vec::is_empty));
        // Blocks never seen may hold any time; those seen keep their zones.
        assert_eq!(state.old_zones.len() as u64, far / BLOCK);
        assert!(state.old_zone_may_hold(far / BLOCK - 1, 0, 1));
        assert!(!state.old_zone_may_hold(0, 0, 1_700_000_000_000));
        assert!(state.old_zone_may_hold(0, 1_700_000_000_000, 1_700_000_000_001));
    }

    #[test]
    fn gallop_finds_the_first_value_not_below_the_target() {
        let list: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        for target in [0, 1, 3, 500, 2997, 2998, 5000] {
            let want = list.partition_point(|&v| v < target);
            for from in [0, want / 2, want] {
                assert_eq!(gallop(&list, from, target), want, "{target} from {from}");
            }
        }
    }
}
