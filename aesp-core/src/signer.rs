//! The signing seam: keys that sign audit checkpoints and access tokens.
//!
//! [`Signer`] is one private key; [`KeyProvider`] hands out the current signer for a
//! [`KeyPurpose`] and the public keys that still verify (so keys rotate with overlap). The
//! built-in implementation is an ed25519 key held in memory or in a PKCS#8 PEM file
//! ([`Ed25519Signer`]) and a [`KeyRing`] of them; a KMS or HSM implements the same traits.

use std::{collections::BTreeMap, fmt, path::Path, sync::Arc};

use async_trait::async_trait;
use ed25519_dalek::{
    Signer as _, SigningKey, VerifyingKey,
    pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding},
};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, ErrorCode, Result};

/// A signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureAlgorithm {
    /// Ed25519 (RFC 8032): 32-byte public keys, 64-byte signatures.
    Ed25519,
}

/// What a key signs. Keys are never shared between purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyPurpose {
    /// Signed checkpoints of the audit log.
    AuditCheckpoint,
    /// Access tokens (JWTs).
    AccessToken,
}

/// A public key that verifies signatures, with the id that names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey {
    /// The key's id ([`key_id`] for the built-in keys).
    pub key_id: String,
    /// The algorithm.
    pub algorithm: SignatureAlgorithm,
    /// The raw public key (32 bytes for Ed25519).
    pub bytes: Vec<u8>,
}

impl PublicKey {
    /// Verifies `signature` over `message`; strict ed25519 verification (no malleable or
    /// small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        match self.algorithm {
            SignatureAlgorithm::Ed25519 => {
                let key: [u8; 32] = self.bytes.as_slice().try_into().map_err(|_| bad_key("not 32 bytes"))?;
                let key = VerifyingKey::from_bytes(&key).map_err(|_| bad_key("not a curve point"))?;
                let signature =
                    ed25519_dalek::Signature::from_slice(signature).map_err(|_| bad_signature())?;
                key.verify_strict(message, &signature).map_err(|_| bad_signature())
            }
        }
    }
}

fn bad_key(why: &str) -> Error {
    Error::invalid_argument(format!("invalid ed25519 public key: {why}"))
}

fn bad_signature() -> Error {
    Error::new(ErrorCode::AuthenticationFailed, "signature verification failed")
}

/// The id of an ed25519 public key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = Sha256::digest(public_key);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// One private signing key.
///
/// # Contract
/// - `public_key` verifies every signature that `sign` returns, with
///   [`PublicKey::verify`].
/// - `key_id` is stable for the life of the key and distinct between keys.
/// - `sign` may be slow (a remote KMS): callers sign batches or checkpoints, never per call
///   on the hot path. An error means nothing was signed.
/// - The private key never leaves the implementation through this trait, and `Debug` never
///   shows it.
#[async_trait]
pub trait Signer: Send + Sync + fmt::Debug + 'static {
    /// The key's public half, with its id and algorithm.
    fn public_key(&self) -> &PublicKey;

    /// The key's id.
    fn key_id(&self) -> &str {
        &self.public_key().key_id
    }

    /// Signs `message`.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}

/// The keys of a Host, by purpose.
///
/// # Contract
/// - `signer(purpose)` is the key that signs new material for `purpose`; after a rotation it
///   returns the new key.
/// - `verification_keys(purpose)` includes the current key and every retired key whose
///   signatures must still verify (rotation with overlap), newest first.
/// - An unknown purpose is [`ErrorCode::ConfigurationError`].
#[async_trait]
pub trait KeyProvider: Send + Sync + fmt::Debug + 'static {
    /// The current signer for `purpose`.
    async fn signer(&self, purpose: KeyPurpose) -> Result<Arc<dyn Signer>>;

    /// The public keys that verify `purpose`, newest first.
    async fn verification_keys(&self, purpose: KeyPurpose) -> Result<Vec<PublicKey>>;
}

/// An ed25519 private key in memory, loaded from or saved to PKCS#8 PEM.
pub struct Ed25519Signer {
    key: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer").field("key_id", &self.public.key_id).finish_non_exhaustive()
    }
}

impl Ed25519Signer {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::internal("the system random generator failed").with_source(e))?;
        let signer = Self::from_seed(&seed);
        seed.fill(0);
        Ok(signer)
    }

    /// The key with this 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let public_bytes = key.verifying_key().to_bytes().to_vec();
        let public = PublicKey {
            key_id: key_id(&public_bytes),
            algorithm: SignatureAlgorithm::Ed25519,
            bytes: public_bytes,
        };
        Self { key, public }
    }

    /// Parses a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| Error::invalid_argument(format!("not an ed25519 PKCS#8 PEM key: {e}")))?;
        Ok(Self::from_seed(&key.to_bytes()))
    }

    /// Loads a PKCS#8 PEM file.
    pub fn from_pkcs8_pem_file(path: &Path) -> Result<Self> {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorCode::ConfigurationError, format!("cannot read key file `{}`", path.display()))
                .with_source(e)
        })?;
        Self::from_pkcs8_pem(&pem).map_err(|e| {
            Error::new(
                ErrorCode::ConfigurationError,
                format!("key file `{}`: {}", path.display(), e.message()),
            )
        })
    }

    /// The key as PKCS#8 PEM. The text holds the private key: store it with care.
    pub fn to_pkcs8_pem(&self) -> Result<String> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::internal("cannot encode the key as PKCS#8").with_source(e))?;
        Ok(pem.as_str().to_owned())
    }

    /// Writes the key as PKCS#8 PEM to a new file readable only by its owner (mode 0600 on
    /// Unix); refuses to overwrite an existing file.
    pub fn write_pkcs8_pem_file(&self, path: &Path) -> Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let io = |e: std::io::Error| {
            Error::new(ErrorCode::ConfigurationError, format!("cannot write key file `{}`", path.display()))
                .with_source(e)
        };
        let mut file = options.open(path).map_err(io)?;
        file.write_all(self.to_pkcs8_pem()?.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Signs synchronously (ed25519 is local and fast: about 20 µs).
    pub fn sign_now(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_bytes().to_vec()
    }
}

