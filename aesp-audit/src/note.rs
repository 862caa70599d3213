//! C2SP `signed-note`: a text signed by one or more named keys, and the ed25519 key names,
//! key ids and verifier-key text that other implementations (Go's `golang.org/x/mod/sumdb/note`)
//! use.

use std::{fmt, sync::Arc};

use aesp_core::{Error, ErrorCode, PublicKey, Result, SignatureAlgorithm, Signer};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use sha2::{Digest as _, Sha256};

/// The signature type byte of ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// The most signatures a note may carry.
const MAX_SIGNATURES: usize = 100;
/// The largest note accepted, in bytes.
pub const MAX_NOTE_LEN: usize = 1 << 20;
const SIG_PREFIX: &str = "\u{2014} ";

/// The signed-note key id of an ed25519 key: the first four bytes (big-endian) of
/// `SHA-256(name || 0x0A || 0x01 || public key)`.
pub fn note_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ALG_ED25519]);
    hasher.update(public_key);
    let digest: [u8; 32] = hasher.finalize().into();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('+') || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid_argument(format!(
            "key name `{name}` must be non-empty, without spaces or `+`"
        )));
    }
    Ok(())
}

/// Checks that `text` can be the body of a note: non-empty UTF-8 ending in a newline, with no
/// control characters other than newline.
pub(crate) fn check_text(text: &str) -> Result<()> {
    if !text.ends_with('\n') {
        return Err(Error::invalid_argument("note text must end with a newline"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid_argument("note text must not contain control characters"));
    }
    Ok(())
}

/// A key that verifies signed notes: a name, its key id and an ed25519 public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    public_key: [u8; 32],
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NoteVerifier").field(&self.to_text()).finish()
    }
}

impl NoteVerifier {
    /// The verifier of the ed25519 `public_key` under `name`.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self> {
        check_name(name)?;
        Ok(Self { name: name.to_owned(), key_id: note_key_id(name, &public_key), public_key })
    }

    /// Parses the verifier-key text `<name>+<8 hex digits of key id>+<base64(0x01 || key)>`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid_argument(format!("invalid verifier key: {why}"));
        let mut parts = text.rsplitn(3, '+');
        let (Some(key), Some(id), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected `name+id+key`"));
        };
        check_name(name)?;
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the key id is not 8 hex digits"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| bad("the key id is not hex"))?;
        let key = STANDARD.decode(key).map_err(|_| bad("the key is not base64"))?;
        let Some((&ALG_ED25519, public)) = key.split_first() else {
            return Err(bad("not an ed25519 key"));
        };
        let public: [u8; 32] = public.try_into().map_err(|_| bad("an ed25519 key has 32 bytes"))?;
        let verifier = Self::new(name, public)?;
        if verifier.key_id != id {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(verifier)
    }

    /// The verifier-key text, `<name>+<hex key id>+<base64(0x01 || key)>`.
    pub fn to_text(&self) -> String {
        let mut key = Vec::with_capacity(33);
        key.push(ALG_ED25519);
        key.extend_from_slice(&self.public_key);
        format!("{}+{:08x}+{}", self.name, self.key_id, STANDARD.encode(key))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The raw ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        let key = PublicKey {
            key_id: format!("{:08x}", self.key_id),
            algorithm: SignatureAlgorithm::Ed25519,
            bytes: self.public_key.to_vec(),
        };
        key.verify(message, signature)
    }
}

/// A key that signs notes: a name and an ed25519 [`Signer`] (a local key, a KMS, an HSM).
#[derive(Clone, Debug)]
pub struct NoteSigner {
    verifier: NoteVerifier,
    signer: Arc<dyn Signer>,
}

