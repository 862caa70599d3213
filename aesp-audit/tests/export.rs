//! Audit exports: every format parses back (with the real `csv` reader, `serde_json` and a
//! CEF parser that undoes the escaping) to exactly the events a query returns, every record
//! proves against the export's checkpoint, chunks keep records whole and carry the right
//! digest and count, unknown formats are refused, and pruned events stay out.
#![expect(clippy::unwrap_used, reason = "test helpers fail by panicking")]
#![expect(clippy::indexing_slicing, reason = "test helpers index what they just built")]

mod common;

use std::{collections::BTreeMap, sync::Arc};

use aesp_audit::{
    AuditExport, AuditFilter, AuditLog, AuditQuery, CSV_COLUMNS, ExportFormat, ExportOptions,
    FaultyFileSystem, Hash, IndexedEvent, LogStorage, MemoryStorage, PruneRule, SegmentOptions,
    SegmentStorage, SignedCheckpoint, leaf_hash, verify_inclusion,
};
use aesp_core::{
    ErrorCode,
    proto::v1::{self as proto, AuditEvent, AuditExportChunk},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::{Rng, open_log, signer};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

const FORMATS: [ExportFormat; 3] = [ExportFormat::JsonLines, ExportFormat::Csv, ExportFormat::Cef];
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const T0: u64 = 1_700_000_000_000;

/// Strings that each format has to escape or quote.
const AWKWARD: [&str; 12] = [
    "",
    "plain",
    "with space",
    "comma, here",
    "quote \"q\" here",
    "line\nbreak",
    "cr\r\nlf",
    "pipe|and\\backslash",
    "a=b c=d",
    "trailing space ",
    "ünïcödé ✓",
    "=cmd|' /C calc'!A0",
];

fn random_event(rng: &mut Rng, seq: u64) -> AuditEvent {
    let mut metadata = BTreeMap::new();
    for k in 0..rng.next() % 4 {
        metadata.insert(format!("key{k}"), rng.pick(&AWKWARD).to_owned());
    }
    if rng.next().is_multiple_of(3) {
        metadata.insert("correlation_id".into(), format!("c-{seq}"));
    }
    let violations = match rng.next() % 6 {
        0 => vec!["policy-1".to_owned()],
        1 => vec!["p,2".to_owned(), "p\"3\"".to_owned()],
        _ => Vec::new(),
    };
    AuditEvent {
        event_id: format!("evt-{seq:06}"),
        timestamp_ms: T0 + seq * 1000,
        event_type: rng
            .pick(&[
                "TOOL_INVOCATION_START",
                "TOOL_INVOCATION_COMPLETE",
                "AUTHORIZATION_DENIED",
                "ODD|TYPE\\X",
            ])
            .to_owned(),
        principal_id: rng.pick(&["agent-1", "agent-2", "svc, \"ops\"", "user=x|y"]).to_owned(),
        tenant_id: rng.pick(&TENANTS).to_owned(),
        session_id: rng.pick(&["", "s-1", "s-2"]).to_owned(),
        resource: rng.pick(&["tool:payments.refund", "policy:p-42", "", "tool:a b"]).to_owned(),
        action: rng.pick(&["invoke", "update", ""]).to_owned(),
        outcome: rng.pick(&["SUCCESS", "FAILURE", "DENIED", "ERROR", ""]).to_owned(),
        source_ip: rng.pick(&["10.0.0.7", "2001:db8::1", "", "unknown, via proxy"]).to_owned(),
        user_agent: rng.pick(&AWKWARD).to_owned(),
        metadata,
        risk_score: rng.pick(&["", "0.35", "1.0"]).to_owned(),
        policy_violations: violations,
    }
}

async fn random_log(storage: Arc<dyn LogStorage>, count: u64, seed: u64) -> AuditLog {
    let log = open_log(storage, &signer(1, "audit.example.com/test")).await;
    let mut rng = Rng(seed);
    let events: Vec<AuditEvent> = (0..count).map(|seq| random_event(&mut rng, seq)).collect();
    for batch in events.chunks(37) {
        log.append_batch(batch).await.unwrap();
    }
    log
}

fn memory() -> Arc<dyn LogStorage> {
    Arc::new(MemoryStorage::default())
}

/// Every event `filter` selects below `size`, by paging through `query`.
async fn query_all(log: &AuditLog, filter: &AuditFilter, size: u64) -> Vec<IndexedEvent> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            log.query(&AuditQuery { filter: filter.clone(), limit: 7, cursor: cursor.take() }).await.unwrap();
        out.extend(page.events.into_iter().filter(|e| e.index < size));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

async fn drain(mut export: AuditExport) -> Vec<AuditExportChunk> {
    let mut chunks = Vec::new();
    while let Some(chunk) = export.next_chunk().await.unwrap() {
        chunks.push(chunk);
    }
    assert!(export.next_chunk().await.unwrap().is_none(), "nothing after the final chunk");
    chunks
}

async fn export(log: &AuditLog, options: ExportOptions) -> (Vec<AuditExportChunk>, SignedCheckpoint) {
    let chunks = drain(log.export(options).await.unwrap()).await;
    let last = chunks.last().unwrap();
    let checkpoint =
        SignedCheckpoint::parse_verified(last.checkpoint.as_bytes(), std::slice::from_ref(log.verifier()))
            .unwrap();
    (chunks, checkpoint)
}

fn file(chunks: &[AuditExportChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
}

/// One record as a format shows it.
#[derive(Debug, PartialEq)]
struct Record {
    index: u64,
    leaf: Vec<u8>,
    event: AuditEvent,
    /// `None` when the record carries no proof.
    proof: Option<Vec<Hash>>,
}

fn hashes(joined: &str) -> Vec<Hash> {
    joined
        .split(':')
        .filter(|h| !h.is_empty())
        .map(|h| STANDARD.decode(h).unwrap().try_into().unwrap())
        .collect()
}

fn parse_json_lines(data: &[u8]) -> Vec<Record> {
    let text = std::str::from_utf8(data).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = v.as_object().unwrap();
            assert!(object.keys().all(|k| ["index", "leaf", "event", "proof"].contains(&k.as_str())));
            Record {
                index: v["index"].as_u64().unwrap(),
                leaf: STANDARD.decode(v["leaf"].as_str().unwrap()).unwrap(),
                event: serde_json::from_value(v["event"].clone()).unwrap(),
                proof: v.get("proof").map(|p| {
                    p.as_array()
                        .unwrap()
                        .iter()
                        .map(|h| STANDARD.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
                        .collect()
                }),
            }
        })
        .collect()
}

fn parse_csv(data: &[u8], headers: bool) -> Vec<Record> {
    let mut reader = csv::ReaderBuilder::new().has_headers(headers).from_reader(data);
    if headers {
        let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
        assert_eq!(header, CSV_COLUMNS);
    }
    reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            assert_eq!(row.len(), CSV_COLUMNS.len());
            let f = |i: usize| row[i].to_owned();
            Record {
                index: f(0).parse().unwrap(),
                leaf: STANDARD.decode(f(1)).unwrap(),
                event: AuditEvent {
                    event_id: f(2),
                    timestamp_ms: f(3).parse().unwrap(),
                    event_type: f(4),
                    tenant_id: f(5),
                    principal_id: f(6),
                    session_id: f(7),
                    resource: f(8),
                    action: f(9),
                    outcome: f(10),
                    source_ip: f(11),
                    user_agent: f(12),
                    risk_score: f(13),
                    metadata: serde_json::from_str(&f(14)).unwrap(),
                    policy_violations: serde_json::from_str(&f(15)).unwrap(),
                },
                proof: (!f(16).is_empty()).then(|| hashes(&f(16))),
            }
        })
        .collect()
}