#[async_trait]
impl Signer for Ed25519Signer {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        Ok(self.sign_now(message))
    }
}

/// A [`KeyProvider`] held in memory: one current signer per purpose and the retired public
/// keys that still verify.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: std::sync::RwLock<BTreeMap<KeyPurpose, Slot>>,
}

#[derive(Debug)]
struct Slot {
    current: Arc<dyn Signer>,
    retired: Vec<PublicKey>,
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `signer` the current key for `purpose`; the previous one, if any, is retired
    /// and keeps verifying.
    pub fn rotate(&self, purpose: KeyPurpose, signer: Arc<dyn Signer>) {
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match keys.get_mut(&purpose) {
            Some(slot) => {
                let old = std::mem::replace(&mut slot.current, signer);
                slot.retired.insert(0, old.public_key().clone());
            }
            None => {
                keys.insert(purpose, Slot { current: signer, retired: Vec::new() });
            }
        }
    }

    /// Stops accepting signatures of a retired key.
    pub fn forget(&self, purpose: KeyPurpose, key_id: &str) {
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = keys.get_mut(&purpose) {
            slot.retired.retain(|k| k.key_id != key_id);
        }
    }
}

fn no_key(purpose: KeyPurpose) -> Error {
    Error::new(ErrorCode::ConfigurationError, format!("no key is configured for {purpose:?}"))
}

#[async_trait]
impl KeyProvider for KeyRing {
    async fn signer(&self, purpose: KeyPurpose) -> Result<Arc<dyn Signer>> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.get(&purpose).map(|slot| Arc::clone(&slot.current)).ok_or_else(|| no_key(purpose))
    }

    async fn verification_keys(&self, purpose: KeyPurpose) -> Result<Vec<PublicKey>> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = keys.get(&purpose).ok_or_else(|| no_key(purpose))?;
        Ok(std::iter::once(slot.current.public_key().clone()).chain(slot.retired.iter().cloned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signatures_verify_and_tampering_is_detected() {
        let signer = Ed25519Signer::generate().unwrap();
        let signature = signer.sign(b"checkpoint 42").await.unwrap();
        assert_eq!(signature.len(), 64);
        signer.public_key().verify(b"checkpoint 42", &signature).unwrap();
        let error = signer.public_key().verify(b"checkpoint 43", &signature).unwrap_err();
        assert_eq!(error.code(), ErrorCode::AuthenticationFailed);
        let mut flipped = signature.clone();
        flipped[10] ^= 1;
        assert!(signer.public_key().verify(b"checkpoint 42", &flipped).is_err());
        assert!(signer.public_key().verify(b"checkpoint 42", &signature[..63]).is_err());
        let other = Ed25519Signer::generate().unwrap();
        assert!(other.public_key().verify(b"checkpoint 42", &signature).is_err());
        assert_ne!(other.key_id(), signer.key_id());
    }

    #[test]
    fn pem_round_trip_and_file_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.pem");
        let signer = Ed25519Signer::from_seed(&[7; 32]);
        signer.write_pkcs8_pem_file(&path).unwrap();
        let loaded = Ed25519Signer::from_pkcs8_pem_file(&path).unwrap();
        assert_eq!(loaded.public_key(), signer.public_key());
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Never overwritten.
        assert!(signer.write_pkcs8_pem_file(&path).is_err());
        assert!(!format!("{loaded:?}").contains("key:"));
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Ed25519Signer::from_pkcs8_pem_file(&dir.path().join("nope.pem")).unwrap_err();
        assert_eq!(missing.code(), ErrorCode::ConfigurationError);
        let path = dir.path().join("garbage.pem");
        std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let garbage = Ed25519Signer::from_pkcs8_pem_file(&path).unwrap_err();
        assert!(garbage.message().contains("garbage.pem"), "{garbage}");
    }

    #[tokio::test]
    async fn key_ring_rotates_with_overlap() {
        let ring = KeyRing::new();
        assert_eq!(
            ring.signer(KeyPurpose::AccessToken).await.unwrap_err().code(),
            ErrorCode::ConfigurationError
        );
        let first: Arc<dyn Signer> = Arc::new(Ed25519Signer::from_seed(&[1; 32]));
        let second: Arc<dyn Signer> = Arc::new(Ed25519Signer::from_seed(&[2; 32]));
        ring.rotate(KeyPurpose::AccessToken, Arc::clone(&first));
        let old_signature = ring.signer(KeyPurpose::AccessToken).await.unwrap().sign(b"t").await.unwrap();
        ring.rotate(KeyPurpose::AccessToken, Arc::clone(&second));
        assert_eq!(ring.signer(KeyPurpose::AccessToken).await.unwrap().key_id(), second.key_id());
        let keys = ring.verification_keys(KeyPurpose::AccessToken).await.unwrap();
        assert_eq!(
            keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(),
            [second.key_id(), first.key_id()]
        );
        assert!(keys.iter().any(|k| k.verify(b"t", &old_signature).is_ok()));
        ring.forget(KeyPurpose::AccessToken, first.key_id());
        let keys = ring.verification_keys(KeyPurpose::AccessToken).await.unwrap();
        assert!(keys.iter().all(|k| k.verify(b"t", &old_signature).is_err()));
        // Purposes are separate.
        assert!(ring.signer(KeyPurpose::AuditCheckpoint).await.is_err());
    }
}