impl NoteSigner {
    /// Signs as `name` with `signer`, which must be an ed25519 key. A rotated key gets a new
    /// name, so notes signed by the old one keep verifying with the old verifier.
    pub fn new(name: &str, signer: Arc<dyn Signer>) -> Result<Self> {
        let public = signer.public_key();
        if public.algorithm != SignatureAlgorithm::Ed25519 {
            return Err(Error::invalid_argument("signed notes need an ed25519 key"));
        }
        let key: [u8; 32] = public
            .bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::invalid_argument("an ed25519 public key has 32 bytes"))?;
        Ok(Self { verifier: NoteVerifier::new(name, key)?, signer })
    }

    /// The verifier of this signer's notes.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// Signs `text`, giving a note with this key's signature.
    pub async fn sign(&self, text: &str) -> Result<SignedNote> {
        check_text(text)?;
        let signature = self.signer.sign(text.as_bytes()).await?;
        if signature.len() != 64 {
            return Err(Error::internal("the signer returned a signature that is not 64 bytes"));
        }
        Ok(SignedNote {
            text: text.to_owned(),
            signatures: vec![NoteSignature {
                name: self.verifier.name.clone(),
                key_id: self.verifier.key_id,
                signature,
            }],
        })
    }
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key id.
    pub key_id: u32,
    /// The signature bytes (without the key id).
    pub signature: Vec<u8>,
}

/// A note: its text and its signatures, in the C2SP `signed-note` form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedNote {
    text: String,
    signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// Parses a note without checking any signature.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let malformed = |why: &str| Error::invalid_argument(format!("malformed note: {why}"));
        if bytes.len() > MAX_NOTE_LEN {
            return Err(malformed("too long"));
        }
        let all = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))?;
        let split = all.rfind("\n\n").ok_or_else(|| malformed("no signature block"))?;
        let (text, rest) = all.split_at(split.saturating_add(1));
        check_text(text).map_err(|e| malformed(e.message()))?;
        let block = rest.strip_prefix('\n').ok_or_else(|| malformed("no blank line"))?;
        if block.is_empty() || !block.ends_with('\n') {
            return Err(malformed("the signature block must end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in block.split_terminator('\n') {
            if signatures.len() >= MAX_SIGNATURES {
                return Err(malformed("too many signatures"));
            }
            let line = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| malformed("a signature line must start with `— `"))?;
            let (name, encoded) = line
                .split_once(' ')
                .ok_or_else(|| malformed("a signature line needs a name and a signature"))?;
            check_name(name).map_err(|e| malformed(e.message()))?;
            let raw = STANDARD.decode(encoded).map_err(|_| malformed("a signature is not base64"))?;
            let (id, signature) =
                raw.split_at_checked(4).ok_or_else(|| malformed("a signature is too short"))?;
            let key_id =
                u32::from_be_bytes(id.try_into().map_err(|_| malformed("a signature is too short"))?);
            signatures.push(NoteSignature { name: name.to_owned(), key_id, signature: signature.to_vec() });
        }
        Ok(Self { text: text.to_owned(), signatures })
    }

    /// The text that was signed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signatures, as they appear.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds the signatures of `other`, a note over the same text (a cosignature).
    pub fn merge(&mut self, other: &SignedNote) -> Result<()> {
        if other.text != self.text {
            return Err(Error::invalid_argument("cannot merge signatures of different notes"));
        }
        for signature in &other.signatures {
            if !self.signatures.contains(signature) {
                self.signatures.push(signature.clone());
            }
        }
        Ok(())
    }

    /// Checks the signatures against `verifiers`: signatures of unknown keys are ignored, a
    /// signature of a known key that does not verify is an error, and at least one known key
    /// must have signed. Returns the verifiers whose signatures verified.
    pub fn verify<'v>(&self, verifiers: &'v [NoteVerifier]) -> Result<Vec<&'v NoteVerifier>> {
        let mut verified = Vec::new();
        for signature in &self.signatures {
            let Some(verifier) =
                verifiers.iter().find(|v| v.name == signature.name && v.key_id == signature.key_id)
            else {
                continue;
            };
            verifier.verify(self.text.as_bytes(), &signature.signature).map_err(|_| {
                Error::new(
                    ErrorCode::AuthenticationFailed,
                    format!("the signature of key `{}` does not verify", signature.name),
                )
            })?;
            if !verified.contains(&verifier) {
                verified.push(verifier);
            }
        }
        if verified.is_empty() {
            return Err(Error::new(
                ErrorCode::AuthenticationFailed,
                "the note has no signature of a known key",
            ));
        }
        Ok(verified)
    }

    /// The note in its text form.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 120 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for signature in &self.signatures {
            let mut raw = signature.key_id.to_be_bytes().to_vec();
            raw.extend_from_slice(&signature.signature);
            out.push_str(SIG_PREFIX);
            out.push_str(&signature.name);
            out.push(' ');
            out.push_str(&STANDARD.encode(raw));
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for SignedNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