fn cef_unescape(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next().unwrap() {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                other => out.push(other),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a CEF line into its seven header fields (unescaped) and its raw extensions.
fn cef_header(line: &str) -> (Vec<String>, &str) {
    let mut fields = Vec::new();
    let mut start = 0;
    let bytes = line.as_bytes();
    let mut i = 0;
    while fields.len() < 7 {
        match bytes[i] {
            b'\\' => i += 2,
            b'|' => {
                fields.push(cef_unescape(&line[start..i]));
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    (fields, &line[start..])
}

/// The extension pairs: every unescaped `=` ends a key that starts after the last space
/// before it; a value runs up to the space before the next key.
fn cef_extensions(raw: &str) -> BTreeMap<String, String> {
    let bytes = raw.as_bytes();
    let mut keys = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' => {
                keys.push((raw[..i].rfind(' ').map_or(0, |s| s + 1), i));
                i += 1;
            }
            _ => i += 1,
        }
    }
    let mut out = BTreeMap::new();
    for (k, &(start, eq)) in keys.iter().enumerate() {
        let end = keys.get(k + 1).map_or(raw.len(), |&(next, _)| next - 1);
        let key = &raw[start..eq];
        assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()), "bad key `{key}`");
        assert!(out.insert(key.to_owned(), cef_unescape(&raw[eq + 1..end])).is_none(), "repeated {key}");
    }
    out
}

