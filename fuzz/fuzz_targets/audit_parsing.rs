//! Parsing of audit checkpoints, signed notes, verifier keys and proofs never panics, and
//! whatever parses round-trips through its text form.
#![no_main]

use aesp_audit::{Checkpoint, ConsistencyProof, NoteVerifier, SignedCheckpoint, SignedNote, TlogProof};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(note) = SignedNote::parse(data) {
        assert_eq!(SignedNote::parse(note.to_text().as_bytes()).ok(), Some(note));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(checkpoint) = Checkpoint::parse(text) {
            assert_eq!(Checkpoint::parse(&checkpoint.to_text()).ok(), Some(checkpoint));
        }
        if let Ok(key) = NoteVerifier::parse(text) {
            assert_eq!(NoteVerifier::parse(&key.to_text()).ok(), Some(key));
        }
    }
    let _ = SignedCheckpoint::parse(data);
    if let Ok(proof) = TlogProof::parse(data) {
        assert_eq!(TlogProof::parse(proof.to_text().as_bytes()).ok(), Some(proof));
    }
    if let Ok(proof) = ConsistencyProof::parse(data) {
        assert_eq!(ConsistencyProof::parse(proof.to_text().as_bytes()).ok(), Some(proof));
    }
});
