//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::sync::Arc;

use aesp_audit::{AuditLog, AuditLogOptions, LogStorage, NoteSigner};
use aesp_core::{Ed25519Signer, proto::v1::AuditEvent};

pub(crate) const ORIGIN: &str = "audit.example.com/test";

pub(crate) fn signer(seed: u8, name: &str) -> NoteSigner {
    NoteSigner::new(name, Arc::new(Ed25519Signer::from_seed(&[seed; 32]))).unwrap()
}

pub(crate) fn event(task: u64, seq: u64) -> AuditEvent {
    AuditEvent {
        event_id: format!("{task:04}-{seq:08}"),
        timestamp_ms: 1_700_000_000_000 + seq,
        event_type: "TOOL_INVOCATION_START".into(),
        principal_id: format!("agent-{task}"),
        tenant_id: "acme".into(),
        resource: "tool:payments.refund".into(),
        action: "invoke".into(),
        outcome: "SUCCESS".into(),
        metadata: [("correlation_id".to_owned(), format!("c-{seq}"))].into_iter().collect(),
        ..AuditEvent::default()
    }
}

pub(crate) fn options() -> AuditLogOptions {
    let mut options = AuditLogOptions::new(ORIGIN);
    options.checkpoint_every = 50;
    options
}

/// [`options`] with a query index of the latest 1,024 entries only (its least), so that
/// readers of a longer log reach the older entries through storage.
pub(crate) fn small_index() -> AuditLogOptions {
    let mut options = options();
    options.index_entries = 1024;
    options
}

pub(crate) async fn open_log(storage: Arc<dyn LogStorage>, signer: &NoteSigner) -> AuditLog {
    AuditLog::open(storage, signer.clone(), options()).await.unwrap()
}

/// A small deterministic generator (xorshift64*), so that a failure reproduces from its seed
/// (which must not be zero).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// One of `items`.
    pub(crate) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let at = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        items.get(at).copied().unwrap_or_default()
    }
}
