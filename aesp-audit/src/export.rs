//! Audit exports: the events a filter selects, in log order, as JSON Lines, CSV or CEF, in
//! chunks of whole records, every record provable against the checkpoint the export was
//! taken at.
//!
//! An export first signs a checkpoint and then holds exactly the matching events whose index
//! is below that checkpoint's size, so each record can be proved against it. Every record, in
//! every format, carries its log index and its leaf bytes (the event's canonical encoding,
//! base64 with the standard alphabet and padding): an auditor decodes the leaf, hashes it
//! ([`leaf_hash`](crate::leaf_hash)) and checks the inclusion proof
//! ([`verify_inclusion`](crate::verify_inclusion)) against the checkpoint's root, then
//! checks that the leaf decodes to the event the record shows. With
//! [`ExportOptions::include_proofs`] the record also carries that inclusion proof, so no
//! further call to the log is needed.
//!
//! The export pages through the log's index (1024 events at a time) and holds at most one
//! page of rendered records and one chunk in memory, whatever the size of the log.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use aesp_core::{
    Error, Result,
    proto::v1::{self as proto, AuditEvent, AuditExportChunk},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use sha2::{Digest as _, Sha256};

use crate::{
    checkpoint::SignedCheckpoint,
    log::{AuditLog, hashes_of_ranges},
    merkle::{Hash, inclusion_ranges},
    query::{AuditFilter, IndexedEvent, OLD_SCAN_BUDGET},
};

/// The chunk size when [`ExportOptions::chunk_bytes`] is 0: 1 MiB, well below gRPC's
/// default 4 MiB message limit.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// How many events an export reads from the log at a time.
const PAGE: usize = 1024;

/// The columns of a CSV export, in order (its header row).
///
/// `metadata` is a JSON object and `policy_violations` a JSON array; `proof` is the
/// inclusion proof's hashes in base64, joined by `:` (empty without proofs).
pub const CSV_COLUMNS: [&str; 17] = [
    "index",
    "leaf",
    "event_id",
    "timestamp_ms",
    "event_type",
    "tenant_id",
    "principal_id",
    "session_id",
    "resource",
    "action",
    "outcome",
    "source_ip",
    "user_agent",
    "risk_score",
    "metadata",
    "policy_violations",
    "proof",
];

/// The device vendor of CEF records.
pub const CEF_VENDOR: &str = "ALTAR";
/// The device product of CEF records.
pub const CEF_PRODUCT: &str = "AESP";
/// The device version of CEF records: this crate's version.
pub const CEF_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The file format of an audit export.
///
/// Each format is line based, one record per line, and every record carries `index` (the
/// log index) and `leaf` (the leaf bytes, base64), and with proofs `proof` (the inclusion
/// proof's hashes, base64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// JSON Lines: one object per line, ending in `\n`:
    /// `{"index":N,"leaf":"<base64>","event":<AuditEvent>,"proof":["<base64>",...]}`, where
    /// the event is in the canonical protobuf JSON mapping (so `uint64` fields are strings and
    /// fields at their default value are left out) and `proof` is present only with proofs.
    JsonLines,
    /// CSV (RFC 4180): a header row of [`CSV_COLUMNS`], then one row per event; every row,
    /// the header included, ends in CRLF as RFC 4180 says. A field holding a comma, a double
    /// quote, CR or LF is enclosed in double quotes, with its double quotes doubled; no other
    /// field is quoted. Values are written verbatim (a value beginning with `=`, `+`, `-` or
    /// `@` is not altered to defuse spreadsheet formulas, since the row must match the leaf).
    Csv,
    /// The Common Event Format (`EXPORT_FORMAT_SIEM` in the protocol): one
    /// `CEF:0|ALTAR|AESP|<version>|<event_type>|<name>|<severity>|<extensions>` line per
    /// event, ending in `\n`. CEF is the SIEM format because it is line based (so it streams
    /// and chunks like the others), because Splunk, Microsoft Sentinel, IBM QRadar and ArcSight
    /// all ingest it as it is, over syslog or from files, and because the protocol already
    /// commits `EXPORT_FORMAT_SIEM` to it.
    ///
    /// - Header fields escape `\` and `|` with a backslash (and, so a record stays one line,
    ///   CR and LF as `\r` and `\n`). The signature id is the event type; the name is
    ///   `<action> <resource>` (the event type when both are empty).
    /// - Severity comes from the outcome: `SUCCESS` 3, `FAILURE` and `ERROR` 6, `DENIED` 7,
    ///   anything else 5; an event that records a policy violation is 8 whatever its outcome.
    /// - Extension values escape `\` and `=` with a backslash and write CR and LF as `\r` and
    ///   `\n`. Keys with an empty value are left out. The keys are `rt` (the time, Unix
    ///   milliseconds), `externalId` (event id), `suser` (principal), `cs1` tenant,
    ///   `cs2` session, `request` (resource), `act` (action), `outcome`, the source as `src`
    ///   (an IPv4 address), `c6a2` (an IPv6 address) or `cs5` (anything else),
    ///   `requestClientApplication` (user agent), `cs3` risk score, `cs4` policy violations
    ///   (a JSON array), each `csN` with its `csNLabel`, and the custom keys `aespMetadata`
    ///   (the metadata as one JSON object, since its keys are open-ended and there are only
    ///   six `cs` fields), `aespIndex`, `aespLeaf` and, with proofs, `aespProof` (the hashes
    ///   joined by `:`). Base64 padding is escaped like any `=` (`\=`); a value's leading
    ///   and trailing spaces are kept (a SIEM that trims them still has the exact value in
    ///   the leaf).
    Cef,
}

