//! Access-token validation: a cached validation (the hot path: SHA-256 of the token and a
//! map lookup) beside the first, uncached one (EdDSA signature verification, claims, and
//! three state-store reads on the in-memory store), with a bare ed25519 verification as the
//! peer, and the ratios.
//!
//! `cargo bench -p aesp-benches --bench token_validation`
#![expect(clippy::expect_used, reason = "a benchmark fails by panicking")]

use std::{
    collections::BTreeMap,
    hint::black_box,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aesp_audit::{AuditLog, AuditLogOptions, MemoryStorage, NoteSigner};
use aesp_core::{Clock, Ed25519Signer, MemoryStore, PublicKey, Signer, StateStore, SystemClock};
use aesp_host::{IdentityManager, IdentityOptions, NewServiceAccount, PasswordHashing};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use criterion::{Criterion, criterion_group, criterion_main};

/// Mean time per operation of each benchmark's last sample, for the summary.
static MEASURED: Mutex<BTreeMap<&'static str, f64>> = Mutex::new(BTreeMap::new());

fn record(name: &'static str, elapsed: Duration, ops: u64) {
    let per_op = elapsed.as_secs_f64() / ops.max(1) as f64;
    MEASURED.lock().expect("lock").insert(name, per_op);
}

struct Setup {
    /// Issues tokens (and has them cached).
    issuer: IdentityManager,
    /// Validates them: same state and keys, its own (cold) cache.
    validator: IdentityManager,
    tenant: &'static str,
    principal: String,
}

async fn setup() -> Setup {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let audit_key: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate().expect("key"));
    let audit = AuditLog::open(
        Arc::new(MemoryStorage::new(Arc::clone(&clock))),
        NoteSigner::new("bench", audit_key).expect("note signer"),
        AuditLogOptions::new("bench"),
    )
    .await
    .expect("audit log");
    let signer: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate().expect("key"));
    let mut options = IdentityOptions::default();
    options.password_hashing = PasswordHashing::insecure_for_tests();
    let manager = || {
        IdentityManager::new(
            Arc::clone(&state),
            Arc::clone(&clock),
            audit.clone(),
            Arc::clone(&signer),
            options.clone(),
        )
    };
    let issuer = manager().await.expect("identity");
    let validator = manager().await.expect("identity");
    let sa = issuer
        .create_service_account("acme", NewServiceAccount::new("agent"), "bench")
        .await
        .expect("service account");
    Setup { issuer, validator, tenant: "acme", principal: sa.principal.principal_id }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn token_validation(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup());
    let token = rt
        .block_on(s.issuer.issue_tokens(s.tenant, &s.principal, "bench"))
        .expect("tokens")
        .access_token
        .expose()
        .to_owned();
    rt.block_on(s.validator.validate_token(&token)).expect("valid");

    let mut group = c.benchmark_group("token_validation");
    group.sample_size(20).measurement_time(Duration::from_secs(4));

    group.bench_function("cached", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(s.validator.validate_token(black_box(&token)).await.expect("valid"));
                }
                let elapsed = start.elapsed();
                record("cached", elapsed, iters);
                elapsed
            })
        });
    });

    group.bench_function("uncached (first validation)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut tokens = Vec::new();
                for _ in 0..iters {
                    let issued =
                        s.issuer.issue_tokens(s.tenant, &s.principal, "bench").await.expect("tokens");
                    tokens.push(issued.access_token.expose().to_owned());
                }
                let start = Instant::now();
                for token in &tokens {
                    black_box(s.validator.validate_token(token).await.expect("valid"));
                }
                let elapsed = start.elapsed();
                record("uncached", elapsed, iters);
                elapsed
            })
        });
    });

    // The peer: the signature verification that every call would cost without the cache.
    let (input, signature) = token.rsplit_once('.').expect("a JWS");
    let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    let key: PublicKey = s.issuer.verification_keys().into_iter().next().expect("a key");
    group.bench_function("peer: ed25519 verify only", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                key.verify(black_box(input.as_bytes()), black_box(&signature)).expect("verifies");
            }
            let elapsed = start.elapsed();
            record("ed25519_verify", elapsed, iters);
            elapsed
        });
    });
    group.finish();

    let measured = MEASURED.lock().expect("lock");
    let get = |name| measured.get(name).copied().unwrap_or(f64::NAN);
    let (cached, uncached, verify) = (get("cached"), get("uncached"), get("ed25519_verify"));
    println!("\ntoken validation summary (last sample of each benchmark):");
    println!("  cached:                      {:>9.2} µs", cached * 1e6);
    println!("  uncached (first validation): {:>9.2} µs", uncached * 1e6);
    println!("  peer, ed25519 verify only:   {:>9.2} µs", verify * 1e6);
    println!(
        "  uncached / cached: {:.0}x; ed25519 verify / cached: {:.0}x",
        uncached / cached,
        verify / cached
    );
}

criterion_group!(benches, token_validation);
criterion_main!(benches);
