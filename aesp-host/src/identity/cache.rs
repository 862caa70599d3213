//! The cache of verified access tokens, and the revocations that must reach it.
//!
//! A verified token is kept, keyed by the SHA-256 of its text, until it expires, so that the
//! hot path costs a hash and a map lookup instead of a signature verification. The cache is
//! bounded: sharded maps, each evicting its expired entries and then an arbitrary eighth when
//! full.
//!
//! Revocation reaches cached entries through an **epoch**: every revocation on this Host
//! (of a token, a refresh family or a principal) is recorded in [`Revocations`] and then bumps
//! the epoch. A cached entry remembers the epoch it was last checked at; a hit at the same
//! epoch is good, a hit at a later one re-checks the entry against the recorded revocations
//! (in memory, no I/O) first. The epoch is read *before* a token is verified and checked
//! against the store, so a revocation that races with the verification is seen at the next
//! hit. Revocation records are forgotten once every token they could concern has expired.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use super::tokens::ValidatedToken;

const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry {
    token: Arc<ValidatedToken>,
    epoch: AtomicU64,
}

/// Verified tokens by the SHA-256 of their text.
#[derive(Debug)]
pub(crate) struct TokenCache {
    shards: Vec<RwLock<HashMap<[u8; 32], Entry>>>,
    shard_capacity: usize,
}

/// What a cache lookup found.
#[derive(Debug)]
pub(crate) enum Hit {
    /// Valid at this epoch.
    Valid(Arc<ValidatedToken>),
    /// Expired (and dropped).
    Expired,
    /// Revoked (and dropped).
    Revoked,
    /// Not cached.
    Miss,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        let shard_capacity = capacity.div_ceil(SHARDS).max(1);
        Self { shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(), shard_capacity }
    }

    fn shard(&self, digest: &[u8; 32]) -> Option<&RwLock<HashMap<[u8; 32], Entry>>> {
        self.shards.get(usize::from(digest[0]) % SHARDS)
    }

    /// Looks `digest` up at `now` and `epoch`.
    pub(crate) fn get(&self, digest: &[u8; 32], now: u64, epoch: u64, revocations: &Revocations) -> Hit {
        let Some(shard) = self.shard(digest) else { return Hit::Miss };
        let verdict = {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            let Some(entry) = map.get(digest) else { return Hit::Miss };
            if now >= entry.token.expires_at_ms {
                Hit::Expired
            } else if entry.epoch.load(Ordering::Acquire) == epoch {
                return Hit::Valid(Arc::clone(&entry.token));
            } else if revocations.revokes(&entry.token, now) {
                Hit::Revoked
            } else {
                entry.epoch.store(epoch, Ordering::Release);
                return Hit::Valid(Arc::clone(&entry.token));
            }
        };
        shard.write().unwrap_or_else(PoisonError::into_inner).remove(digest);
        verdict
    }

    /// Caches a token verified at `epoch`.
    pub(crate) fn insert(&self, digest: [u8; 32], token: Arc<ValidatedToken>, epoch: u64, now: u64) {
        let Some(shard) = self.shard(&digest) else { return };
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.shard_capacity && !map.contains_key(&digest) {
            map.retain(|_, e| e.token.expires_at_ms > now);
            if map.len() >= self.shard_capacity {
                let drop = (self.shard_capacity / 8).max(1);
                let victims: Vec<[u8; 32]> = map.keys().take(drop).copied().collect();
                for victim in victims {
                    map.remove(&victim);
                }
            }
        }
        map.insert(digest, Entry { token, epoch: AtomicU64::new(epoch) });
    }

    /// The number of cached tokens.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }
}

/// Revocations made on this Host, for re-checking cached tokens.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    epoch: AtomicU64,
    sets: Mutex<Sets>,
}

/// Each map holds what is revoked and the time after which it can be forgotten (when every
/// token it could concern has expired).
#[derive(Debug, Default)]
struct Sets {
    tokens: HashMap<String, u64>,
    families: HashMap<(String, String), u64>,
    principals: HashMap<(String, String), u64>,
}

impl Revocations {
    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn record(&self, now: u64, change: impl FnOnce(&mut Sets)) {
        {
            let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
            sets.tokens.retain(|_, until| *until > now);
            sets.families.retain(|_, until| *until > now);
            sets.principals.retain(|_, until| *until > now);
            change(&mut sets);
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Revokes the access token `jti` (which expires at `expires_at`).
    pub(crate) fn revoke_token(&self, jti: &str, expires_at: u64, now: u64) {
        self.record(now, |s| {
            s.tokens.insert(jti.to_owned(), expires_at);
        });
    }

    /// Revokes the access tokens issued from a refresh family until `until`.
    pub(crate) fn revoke_family(&self, tenant: &str, family: &str, until: u64, now: u64) {
        self.record(now, |s| {
            s.families.insert((tenant.to_owned(), family.to_owned()), until);
        });
    }

    /// Revokes every access token of a principal issued before now, until `until`.
    pub(crate) fn revoke_principal(&self, tenant: &str, principal: &str, until: u64, now: u64) {
        self.record(now, |s| {
            s.principals.insert((tenant.to_owned(), principal.to_owned()), until);
        });
    }

    /// Whether a revocation recorded here covers `token`.
    pub(crate) fn revokes(&self, token: &ValidatedToken, now: u64) -> bool {
        let sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        let live = |until: Option<&u64>| until.is_some_and(|u| *u > now);
        let tenant = token.context.tenant_id.clone();
        live(sets.tokens.get(&token.token_id))
            || (!token.family_id.is_empty()
                && live(sets.families.get(&(tenant.clone(), token.family_id.clone()))))
            || live(sets.principals.get(&(tenant, token.context.principal_id.clone())))
    }
}