impl ExportFormat {
    /// The usual file name extension: `jsonl`, `csv` or `cef`.
    pub fn file_extension(self) -> &'static str {
        match self {
            Self::JsonLines => "jsonl",
            Self::Csv => "csv",
            Self::Cef => "cef",
        }
    }

    /// The media type of the file.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::JsonLines => "application/jsonl",
            Self::Csv => "text/csv; charset=utf-8; header=present",
            Self::Cef => "text/plain; charset=utf-8",
        }
    }
}

impl TryFrom<proto::ExportFormat> for ExportFormat {
    type Error = Error;

    /// Refuses `EXPORT_FORMAT_UNSPECIFIED` with `INVALID_ARGUMENT`.
    fn try_from(format: proto::ExportFormat) -> Result<Self> {
        match format {
            proto::ExportFormat::JsonLines => Ok(Self::JsonLines),
            proto::ExportFormat::Csv => Ok(Self::Csv),
            proto::ExportFormat::Siem => Ok(Self::Cef),
            proto::ExportFormat::Unspecified => Err(Error::invalid_argument(
                "the export format is not specified: choose JSON Lines, CSV or SIEM (CEF)",
            )
            .with_detail("field", "format")),
        }
    }
}

impl TryFrom<i32> for ExportFormat {
    type Error = Error;

    /// Converts the protocol's `ExportFormat` value; refuses `EXPORT_FORMAT_UNSPECIFIED` and
    /// values the protocol does not define with `INVALID_ARGUMENT`.
    fn try_from(value: i32) -> Result<Self> {
        match proto::ExportFormat::try_from(value) {
            Ok(format) => Self::try_from(format),
            Err(_) => Err(Error::invalid_argument(format!("unknown export format `{value}`"))
                .with_detail("field", "format")),
        }
    }
}

impl From<ExportFormat> for proto::ExportFormat {
    fn from(format: ExportFormat) -> Self {
        match format {
            ExportFormat::JsonLines => Self::JsonLines,
            ExportFormat::Csv => Self::Csv,
            ExportFormat::Cef => Self::Siem,
        }
    }
}

/// What to export and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// Which events.
    pub filter: AuditFilter,
    /// The file format.
    pub format: ExportFormat,
    /// Whether each record carries its inclusion proof against the export's checkpoint.
    pub include_proofs: bool,
    /// The most bytes of a chunk (0: [`DEFAULT_CHUNK_BYTES`]). A chunk holds whole records
    /// only, so one record larger than this goes alone in a chunk of its own.
    pub chunk_bytes: usize,
}

impl ExportOptions {
    /// The events `filter` selects in `format`, without proofs, in chunks of
    /// [`DEFAULT_CHUNK_BYTES`].
    pub fn new(filter: AuditFilter, format: ExportFormat) -> Self {
        Self { filter, format, include_proofs: false, chunk_bytes: DEFAULT_CHUNK_BYTES }
    }

    /// The same, with inclusion proofs in every record.
    pub fn with_proofs(self) -> Self {
        Self { include_proofs: true, ..self }
    }
}