#[cfg(test)]
mod tests {
    use aesp_core::Ed25519Signer;

    use super::*;

    /// The example key of Go's `golang.org/x/mod/sumdb/note` documentation: the verifier
    /// text it prints and a note it signed, checked byte for byte.
    #[test]
    fn go_note_package_vectors() {
        let text = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let verifier = NoteVerifier::parse(text).unwrap();
        assert_eq!(verifier.name(), "PeterNeumann");
        assert_eq!(verifier.key_id(), 0xc74f20a3);
        assert_eq!(verifier.to_text(), text);
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let parsed = SignedNote::parse(note.as_bytes()).unwrap();
        assert_eq!(parsed.verify(std::slice::from_ref(&verifier)).unwrap().len(), 1);
        assert_eq!(parsed.to_text(), note);
        let tampered = note.replace("cryptography", "cryptoqraphy");
        assert!(SignedNote::parse(tampered.as_bytes()).unwrap().verify(&[verifier]).is_err());
    }

    #[tokio::test]
    async fn sign_verify_and_rotate() {
        let old =
            NoteSigner::new("audit.example/log-1", Arc::new(Ed25519Signer::from_seed(&[1; 32]))).unwrap();
        let new =
            NoteSigner::new("audit.example/log-2", Arc::new(Ed25519Signer::from_seed(&[2; 32]))).unwrap();
        let note = old.sign("hello\n").await.unwrap();
        let reparsed = SignedNote::parse(note.to_text().as_bytes()).unwrap();
        assert_eq!(reparsed, note);
        let keys = [new.verifier().clone(), old.verifier().clone()];
        assert_eq!(reparsed.verify(&keys).unwrap(), [old.verifier()]);
        assert!(reparsed.verify(std::slice::from_ref(new.verifier())).is_err());
        // A verifier with the same name but another key has another id: ignored, so unknown.
        let impostor =
            NoteSigner::new("audit.example/log-1", Arc::new(Ed25519Signer::from_seed(&[3; 32]))).unwrap();
        assert!(reparsed.verify(std::slice::from_ref(impostor.verifier())).is_err());
        assert!(old.sign("no newline").await.is_err());
        assert!(old.sign("bell\x07\n").await.is_err());
    }

    #[test]
    fn malformed_notes_and_keys_are_errors() {
        for bad in [
            "",
            "text\n",
            "text\n\n",
            "text\n\nno dash\n",
            "text\n\n\u{2014} name\n",
            "text\n\n\u{2014} name AAA=\n",
            "text\n\n\u{2014} na+me AAAAAAAA\n",
            "text\n\n\u{2014} n AAAAAA==",
        ] {
            assert!(SignedNote::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(SignedNote::parse(&[0xff, b'\n', b'\n']).is_err());
        for bad in ["", "a+b", "a+zzzzzzzz+AAAA", "a+00000000+AAAA", "a b+00000000+ARpc", "+00000000+AA=="] {
            assert!(NoteVerifier::parse(bad).is_err(), "{bad:?}");
        }
    }
}
