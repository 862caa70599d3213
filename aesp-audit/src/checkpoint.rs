//! C2SP `tlog-checkpoint` (origin, tree size, root hash, extension lines), its signed form,
//! C2SP `tlog-proof` (an inclusion proof with the signed checkpoint it leads to) and
//! consistency proofs.

use std::fmt;

use aesp_core::{Error, ErrorCode, Result};
use base64::{Engine as _, engine::general_purpose::STANDARD};

use crate::{
    merkle::{Hash, MAX_TREE_SIZE, leaf_hash, verify_consistency, verify_inclusion},
    note::{NoteSigner, NoteVerifier, SignedNote, check_text},
};

/// The most hashes a proof may hold (a tree of 2^62 leaves needs 62; consistency up to 2x).
const MAX_PROOF_HASHES: usize = 130;
const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";
const CONSISTENCY_HEADER: &str = "aesp.dev/consistency-proof@v1";

fn malformed(what: &str, why: &str) -> Error {
    Error::invalid_argument(format!("malformed {what}: {why}"))
}

fn parse_decimal(text: &str, what: &str) -> Result<u64> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(malformed(what, "a number must be decimal without leading zeros"));
    }
    text.parse().map_err(|_| malformed(what, "a number is too large"))
}

fn parse_hash(text: &str, what: &str) -> Result<Hash> {
    let raw = STANDARD.decode(text).map_err(|_| malformed(what, "a hash is not base64"))?;
    raw.try_into().map_err(|_| malformed(what, "a hash is not 32 bytes"))
}

/// A checkpoint: the state of a log (its origin, size and root hash) in the C2SP
/// `tlog-checkpoint` form.
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique name, such as `audit.example.com/acme`.
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The RFC 6962 root hash of those leaves.
    pub root_hash: Hash,
    /// Extension lines, kept as they are (without their newline).
    pub extensions: Vec<String>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("origin", &self.origin)
            .field("size", &self.size)
            .field("root_hash", &STANDARD.encode(self.root_hash))
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// The checkpoint text: origin, size and base64 root hash, one per line, then extensions.
    pub fn to_text(&self) -> String {
        let mut out = format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root_hash));
        for line in &self.extensions {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Parses checkpoint text.
    pub fn parse(text: &str) -> Result<Self> {
        const WHAT: &str = "checkpoint";
        check_text(text).map_err(|e| malformed(WHAT, e.message()))?;
        let mut lines = text.split_terminator('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or_else(|| malformed(WHAT, "no origin"))?;
        let size = parse_decimal(lines.next().ok_or_else(|| malformed(WHAT, "no tree size"))?, WHAT)?;
        if size > MAX_TREE_SIZE {
            return Err(malformed(WHAT, "the tree size is too large"));
        }
        let root_hash = parse_hash(lines.next().ok_or_else(|| malformed(WHAT, "no root hash"))?, WHAT)?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(malformed(WHAT, "empty extension line"));
        }
        Ok(Self { origin: origin.to_owned(), size, root_hash, extensions })
    }
}

/// A checkpoint and the note that signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    note: SignedNote,
}

impl SignedCheckpoint {
    /// Signs `checkpoint` with `signer`.
    pub async fn sign(checkpoint: Checkpoint, signer: &NoteSigner) -> Result<Self> {
        let note = signer.sign(&checkpoint.to_text()).await?;
        Ok(Self { checkpoint, note })
    }

    /// Parses a signed checkpoint without checking its signatures (see [`Self::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let note = SignedNote::parse(bytes)?;
        let checkpoint = Checkpoint::parse(note.text())?;
        Ok(Self { checkpoint, note })
    }

    /// Parses a signed checkpoint and checks it against `verifiers` (see [`SignedNote::verify`]).
    pub fn parse_verified(bytes: &[u8], verifiers: &[NoteVerifier]) -> Result<Self> {
        let signed = Self::parse(bytes)?;
        signed.verify(verifiers)?;
        Ok(signed)
    }

    /// Checks the signatures against `verifiers`.
    pub fn verify(&self, verifiers: &[NoteVerifier]) -> Result<()> {
        self.note.verify(verifiers).map(|_| ())
    }

    /// The checkpoint (trust it only after [`Self::verify`]).
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The signed note.
    pub fn note(&self) -> &SignedNote {
        &self.note
    }

    /// The signed-note text.
    pub fn to_text(&self) -> String {
        self.note.to_text()
    }
}