/// An export in progress: call [`AuditExport::next_chunk`] until it returns `None`.
///
/// Concatenating the chunks' `data` in order gives the file. Chunk indices run from 0 without
/// gaps; a chunk never splits a record; the final chunk (`is_final`) carries the number of
/// events, the SHA-256 of the whole file and the signed checkpoint every record proves
/// against. An empty export is one final chunk (for CSV, the header row alone).
pub struct AuditExport {
    log: AuditLog,
    filter: AuditFilter,
    format: ExportFormat,
    include_proofs: bool,
    chunk_bytes: usize,
    checkpoint: SignedCheckpoint,
    /// The checkpoint's size: the export covers indices below it.
    size: u64,
    /// The next log index to look at.
    next: u64,
    /// Rendered records not yet in a chunk.
    pending: VecDeque<String>,
    /// The chunk being filled, and how many records it holds.
    chunk: Vec<u8>,
    chunk_events: u64,
    chunk_index: u64,
    total_events: u64,
    sha256: Sha256,
    done: bool,
}

impl fmt::Debug for AuditExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditExport")
            .field("filter", &self.filter)
            .field("format", &self.format)
            .field("include_proofs", &self.include_proofs)
            .field("size", &self.size)
            .field("next", &self.next)
            .field("chunk_index", &self.chunk_index)
            .field("total_events", &self.total_events)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts an export of the events `options.filter` selects: signs a checkpoint of
    /// everything durable, and exports, in log order, exactly the matching events below its
    /// size (so each is provable against it). Events appended later are not part of it;
    /// pruned events are left out.
    pub async fn export(&self, options: ExportOptions) -> Result<AuditExport> {
        options.filter.validate()?;
        let checkpoint = self.checkpoint().await?;
        let size = checkpoint.checkpoint().size;
        self.index.catch_up(self.storage().as_ref(), size).await?;
        // CSV's header row opens the first chunk (alone if it is over `chunk_bytes`).
        let chunk = match options.format {
            ExportFormat::Csv => format!("{}\r\n", CSV_COLUMNS.join(",")).into_bytes(),
            ExportFormat::JsonLines | ExportFormat::Cef => Vec::new(),
        };
        Ok(AuditExport {
            log: self.clone(),
            filter: options.filter,
            format: options.format,
            include_proofs: options.include_proofs,
            chunk_bytes: if options.chunk_bytes == 0 { DEFAULT_CHUNK_BYTES } else { options.chunk_bytes },
            checkpoint,
            size,
            next: 0,
            pending: VecDeque::new(),
            chunk,
            chunk_events: 0,
            chunk_index: 0,
            total_events: 0,
            sha256: Sha256::new(),
            done: false,
        })
    }
}

impl AuditExport {
    /// The signed checkpoint the export was taken at; every record proves against it.
    pub fn checkpoint(&self) -> &SignedCheckpoint {
        &self.checkpoint
    }

    /// The format.
    pub fn format(&self) -> ExportFormat {
        self.format
    }

    /// The next chunk, or `None` after the final one.
    ///
    /// After an error (reading the log), the export is where it was: calling again retries.
    pub async fn next_chunk(&mut self) -> Result<Option<AuditExportChunk>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let Some(record) = self.pending.front() else {
                if self.next < self.size {
                    self.load_page().await?;
                    continue;
                }
                return Ok(Some(self.emit(true)));
            };
            if !self.chunk.is_empty() && self.chunk.len().saturating_add(record.len()) > self.chunk_bytes {
                return Ok(Some(self.emit(false)));
            }
            if let Some(record) = self.pending.pop_front() {
                self.chunk.extend_from_slice(record.as_bytes());
                self.chunk_events = self.chunk_events.saturating_add(1);
            }
        }
    }

    /// Hands out the chunk being filled.
    fn emit(&mut self, last: bool) -> AuditExportChunk {
        let data = std::mem::take(&mut self.chunk);
        self.sha256.update(&data);
        let event_count = std::mem::take(&mut self.chunk_events);
        self.total_events = self.total_events.saturating_add(event_count);
        let chunk_index = self.chunk_index;
        self.chunk_index = self.chunk_index.saturating_add(1);
        let mut chunk = AuditExportChunk { chunk_index, data, event_count, ..Default::default() };
        if last {
            self.done = true;
            chunk.is_final = true;
            chunk.total_events = self.total_events;
            chunk.sha256 = std::mem::take(&mut self.sha256).finalize().to_vec();
            chunk.checkpoint = self.checkpoint.to_text();
        }
        chunk
    }

    /// Reads and renders the next page of matching events.
    async fn load_page(&mut self) -> Result<()> {
        let selected = self.log.select(&self.filter, self.next, self.size, PAGE, OLD_SCAN_BUDGET).await?;
        let stop = selected.stop;
        if stop <= self.next {
            return Err(Error::internal("the audit index made no progress during an export"));
        }
        let events: Vec<IndexedEvent> = self
            .log
            .fetch(&selected.indexes)
            .await?
            .into_iter()
            .filter(|e| self.filter.matches(&e.event))
            .collect();
        let proofs = if self.include_proofs {
            let indexes: Vec<u64> = events.iter().map(|e| e.index).collect();
            Some(inclusion_proofs(&self.log, &indexes, self.size).await?)
        } else {
            None
        };
        let mut rendered = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let proof = match &proofs {
                Some(all) => {
                    Some(all.get(i).ok_or_else(|| Error::internal("an export proof is missing"))?.as_slice())
                }
                None => None,
            };
            rendered.push(render(self.format, event, proof)?);
        }
        self.pending.extend(rendered);
        self.next = stop;
        Ok(())
    }
}