fn parse_cef(data: &[u8]) -> Vec<Record> {
    let text = std::str::from_utf8(data).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines()
        .map(|line| {
            let (header, raw) = cef_header(line);
            assert_eq!(header[..4], ["CEF:0", "ALTAR", "AESP", env!("CARGO_PKG_VERSION")]);
            let ext = cef_extensions(raw);
            let get = |k: &str| ext.get(k).cloned().unwrap_or_default();
            for (n, label) in
                [(1, "tenant"), (2, "session"), (3, "riskScore"), (4, "policyViolations"), (5, "source")]
            {
                if ext.contains_key(&format!("cs{n}")) {
                    assert_eq!(get(&format!("cs{n}Label")), label);
                }
            }
            let event = AuditEvent {
                event_id: get("externalId"),
                timestamp_ms: get("rt").parse().unwrap(),
                event_type: header[4].clone(),
                tenant_id: get("cs1"),
                principal_id: get("suser"),
                session_id: get("cs2"),
                resource: get("request"),
                action: get("act"),
                outcome: get("outcome"),
                source_ip: [get("src"), get("c6a2"), get("cs5")].concat(),
                user_agent: get("requestClientApplication"),
                risk_score: get("cs3"),
                metadata: ext
                    .get("aespMetadata")
                    .map_or_else(BTreeMap::new, |m| serde_json::from_str(m).unwrap()),
                policy_violations: ext.get("cs4").map_or_else(Vec::new, |v| serde_json::from_str(v).unwrap()),
            };
            let severity: u8 = header[6].parse().unwrap();
            let expected = if !event.policy_violations.is_empty() {
                8
            } else {
                match event.outcome.as_str() {
                    "SUCCESS" => 3,
                    "FAILURE" | "ERROR" => 6,
                    "DENIED" => 7,
                    _ => 5,
                }
            };
            assert_eq!(severity, expected, "{line}");
            Record {
                index: get("aespIndex").parse().unwrap(),
                leaf: STANDARD.decode(get("aespLeaf")).unwrap(),
                event,
                proof: ext.get("aespProof").map(|p| hashes(p)),
            }
        })
        .collect()
}

fn parse(format: ExportFormat, data: &[u8]) -> Vec<Record> {
    match format {
        ExportFormat::JsonLines => parse_json_lines(data),
        ExportFormat::Csv => parse_csv(data, true),
        ExportFormat::Cef => parse_cef(data),
    }
}

/// Checks that `records` are exactly `expected`, and that each proves against `checkpoint`:
/// with the proof the record carries, or one asked of the log.
async fn check_records(
    log: &AuditLog,
    records: &[Record],
    expected: &[IndexedEvent],
    checkpoint: &SignedCheckpoint,
    with_proofs: bool,
) {
    let shown: Vec<(u64, &[u8], &AuditEvent)> =
        records.iter().map(|r| (r.index, r.leaf.as_slice(), &r.event)).collect();
    let wanted: Vec<(u64, &[u8], &AuditEvent)> =
        expected.iter().map(|e| (e.index, e.leaf.as_ref(), &e.event)).collect();
    assert_eq!(shown, wanted);
    let cp = checkpoint.checkpoint();
    for record in records {
        assert_eq!(AuditEvent::decode(record.leaf.as_slice()).unwrap(), record.event);
        let proof = match &record.proof {
            Some(proof) => {
                assert!(with_proofs);
                proof.clone()
            }
            None => {
                assert!(!with_proofs || cp.size == 1, "a record without its proof");
                log.inclusion_proof(record.index, cp.size).await.unwrap()
            }
        };
        verify_inclusion(record.index, cp.size, &leaf_hash(&record.leaf), &proof, &cp.root_hash).unwrap();
        let mut forged = record.leaf.clone();
        forged[0] ^= 1;
        assert!(verify_inclusion(record.index, cp.size, &leaf_hash(&forged), &proof, &cp.root_hash).is_err());
    }
}

