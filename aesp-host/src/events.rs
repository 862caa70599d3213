//! The invocation pipeline's audit events, encoded straight from borrowed parts.
//!
//! [`EventView`] holds what an `AuditEvent` would, as borrowed strings and values rendered
//! on demand, and encodes into exactly the bytes `AuditEvent::encode_to_vec` gives for the
//! same event (fields in tag order, proto3 defaults left out, metadata entries in key order),
//! in one allocation of the exact size: no `String` per field, no map, no second buffer.

use std::fmt::{self, Write as _};

use aesp_policy::{Effect, PolicyMatch};
use base64::Engine as _;
use prost::{
    bytes::Bytes,
    encoding::{WireType, encoded_len_varint, key_len},
};

/// A string field or metadata value, rendered when the event is encoded.
#[derive(Clone, Copy)]
pub(crate) enum Text<'a> {
    /// The text itself.
    Str(&'a str),
    /// Two pieces, one after the other (`tool:` and a tool name).
    Concat(&'a str, &'a str),
    /// A value's `Display` (it must render the same text every time).
    Display(&'a dyn fmt::Display),
    /// A number in decimal.
    Number(u64),
    /// Standard base64 (with padding) of bytes.
    Base64(&'a [u8]),
    /// Lowercase hexadecimal of bytes (a digest).
    Hex(&'a [u8]),
    /// A decision's matched policies as `id@version:Effect`, comma-separated (the effect as
    /// its `Debug` name), written without the formatting machinery.
    Matches(&'a [PolicyMatch]),
}

impl Default for Text<'_> {
    fn default() -> Self {
        Text::Str("")
    }
}

/// Counts what is written.
struct Counter(usize);

impl fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Appends what is written to a byte buffer.
struct Append<'a>(&'a mut Vec<u8>);

impl fmt::Write for Append<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl Text<'_> {
    /// The length of the rendered text in bytes.
    fn len(&self) -> usize {
        match self {
            Text::Str(s) => s.len(),
            Text::Concat(a, b) => a.len() + b.len(),
            Text::Display(d) => {
                let mut counter = Counter(0);
                let _ = write!(counter, "{d}");
                counter.0
            }
            Text::Base64(bytes) => base64::encoded_len(bytes.len(), true).unwrap_or(0),
            Text::Hex(bytes) => bytes.len() * 2,
            Text::Number(n) => decimal_len(*n),
            Text::Matches(matches) => {
                let pieces: usize = matches
                    .iter()
                    .map(|m| m.policy_id().len() + 1 + m.version().len() + 1 + effect_name(m).len())
                    .sum();
                pieces + matches.len().saturating_sub(1)
            }
        }
    }

    fn write(&self, len: usize, buf: &mut Vec<u8>) {
        match self {
            Text::Str(s) => buf.extend_from_slice(s.as_bytes()),
            Text::Concat(a, b) => {
                buf.extend_from_slice(a.as_bytes());
                buf.extend_from_slice(b.as_bytes());
            }
            Text::Display(d) => {
                let _ = write!(Append(buf), "{d}");
            }
            Text::Hex(bytes) => {
                // 32 bytes (a digest) at a time through a buffer: one copy each, not one per byte.
                let mut pairs = [0u8; 64];
                for chunk in bytes.chunks(32) {
                    for (pair, &byte) in pairs.chunks_exact_mut(2).zip(chunk) {
                        pair.copy_from_slice(&HEX_PAIRS.get(usize::from(byte)).copied().unwrap_or_default());
                    }
                    buf.extend_from_slice(pairs.get(..chunk.len() * 2).unwrap_or_default());
                }
            }
            Text::Matches(matches) => {
                for (i, m) in matches.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(m.policy_id().as_bytes());
                    buf.push(b'@');
                    buf.extend_from_slice(m.version().as_bytes());
                    buf.push(b':');
                    buf.extend_from_slice(effect_name(m).as_bytes());
                }
            }
            Text::Number(n) => {
                let mut digits = [0u8; 20];
                let mut at = digits.len();
                let mut n = *n;
                loop {
                    at -= 1;
                    if let Some(d) = digits.get_mut(at) {
                        // A remainder of 10 is below 256.
                        *d = b'0' + (n % 10) as u8;
                    }
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                buf.extend_from_slice(digits.get(at..).unwrap_or_default());
            }
            Text::Base64(bytes) => {
                let start = buf.len();
                buf.resize(start + len, 0);
                if let Some(out) = buf.get_mut(start..) {
                    let _ = base64::engine::general_purpose::STANDARD.encode_slice(bytes, out);
                }
            }
        }
    }

    #[cfg(test)]
    fn render(&self) -> String {
        let mut buf = Vec::new();
        self.write(self.len(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Each byte's two lowercase hexadecimal digits.
pub(crate) static HEX_PAIRS: [[u8; 2]; 256] = hex_pairs();

#[expect(clippy::indexing_slicing, reason = "const evaluation; the loop bounds every index")]
const fn hex_pairs() -> [[u8; 2]; 256] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
}

/// The number of decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |digits| digits as usize + 1)
}

/// Appends a varint (the common one-byte case without a loop).
#[inline]
fn put_varint(mut value: u64, buf: &mut Vec<u8>) {
    while value >= 0x80 {
        buf.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Appends a field key.
#[inline]
fn put_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    put_varint(u64::from(tag << 3) | wire_type as u64, buf);
}

/// The most metadata entries an [`EventView`] holds (the pipeline's events use at most 13).
pub(crate) const MAX_METADATA: usize = 16;

/// An audit event's metadata: at most [`MAX_METADATA`] entries with distinct keys, on the
/// stack; encoded in key order, as a `BTreeMap` is.
#[derive(Clone, Copy, Default)]
pub(crate) struct Metadata<'a> {
    entries: [(&'a str, Text<'a>); MAX_METADATA],
    len: usize,
}

impl<'a> Metadata<'a> {
    /// Adds an entry in key order (the order a `BTreeMap` encodes); `key` must not be in the
    /// metadata already. Entries added in key order are appended without moving any.
    pub(crate) fn insert(&mut self, key: &'a str, value: Text<'a>) {
        debug_assert!(self.len < MAX_METADATA, "an event has more than {MAX_METADATA} metadata entries");
        debug_assert!(self.entries().iter().all(|(k, _)| *k != key), "metadata key `{key}` twice");
        let at = self.entries().iter().rposition(|(k, _)| *k < key).map_or(0, |i| i + 1);
        if let Some(shifted) = self.entries.get_mut(at..=self.len) {
            // Moves the entries from `at` on one place up, into the free place at the end (an
            // entry added in key order moves none).
            let last = shifted.len() - 1;
            shifted.copy_within(..last, 1);
            if let Some(slot) = shifted.first_mut() {
                *slot = (key, value);
            }
            self.len += 1;
        }
    }

    fn entries(&self) -> &[(&'a str, Text<'a>)] {
        self.entries.get(..self.len).unwrap_or_default()
    }
}

/// An `AuditEvent` (aesp.v1, `audit.proto`) as borrowed parts.
#[derive(Clone, Copy, Default)]
pub(crate) struct EventView<'a> {
    pub(crate) event_id: &'a str,
    pub(crate) timestamp_ms: u64,
    pub(crate) event_type: &'a str,
    pub(crate) principal_id: &'a str,
    pub(crate) tenant_id: &'a str,
    pub(crate) session_id: &'a str,
    pub(crate) resource: Text<'a>,
    pub(crate) action: &'a str,
    pub(crate) outcome: &'a str,
    pub(crate) source_ip: &'a str,
    pub(crate) user_agent: &'a str,
    pub(crate) metadata: Metadata<'a>,
    pub(crate) risk_score: Text<'a>,
    /// At most one violation (the pipeline's events record one error code).
    pub(crate) policy_violation: Option<&'a str>,
}

/// The encoded length of a length-delimited field of `len` bytes.
#[inline]
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The encoded length of a proto3 string field of `len` bytes (left out when empty).
#[inline]
fn string_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { delimited_len(tag, len) }
}

#[inline]
fn write_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(len as u64, buf);
}