/// A C2SP `tlog-proof`: that the entry at `index` is in the tree of a signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    /// Application data, not authenticated by anything.
    pub extra: Option<Vec<u8>>,
    /// The leaf index.
    pub index: u64,
    /// The inclusion proof (RFC 9162 2.1.3).
    pub hashes: Vec<Hash>,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: SignedCheckpoint,
}

impl TlogProof {
    /// The proof's text form.
    pub fn to_text(&self) -> String {
        let mut out = format!("{TLOG_PROOF_HEADER}\n");
        if let Some(extra) = &self.extra {
            out.push_str(&format!("extra {}\n", STANDARD.encode(extra)));
        }
        out.push_str(&format!("index {}\n", self.index));
        for hash in &self.hashes {
            out.push_str(&STANDARD.encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint.to_text());
        out
    }

    /// Parses the text form (the checkpoint's signatures are not checked here).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "tlog proof";
        let text = std::str::from_utf8(bytes).map_err(|_| malformed(WHAT, "not UTF-8"))?;
        let rest = text
            .strip_prefix(TLOG_PROOF_HEADER)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or_else(|| malformed(WHAT, "wrong header"))?;
        let (head, checkpoint) = rest.split_once("\n\n").ok_or_else(|| malformed(WHAT, "no checkpoint"))?;
        let mut lines = head.split('\n');
        let mut line = lines.next().ok_or_else(|| malformed(WHAT, "no index"))?;
        let mut extra = None;
        if let Some(encoded) = line.strip_prefix("extra ") {
            extra = Some(STANDARD.decode(encoded).map_err(|_| malformed(WHAT, "extra is not base64"))?);
            line = lines.next().ok_or_else(|| malformed(WHAT, "no index"))?;
        }
        let index =
            parse_decimal(line.strip_prefix("index ").ok_or_else(|| malformed(WHAT, "no index"))?, WHAT)?;
        let hashes = parse_hashes(lines, WHAT)?;
        let checkpoint = SignedCheckpoint::parse(checkpoint.as_bytes())?;
        Ok(Self { extra, index, hashes, checkpoint })
    }

    /// Verifies that `entry` (the exact bytes of the leaf) is at `index` in the checkpoint's
    /// tree and that the checkpoint is signed by one of `verifiers`; returns the checkpoint.
    pub fn verify(&self, entry: &[u8], verifiers: &[NoteVerifier]) -> Result<&Checkpoint> {
        self.checkpoint.verify(verifiers)?;
        let checkpoint = self.checkpoint.checkpoint();
        verify_inclusion(
            self.index,
            checkpoint.size,
            &leaf_hash(entry),
            &self.hashes,
            &checkpoint.root_hash,
        )?;
        Ok(checkpoint)
    }
}

fn parse_hashes<'a>(lines: impl Iterator<Item = &'a str>, what: &str) -> Result<Vec<Hash>> {
    let mut hashes = Vec::new();
    for line in lines {
        if hashes.len() >= MAX_PROOF_HASHES {
            return Err(malformed(what, "too many hashes"));
        }
        hashes.push(parse_hash(line, what)?);
    }
    Ok(hashes)
}

/// A consistency proof: that the tree of `old_size` leaves is a prefix of the tree of
/// `new_size` leaves (RFC 9162 2.1.4). Its text form is AESP's own:
/// `aesp.dev/consistency-proof@v1`, `old <m>`, `new <n>`, then one base64 hash per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older tree size.
    pub old_size: u64,
    /// The newer tree size.
    pub new_size: u64,
    /// The proof hashes.
    pub hashes: Vec<Hash>,
}

impl ConsistencyProof {
    /// The text form.
    pub fn to_text(&self) -> String {
        let mut out = format!("{CONSISTENCY_HEADER}\nold {}\nnew {}\n", self.old_size, self.new_size);
        for hash in &self.hashes {
            out.push_str(&STANDARD.encode(hash));
            out.push('\n');
        }
        out
    }