fn filters() -> Vec<AuditFilter> {
    vec![
        AuditFilter::default(),
        AuditFilter::tenant("acme"),
        AuditFilter {
            event_types: vec!["AUTHORIZATION_DENIED".into(), "ODD|TYPE\\X".into()],
            start_ms: T0 + 40_000,
            end_ms: Some(T0 + 250_000),
            ..AuditFilter::tenant("globex")
        },
        AuditFilter {
            principal: Some("svc, \"ops\"".into()),
            fields: [("source_ip".to_owned(), "unknown, via proxy".to_owned())].into_iter().collect(),
            ..AuditFilter::default()
        },
        AuditFilter::tenant("nobody"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_parses_back_to_the_query_and_proves() {
    let log = random_log(memory(), 300, 0x5eed).await;
    for filter in filters() {
        let size = log.checkpoint().await.unwrap().checkpoint().size;
        let expected = query_all(&log, &filter, size).await;
        assert_eq!(expected.is_empty(), filter.tenant.as_deref() == Some("nobody"), "{filter:?}");
        for format in FORMATS {
            for with_proofs in [false, true] {
                let mut options = ExportOptions::new(filter.clone(), format);
                options.include_proofs = with_proofs;
                let (chunks, checkpoint) = export(&log, options).await;
                assert_eq!(checkpoint.checkpoint().size, size);
                let records = parse(format, &file(&chunks));
                check_records(&log, &records, &expected, &checkpoint, with_proofs).await;
                let last = chunks.last().unwrap();
                assert_eq!(last.total_events, expected.len() as u64, "{format:?} {filter:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_on_segment_files_prove() {
    let fs = FaultyFileSystem::new();
    let storage: Arc<dyn LogStorage> = Arc::new(
        SegmentStorage::open(
            Arc::new(fs.clone()),
            SegmentOptions { max_segment_bytes: 4096, ..SegmentOptions::default() },
        )
        .await
        .unwrap(),
    );
    let log = random_log(storage, 200, 42).await;
    let filter = AuditFilter::tenant("initech");
    let size = log.checkpoint().await.unwrap().checkpoint().size;
    let expected = query_all(&log, &filter, size).await;
    assert!(!expected.is_empty());
    for format in FORMATS {
        let (chunks, checkpoint) = export(
            &log,
            ExportOptions { chunk_bytes: 2000, ..ExportOptions::new(filter.clone(), format) }.with_proofs(),
        )
        .await;
        check_records(&log, &parse(format, &file(&chunks)), &expected, &checkpoint, true).await;
    }
}

/// Chunks: indices from 0 without gaps, whole records, only the last final, and the final
/// one's count and digest match the file.
fn check_chunks(format: ExportFormat, chunks: &[AuditExportChunk], chunk_bytes: usize) {
    assert!(!chunks.is_empty());
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.chunk_index, i as u64);
        let last = i == chunks.len() - 1;
        assert_eq!(chunk.is_final, last);
        if !last {
            assert_eq!(chunk.total_events, 0);
            assert!(chunk.sha256.is_empty() && chunk.checkpoint.is_empty());
            assert!(!chunk.data.is_empty());
        }
        // Over the limit only when it is one record (or CSV's header) on its own.
        let header_alone = format == ExportFormat::Csv && i == 0 && chunk.event_count == 0;
        assert!(
            chunk.data.len() <= chunk_bytes || chunk.event_count == 1 || header_alone,
            "chunk {i} too large"
        );
        // Each chunk parses on its own to whole records (CSV: the header is in the first).
        let records = match format {
            ExportFormat::Csv => parse_csv(&chunk.data, i == 0),
            _ => parse(format, &chunk.data),
        };
        assert_eq!(records.len() as u64, chunk.event_count, "chunk {i}");
    }
    let last = chunks.last().unwrap();
    let whole = file(chunks);
    assert_eq!(last.total_events, chunks.iter().map(|c| c.event_count).sum::<u64>());
    assert_eq!(last.total_events, parse(format, &whole).len() as u64);
    assert_eq!(last.sha256.as_slice(), Sha256::digest(&whole).as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_keep_records_whole_and_carry_the_digest() {
    let log = random_log(memory(), 250, 7).await;
    for format in FORMATS {
        for chunk_bytes in [1, 600, 4096, 1 << 20] {
            let options =
                ExportOptions { chunk_bytes, ..ExportOptions::new(AuditFilter::tenant("acme"), format) }
                    .with_proofs();
            let (chunks, _) = export(&log, options).await;
            check_chunks(format, &chunks, chunk_bytes);
            if chunk_bytes == 1 {
                // Every record alone; CSV's header alone in chunk 0.
                let skip = usize::from(format == ExportFormat::Csv);
                assert!(chunks[skip..].iter().all(|c| c.event_count == 1));
                if format == ExportFormat::Csv {
                    assert_eq!(chunks[0].event_count, 0);
                }
            }
            if chunk_bytes == 1 << 20 {
                assert_eq!(chunks.len(), 1);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_export_is_one_final_chunk() {
    let log = random_log(memory(), 20, 3).await;
    for format in FORMATS {
        let (chunks, checkpoint) =
            export(&log, ExportOptions::new(AuditFilter::tenant("nobody"), format)).await;
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0];
        assert!(chunk.is_final);
        assert_eq!((chunk.chunk_index, chunk.event_count, chunk.total_events), (0, 0, 0));
        let expected = match format {
            ExportFormat::Csv => format!("{}\r\n", CSV_COLUMNS.join(",")).into_bytes(),
            _ => Vec::new(),
        };
        assert_eq!(chunk.data.as_slice(), expected.as_slice());
        assert_eq!(chunk.sha256.as_slice(), Sha256::digest(&expected).as_slice());
        assert_eq!(checkpoint.checkpoint().size, 20);
    }
    // An empty log too.
    let empty = open_log(memory(), &signer(1, "audit.example.com/test")).await;
    let (chunks, checkpoint) =
        export(&empty, ExportOptions::new(AuditFilter::default(), ExportFormat::JsonLines).with_proofs())
            .await;
    assert_eq!((chunks.len(), chunks[0].total_events, checkpoint.checkpoint().size), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_appends_are_not_part_of_the_export() {
    let log = random_log(memory(), 100, 11).await;
    let mut running = log
        .export(ExportOptions {
            chunk_bytes: 500,
            ..ExportOptions::new(AuditFilter::default(), ExportFormat::JsonLines)
        })
        .await
        .unwrap();
    let first = running.next_chunk().await.unwrap().unwrap();
    let mut rng = Rng(99);
    log.append_batch(&(100..150).map(|s| random_event(&mut rng, s)).collect::<Vec<_>>()).await.unwrap();
    let size = running.checkpoint().checkpoint().size;
    assert_eq!(size, 100);
    let mut chunks = vec![first];
    chunks.extend(drain(running).await);
    let records = parse_json_lines(&file(&chunks));
    assert_eq!(records.len(), 100);
    assert!(records.iter().enumerate().all(|(i, r)| r.index == i as u64));
    check_chunks(ExportFormat::JsonLines, &chunks, 500);
}

#[test]
fn formats_convert_from_the_protocol_and_unknown_ones_are_refused() {
    assert_eq!(
        ExportFormat::try_from(proto::ExportFormat::JsonLines as i32).unwrap(),
        ExportFormat::JsonLines
    );
    assert_eq!(ExportFormat::try_from(proto::ExportFormat::Csv as i32).unwrap(), ExportFormat::Csv);
    assert_eq!(ExportFormat::try_from(proto::ExportFormat::Siem as i32).unwrap(), ExportFormat::Cef);
    for format in FORMATS {
        assert_eq!(ExportFormat::try_from(proto::ExportFormat::from(format)).unwrap(), format);
    }
    for value in [proto::ExportFormat::Unspecified as i32, 4, 99, -1] {
        let err = ExportFormat::try_from(value).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{value}");
    }
    assert_eq!(
        ExportFormat::try_from(proto::ExportFormat::Unspecified).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_filter_is_refused() {
    let log = random_log(memory(), 5, 1).await;
    let filter = AuditFilter {
        fields: [("password".to_owned(), "x".to_owned())].into_iter().collect(),
        ..AuditFilter::default()
    };
    let err = log.export(ExportOptions::new(filter, ExportFormat::Csv)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_events_are_not_exported_and_the_rest_still_prove() {
    let log = random_log(memory(), 240, 1234).await;
    let before_ms = T0 + 120 * 1000;
    let all = query_all(&log, &AuditFilter::tenant("acme"), u64::MAX).await;
    let old = all.iter().filter(|e| e.event.timestamp_ms < before_ms).count() as u64;
    assert!(old > 0);
    let report = log
        .prune(&PruneRule::Retention { tenant: "acme".into(), before_ms }, "admin", T0 + 1_000_000)
        .await
        .unwrap();
    assert_eq!(report.pruned, old);
    for format in FORMATS {
        for with_proofs in [false, true] {
            let mut options = ExportOptions::new(AuditFilter::tenant("acme"), format);
            options.include_proofs = with_proofs;
            let (chunks, checkpoint) = export(&log, options).await;
            let records = parse(format, &file(&chunks));
            assert!(records.iter().all(|r| r.event.timestamp_ms >= before_ms), "a pruned event was exported");
            assert!(records.iter().any(|r| Some(r.index) == report.event_index), "the pruning event is kept");
            let expected = query_all(&log, &AuditFilter::tenant("acme"), checkpoint.checkpoint().size).await;
            assert_eq!(records.len() as u64, all.len() as u64 - old + 1);
            check_records(&log, &records, &expected, &checkpoint, with_proofs).await;
        }
    }
}