#[inline]
fn write_str(tag: u32, text: &str, buf: &mut Vec<u8>) {
    if !text.is_empty() {
        write_header(tag, text.len(), buf);
        buf.extend_from_slice(text.as_bytes());
    }
}

#[inline]
fn write_text(tag: u32, text: &Text<'_>, len: usize, buf: &mut Vec<u8>) {
    if len > 0 {
        write_header(tag, len, buf);
        text.write(len, buf);
    }
}

/// The length of a map entry message (key 1, value 2; each left out when empty, as prost does).
#[inline]
fn entry_len(key: &str, value_len: usize) -> usize {
    string_len(1, key.len()) + string_len(2, value_len)
}

thread_local! {
    /// Where an event's `Display` values are rendered, once each, before it is measured.
    static RENDERED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Where in [`RENDERED`] each `Display` text of an event was rendered: the metadata values by
/// position, then the resource ([`RESOURCE`]) and the risk score ([`RISK`]).
type Spans = [(usize, usize); MAX_METADATA + 2];
const RESOURCE: usize = MAX_METADATA;
const RISK: usize = MAX_METADATA + 1;

/// `text`, or for a `Display` text what it rendered into `rendered` at `span`.
#[inline]
fn resolved<'s>(text: &'s Text<'s>, span: (usize, usize), rendered: &'s str) -> Text<'s> {
    match text {
        Text::Display(_) => Text::Str(rendered.get(span.0..span.1).unwrap_or_default()),
        other => *other,
    }
}