    /// Parses the text form.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "consistency proof";
        let text = std::str::from_utf8(bytes).map_err(|_| malformed(WHAT, "not UTF-8"))?;
        let body = text.strip_suffix('\n').ok_or_else(|| malformed(WHAT, "no final newline"))?;
        let mut lines = body.split('\n');
        if lines.next() != Some(CONSISTENCY_HEADER) {
            return Err(malformed(WHAT, "wrong header"));
        }
        let mut number = |prefix: &str| -> Result<u64> {
            let line = lines
                .next()
                .and_then(|l| l.strip_prefix(prefix))
                .ok_or_else(|| malformed(WHAT, "missing size"))?;
            parse_decimal(line, WHAT)
        };
        let old_size = number("old ")?;
        let new_size = number("new ")?;
        let hashes = parse_hashes(lines, WHAT)?;
        Ok(Self { old_size, new_size, hashes })
    }

    /// Verifies the proof between two signed checkpoints of the same origin, each signed by
    /// one of `verifiers`.
    pub fn verify(
        &self,
        old: &SignedCheckpoint,
        new: &SignedCheckpoint,
        verifiers: &[NoteVerifier],
    ) -> Result<()> {
        old.verify(verifiers)?;
        new.verify(verifiers)?;
        let (o, n) = (old.checkpoint(), new.checkpoint());
        if o.origin != n.origin {
            return Err(Error::new(ErrorCode::ValidationFailed, "the checkpoints are of different logs"));
        }
        if o.size != self.old_size || n.size != self.new_size {
            return Err(Error::new(ErrorCode::ValidationFailed, "the proof is for other tree sizes"));
        }
        verify_consistency(o.size, n.size, &o.root_hash, &n.root_hash, &self.hashes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aesp_core::Ed25519Signer;

    use super::*;
    use crate::merkle::{consistency_proof_of, inclusion_proof_of, root_of};

    fn signer(seed: u8, name: &str) -> NoteSigner {
        NoteSigner::new(name, Arc::new(Ed25519Signer::from_seed(&[seed; 32]))).unwrap()
    }

    #[tokio::test]
    async fn checkpoint_text_round_trip_and_proofs() {
        let entries: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 5]).collect();
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let key = signer(1, "example.com/log");
        let cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 10,
            root_hash: root_of(&leaves),
            extensions: vec!["x y".into()],
        };
        assert_eq!(Checkpoint::parse(&cp.to_text()).unwrap(), cp);
        let signed = SignedCheckpoint::sign(cp.clone(), &key).await.unwrap();
        let text = signed.to_text();
        assert!(text.starts_with("example.com/log\n10\n"));
        let back = SignedCheckpoint::parse_verified(text.as_bytes(), &[key.verifier().clone()]).unwrap();
        assert_eq!(back, signed);

        let proof = TlogProof {
            extra: Some(b"hi".to_vec()),
            index: 3,
            hashes: inclusion_proof_of(&leaves, 3).unwrap(),
            checkpoint: signed.clone(),
        };
        let parsed = TlogProof::parse(proof.to_text().as_bytes()).unwrap();
        assert_eq!(parsed, proof);
        parsed.verify(&entries[3], &[key.verifier().clone()]).unwrap();
        assert!(parsed.verify(&entries[4], &[key.verifier().clone()]).is_err());
        assert!(parsed.verify(&entries[3], &[signer(2, "example.com/log").verifier().clone()]).is_err());

        let old_cp = Checkpoint { size: 4, root_hash: root_of(&leaves[..4]), extensions: vec![], ..cp };
        let old = SignedCheckpoint::sign(old_cp, &key).await.unwrap();
        let consistency =
            ConsistencyProof { old_size: 4, new_size: 10, hashes: consistency_proof_of(&leaves, 4).unwrap() };
        let parsed = ConsistencyProof::parse(consistency.to_text().as_bytes()).unwrap();
        assert_eq!(parsed, consistency);
        parsed.verify(&old, &signed, &[key.verifier().clone()]).unwrap();
        assert!(parsed.verify(&signed, &old, &[key.verifier().clone()]).is_err());
    }

    #[test]
    fn malformed_checkpoints_are_errors() {
        let hash = STANDARD.encode([0u8; 32]);
        for bad in [
            String::new(),
            "o\n".into(),
            "o\n01\nAAAA\n".into(),
            format!("o\n-1\n{hash}\n"),
            format!("\n1\n{hash}\n"),
            format!("o\n1\n{hash}"),
            format!("o\n1\n{hash}\n\n"),
            format!("o\n99999999999999999999\n{hash}\n"),
            format!("o\n{}\n{hash}\n", u64::MAX),
            "o\n1\nAAAA\n".into(),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "c2sp.org/tlog-proof@v1\n",
            "c2sp.org/tlog-proof@v1\nindex x\n\nc\n",
            "c2sp.org/tlog-proof@v1\nextra !\nindex 0\n\nc\n",
        ] {
            assert!(TlogProof::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        for bad in
            ["", "aesp.dev/consistency-proof@v1\n", "aesp.dev/consistency-proof@v1\nold 1\nnew 2\nAA\n"]
        {
            assert!(ConsistencyProof::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