/// The inclusion proofs of `indexes` in the tree of `size` leaves, reading each distinct
/// subtree hash once (neighbouring events share most of their proofs).
async fn inclusion_proofs(log: &AuditLog, indexes: &[u64], size: u64) -> Result<Vec<Vec<Hash>>> {
    let mut distinct: HashMap<(u64, u64), usize> = HashMap::new();
    let mut ranges = Vec::new();
    let mut plans = Vec::with_capacity(indexes.len());
    for &index in indexes {
        let plan: Vec<usize> = inclusion_ranges(index, size)?
            .into_iter()
            .map(|range| {
                *distinct.entry(range).or_insert_with(|| {
                    ranges.push(range);
                    ranges.len() - 1
                })
            })
            .collect();
        plans.push(plan);
    }
    let hashes = hashes_of_ranges(log.storage().as_ref(), &ranges).await?;
    plans
        .into_iter()
        .map(|plan| {
            plan.into_iter()
                .map(|k| hashes.get(k).copied().ok_or_else(|| Error::internal("short hash read")))
                .collect()
        })
        .collect()
}

/// One record of `format`, with its line end.
fn render(format: ExportFormat, e: &IndexedEvent, proof: Option<&[Hash]>) -> Result<String> {
    let mut out = String::with_capacity(e.leaf.len().saturating_mul(3).saturating_add(256));
    match format {
        ExportFormat::JsonLines => json_line(&mut out, e, proof)?,
        ExportFormat::Csv => csv_row(&mut out, e, proof)?,
        ExportFormat::Cef => cef_line(&mut out, e, proof)?,
    }
    Ok(out)
}

/// The error of an entry that does not serialize to JSON.
fn json_error(index: u64) -> impl FnOnce(serde_json::Error) -> Error {
    move |err| Error::internal(format!("audit entry {index} does not serialize to JSON: {err}"))
}

/// The proof's hashes in base64, joined by `sep`.
fn push_proof(out: &mut String, proof: &[Hash], sep: &str, quote: bool) {
    for (i, hash) in proof.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        if quote {
            out.push('"');
        }
        STANDARD.encode_string(hash, out);
        if quote {
            out.push('"');
        }
    }
}

fn json_line(out: &mut String, e: &IndexedEvent, proof: Option<&[Hash]>) -> Result<()> {
    out.push_str("{\"index\":");
    out.push_str(&e.index.to_string());
    out.push_str(",\"leaf\":\"");
    STANDARD.encode_string(&e.leaf, out);
    out.push_str("\",\"event\":");
    out.push_str(&serde_json::to_string(&e.event).map_err(json_error(e.index))?);
    if let Some(proof) = proof {
        out.push_str(",\"proof\":[");
        push_proof(out, proof, ",", true);
        out.push(']');
    }
    out.push_str("}\n");
    Ok(())
}

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn csv_row(out: &mut String, e: &IndexedEvent, proof: Option<&[Hash]>) -> Result<()> {
    let ev = &e.event;
    out.push_str(&e.index.to_string());
    out.push(',');
    STANDARD.encode_string(&e.leaf, out);
    for value in [
        ev.event_id.as_str(),
        &ev.timestamp_ms.to_string(),
        &ev.event_type,
        &ev.tenant_id,
        &ev.principal_id,
        &ev.session_id,
        &ev.resource,
        &ev.action,
        &ev.outcome,
        &ev.source_ip,
        &ev.user_agent,
        &ev.risk_score,
        &serde_json::to_string(&ev.metadata).map_err(json_error(e.index))?,
        &serde_json::to_string(&ev.policy_violations).map_err(json_error(e.index))?,
    ] {
        out.push(',');
        csv_field(out, value);
    }
    out.push(',');
    push_proof(out, proof.unwrap_or_default(), ":", false);
    out.push_str("\r\n");
    Ok(())
}

