//! The token-signing keys: the current [`Signer`] and the retired public keys that still
//! verify, each until the last token it signed has expired (rotation with overlap).
//!
//! The public halves are recorded in the state store (`t/_system/identity/token-keys/<kid>`)
//! so that the overlap survives a restart: a Host restarted with a new key file retires the
//! previous key automatically and keeps verifying its tokens until they expire.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
};

use aesp_core::{PublicKey, Result, SignatureAlgorithm, Signer, StateStore, StateStoreExt as _, Txn};
use prost::Message as _;

use super::store::{TokenKeyRecord, token_key_key, token_keys_prefix};

#[derive(Debug)]
struct Keys {
    current: Arc<dyn Signer>,
    /// Every key that verifies, the current one included, with the time it stops verifying
    /// (`u64::MAX` for the current key).
    verifying: BTreeMap<String, (PublicKey, u64)>,
}

/// The signing key and the verification keys of access tokens.
#[derive(Debug)]
pub(crate) struct TokenKeys {
    keys: RwLock<Keys>,
}

impl TokenKeys {
    /// Loads the recorded keys and makes `signer` the current one; a different key recorded
    /// as current is retired now and verifies for `overlap_ms` more.
    pub(crate) async fn load(
        state: &dyn StateStore,
        signer: Arc<dyn Signer>,
        now: u64,
        overlap_ms: u64,
    ) -> Result<Self> {
        let page = state.scan_all(token_keys_prefix().as_bytes(), 10_000).await?;
        let mut verifying = BTreeMap::new();
        let mut txn = Txn::new();
        let current_kid = signer.key_id().to_owned();
        for kv in page.kvs {
            let kid = String::from_utf8_lossy(kv.key.get(token_keys_prefix().len()..).unwrap_or_default())
                .into_owned();
            let Ok(mut record) = TokenKeyRecord::decode(kv.value.as_slice()) else { continue };
            if kid == current_kid {
                continue;
            }
            if record.retired_at == 0 {
                record.retired_at = now;
                record.verify_until = now.saturating_add(overlap_ms);
                txn = txn.put(kv.key.clone(), record.encode_to_vec());
            }
            if record.verify_until > now {
                verifying.insert(kid.clone(), (ed25519(&kid, record.public_key), record.verify_until));
            } else {
                txn = txn.delete(kv.key.clone());
            }
        }
        let record = TokenKeyRecord {
            public_key: signer.public_key().bytes.clone(),
            activated_at: now,
            retired_at: 0,
            verify_until: 0,
        };
        let key = token_key_key(&current_kid);
        if state.get(key.as_bytes()).await?.is_none() {
            txn = txn.put(key, record.encode_to_vec());
        }
        if !txn.ops.is_empty() {
            let _ = state.txn(txn).await?;
        }
        verifying.insert(current_kid, (signer.public_key().clone(), u64::MAX));
        Ok(Self { keys: RwLock::new(Keys { current: signer, verifying }) })
    }

    /// The current signer.
    pub(crate) fn current(&self) -> Arc<dyn Signer> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner).current)
    }

    /// The key `kid` if it still verifies at `now`.
    pub(crate) fn verifier(&self, kid: &str, now: u64) -> Option<PublicKey> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.verifying.get(kid).filter(|(_, until)| *until > now).map(|(key, _)| key.clone())
    }

    /// The keys that verify at `now`, the current one first.
    pub(crate) fn verification_keys(&self, now: u64) -> Vec<PublicKey> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let current = keys.current.public_key().clone();
        let mut retired: Vec<&(PublicKey, u64)> =
            keys.verifying.values().filter(|(k, until)| *until > now && k.key_id != current.key_id).collect();
        retired.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        std::iter::once(current).chain(retired.into_iter().map(|(k, _)| k.clone())).collect()
    }

    /// Makes `signer` current; the previous key verifies for `overlap_ms` more. Recorded in
    /// the state store first.
    pub(crate) async fn rotate(
        &self,
        state: &dyn StateStore,
        signer: Arc<dyn Signer>,
        now: u64,
        overlap_ms: u64,
    ) -> Result<String> {
        let previous = self.current();
        let old_kid = previous.key_id().to_owned();
        if old_kid == signer.key_id() {
            return Ok(old_kid);
        }
        let retired = TokenKeyRecord {
            public_key: previous.public_key().bytes.clone(),
            activated_at: 0,
            retired_at: now,
            verify_until: now.saturating_add(overlap_ms),
        };
        let new = TokenKeyRecord {
            public_key: signer.public_key().bytes.clone(),
            activated_at: now,
            retired_at: 0,
            verify_until: 0,
        };
        let _ = state
            .txn(
                Txn::new()
                    .put(token_key_key(&old_kid), retired.encode_to_vec())
                    .put(token_key_key(signer.key_id()), new.encode_to_vec()),
            )
            .await?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.verifying.retain(|_, (_, until)| *until > now);
        keys.verifying.insert(old_kid.clone(), (previous.public_key().clone(), retired.verify_until));
        keys.verifying.insert(signer.key_id().to_owned(), (signer.public_key().clone(), u64::MAX));
        keys.current = signer;
        Ok(old_kid)
    }
}

fn ed25519(kid: &str, bytes: Vec<u8>) -> PublicKey {
    PublicKey { key_id: kid.to_owned(), algorithm: SignatureAlgorithm::Ed25519, bytes }
}