impl EventView<'_> {
    /// The canonical protobuf encoding: the bytes `AuditEvent::encode_to_vec` gives.
    ///
    /// The view is borrowed, not moved: it is over a kilobyte, and each move is a copy.
    pub(crate) fn encode(&self) -> Bytes {
        RENDERED.with_borrow_mut(|rendered| {
            rendered.clear();
            let mut spans: Spans = [(0, 0); MAX_METADATA + 2];
            let texts = self.metadata.entries().iter().map(|(_, v)| v);
            let positions = (0..self.metadata.len).chain([RESOURCE, RISK]);
            for (at, text) in positions.zip(texts.chain([&self.resource, &self.risk_score])) {
                if let (Text::Display(d), Some(span)) = (text, spans.get_mut(at)) {
                    let start = rendered.len();
                    let _ = write!(rendered, "{d}");
                    *span = (start, rendered.len());
                }
            }
            let encoded = self.encode_measured(rendered, &spans);
            if rendered.capacity() > 64 * 1024 {
                *rendered = String::new();
            }
            encoded
        })
    }

    /// Encodes, measuring every text first to allocate exactly once; `Display` texts are taken
    /// from where they were rendered (`spans` of `rendered`), so each renders once.
    fn encode_measured(&self, rendered: &str, spans: &Spans) -> Bytes {
        let span = |at: usize| spans.get(at).copied().unwrap_or_default();
        let resource = resolved(&self.resource, span(RESOURCE), rendered);
        let risk = resolved(&self.risk_score, span(RISK), rendered);
        let entries = self.metadata.entries();
        let mut value_lens = [0usize; MAX_METADATA];
        for (at, (len, (_, value))) in value_lens.iter_mut().zip(entries).enumerate() {
            *len = resolved(value, span(at), rendered).len();
        }
        let resource_len = resource.len();
        let risk_len = risk.len();
        let strings = [
            (1, self.event_id),
            (3, self.event_type),
            (4, self.principal_id),
            (5, self.tenant_id),
            (6, self.session_id),
            (8, self.action),
            (9, self.outcome),
            (10, self.source_ip),
            (11, self.user_agent),
        ];
        let mut total: usize = strings.iter().map(|(tag, s)| string_len(*tag, s.len())).sum();
        if self.timestamp_ms != 0 {
            total += key_len(2) + encoded_len_varint(self.timestamp_ms);
        }
        total += string_len(7, resource_len) + string_len(13, risk_len);
        for ((key, _), value_len) in entries.iter().zip(value_lens) {
            total += delimited_len(12, entry_len(key, value_len));
        }
        if let Some(violation) = self.policy_violation {
            total += delimited_len(14, violation.len());
        }

        let mut buf = Vec::with_capacity(total);
        write_str(1, self.event_id, &mut buf);
        if self.timestamp_ms != 0 {
            put_key(2, WireType::Varint, &mut buf);
            put_varint(self.timestamp_ms, &mut buf);
        }
        write_str(3, self.event_type, &mut buf);
        write_str(4, self.principal_id, &mut buf);
        write_str(5, self.tenant_id, &mut buf);
        write_str(6, self.session_id, &mut buf);
        write_text(7, &resource, resource_len, &mut buf);
        write_str(8, self.action, &mut buf);
        write_str(9, self.outcome, &mut buf);
        write_str(10, self.source_ip, &mut buf);
        write_str(11, self.user_agent, &mut buf);
        for (at, ((key, value), value_len)) in entries.iter().zip(value_lens).enumerate() {
            write_header(12, entry_len(key, value_len), &mut buf);
            write_str(1, key, &mut buf);
            write_text(2, &resolved(value, span(at), rendered), value_len, &mut buf);
        }
        write_text(13, &risk, risk_len, &mut buf);
        if let Some(violation) = self.policy_violation {
            // A repeated string: every element is written, even an empty one.
            write_header(14, violation.len(), &mut buf);
            buf.extend_from_slice(violation.as_bytes());
        }
        debug_assert_eq!(buf.len(), total, "a rendered text changed between measuring and writing");
        Bytes::from(buf)
    }

    /// The same event as a message (tests compare the encodings).
    #[cfg(test)]
    pub(crate) fn as_event(&self) -> aesp_core::proto::v1::AuditEvent {
        aesp_core::proto::v1::AuditEvent {
            event_id: self.event_id.to_owned(),
            timestamp_ms: self.timestamp_ms,
            event_type: self.event_type.to_owned(),
            principal_id: self.principal_id.to_owned(),
            tenant_id: self.tenant_id.to_owned(),
            session_id: self.session_id.to_owned(),
            resource: self.resource.render(),
            action: self.action.to_owned(),
            outcome: self.outcome.to_owned(),
            source_ip: self.source_ip.to_owned(),
            user_agent: self.user_agent.to_owned(),
            metadata: self.metadata.entries().iter().map(|(k, v)| ((*k).to_owned(), v.render())).collect(),
            risk_score: self.risk_score.render(),
            policy_violations: self.policy_violation.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

/// The `Debug` name of a matched policy's effect (what the audit trail has always recorded).
fn effect_name(m: &PolicyMatch) -> &'static str {
    match m.effect() {
        Effect::Allow => "Allow",
        Effect::Deny => "Deny",
        Effect::Audit => "Audit",
    }
}

/// A risk score with three decimals.
pub(crate) struct Risk(pub(crate) f64);

impl Risk {
    /// The score as event text: the common zero as a constant, anything else formatted.
    pub(crate) fn text(&self) -> Text<'_> {
        if self.0 == 0.0 && self.0.is_sign_positive() { Text::Str("0.000") } else { Text::Display(self) }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0)
    }
}