/// The CEF severity of an event (see [`ExportFormat::Cef`]).
fn cef_severity(ev: &AuditEvent) -> u8 {
    if !ev.policy_violations.is_empty() {
        return 8;
    }
    match ev.outcome.to_ascii_uppercase().as_str() {
        "SUCCESS" => 3,
        "FAILURE" | "ERROR" => 6,
        "DENIED" => 7,
        _ => 5,
    }
}

fn cef_header_field(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Appends ` key=value`, escaping the value (every extension but the first, `rt`).
fn cef_extension(out: &mut String, key: &str, value: &str) {
    out.push(' ');
    out.push_str(key);
    out.push('=');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// A `csN` extension with its label, when `value` is not empty.
fn cef_custom_string(out: &mut String, n: u8, label: &str, value: &str) {
    if !value.is_empty() {
        cef_extension(out, &format!("cs{n}Label"), label);
        cef_extension(out, &format!("cs{n}"), value);
    }
}

fn cef_line(out: &mut String, e: &IndexedEvent, proof: Option<&[Hash]>) -> Result<()> {
    let ev = &e.event;
    out.push_str("CEF:0|");
    for field in [CEF_VENDOR, CEF_PRODUCT, CEF_VERSION, &ev.event_type] {
        cef_header_field(out, field);
        out.push('|');
    }
    let name = format!("{} {}", ev.action, ev.resource);
    cef_header_field(out, if name.trim().is_empty() { &ev.event_type } else { name.trim() });
    out.push('|');
    out.push_str(&cef_severity(ev).to_string());
    out.push('|');
    let optional = |out: &mut String, key: &str, value: &str| {
        if !value.is_empty() {
            cef_extension(out, key, value);
        }
    };
    out.push_str("rt=");
    out.push_str(&ev.timestamp_ms.to_string());
    optional(out, "externalId", &ev.event_id);
    optional(out, "suser", &ev.principal_id);
    cef_custom_string(out, 1, "tenant", &ev.tenant_id);
    cef_custom_string(out, 2, "session", &ev.session_id);
    optional(out, "request", &ev.resource);
    optional(out, "act", &ev.action);
    optional(out, "outcome", &ev.outcome);
    if ev.source_ip.parse::<Ipv4Addr>().is_ok() {
        cef_extension(out, "src", &ev.source_ip);
    } else if ev.source_ip.parse::<Ipv6Addr>().is_ok() {
        cef_extension(out, "c6a2Label", "Source IPv6 Address");
        cef_extension(out, "c6a2", &ev.source_ip);
    } else {
        cef_custom_string(out, 5, "source", &ev.source_ip);
    }
    optional(out, "requestClientApplication", &ev.user_agent);
    cef_custom_string(out, 3, "riskScore", &ev.risk_score);
    if !ev.policy_violations.is_empty() {
        cef_custom_string(
            out,
            4,
            "policyViolations",
            &serde_json::to_string(&ev.policy_violations).map_err(json_error(e.index))?,
        );
    }
    if !ev.metadata.is_empty() {
        cef_extension(
            out,
            "aespMetadata",
            &serde_json::to_string(&ev.metadata).map_err(json_error(e.index))?,
        );
    }
    cef_extension(out, "aespIndex", &e.index.to_string());
    let mut leaf = String::new();
    STANDARD.encode_string(&e.leaf, &mut leaf);
    cef_extension(out, "aespLeaf", &leaf);
    if let Some(proof) = proof {
        let mut hashes = String::new();
        push_proof(&mut hashes, proof, ":", false);
        cef_extension(out, "aespProof", &hashes);
    }
    out.push('\n');
    Ok(())
}