/// A value's `Debug` as its `Display`.
pub(crate) struct AsDebug<'a, T: fmt::Debug>(pub(crate) &'a T);

impl<T: fmt::Debug> fmt::Display for AsDebug<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn assert_same(view: EventView<'_>) {
        let expected = view.as_event().encode_to_vec();
        assert_eq!(view.encode().as_ref(), expected.as_slice(), "{:?}", view.as_event());
    }

    #[test]
    fn encodes_as_prost_does() {
        assert_same(EventView::default());
        let number = 1_234_567_u64;
        let risk = Risk(0.25);
        let input = vec![7u8; 1000];
        let long = "x".repeat(300);
        let mut metadata = Metadata::default();
        for (key, value) in [
            ("zeta", Text::Str("last")),
            ("empty", Text::Str("")),
            ("number", Text::Display(&number)),
            ("counted", Text::Number(number)),
            ("zero", Text::Number(0)),
            ("decision_input", Text::Base64(&input)),
            ("digest", Text::Hex(&[0x00, 0x9f, 0xa0, 0xff])),
            ("a", Text::Concat("tool:", "sql.query")),
            ("long", Text::Str(&long)),
            ("", Text::Str("no key")),
        ] {
            metadata.insert(key, value);
        }
        assert_same(EventView {
            event_id: "0190c4a2-0000-7000-8000-000000000000",
            timestamp_ms: 1_700_000_000_000,
            event_type: "TOOL_INVOCATION_START",
            principal_id: "alice",
            tenant_id: "acme",
            session_id: "",
            resource: Text::Concat("tool:", "sql.query"),
            action: "invoke",
            outcome: "SUCCESS",
            source_ip: "10.1.2.3",
            user_agent: "",
            metadata,
            risk_score: Text::Display(&risk),
            policy_violation: Some(""),
        });
        assert_eq!(Text::Hex(&[0x00, 0x9f, 0xa0, 0xff]).render(), "009fa0ff");
        // Across the 32-byte chunks the writer works in.
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        for n in [0, 1, 31, 32, 33, 64, 65, 256] {
            let expected: String = bytes[..n].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(Text::Hex(&bytes[..n]).render(), expected);
            assert_eq!(Text::Hex(&bytes[..n]).len(), expected.len());
        }
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(Text::Number(n).render(), n.to_string());
            assert_eq!(Text::Number(n).len(), n.to_string().len());
        }
        for score in [0.0, -0.0, 0.0004, 0.0005, 0.25, 1.0, 12.3456] {
            assert_eq!(Risk(score).text().render(), format!("{score:.3}"));
        }
        let mut full = Metadata::default();
        let keys: Vec<String> = (0..MAX_METADATA).rev().map(|i| format!("k{i:02}")).collect();
        for key in &keys {
            full.insert(key, Text::Str(key));
        }
        assert_same(EventView {
            event_type: "X",
            metadata: full,
            policy_violation: Some("POLICY_VIOLATION"),
            ..EventView::default()
        });
    }
}
