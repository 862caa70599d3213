//! The parsers of checkpoints, signed notes, verifier keys and proofs never panic on arbitrary
//! input, and whatever they accept round-trips through its text form (the fuzz target
//! `audit_parsing` checks the same with libFuzzer).

use aesp_audit::{Checkpoint, ConsistencyProof, NoteVerifier, SignedCheckpoint, SignedNote, TlogProof};
use proptest::prelude::*;

const VALID: &str = "c2sp.org/tlog-proof@v1\nextra aGk=\nindex 3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\
example.com/log\n10\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\next\n\n\u{2014} k AAAAAAAA\n";

fn check(data: &[u8]) {
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
    if let Ok(checkpoint) = SignedCheckpoint::parse(data) {
        assert_eq!(SignedCheckpoint::parse(checkpoint.to_text().as_bytes()).ok(), Some(checkpoint));
    }
    if let Ok(proof) = TlogProof::parse(data) {
        assert_eq!(TlogProof::parse(proof.to_text().as_bytes()).ok(), Some(proof));
    }
    if let Ok(proof) = ConsistencyProof::parse(data) {
        assert_eq!(ConsistencyProof::parse(proof.to_text().as_bytes()).ok(), Some(proof));
    }
}

#[test]
fn the_seed_parses() {
    let proof = TlogProof::parse(VALID.as_bytes()).expect("a valid proof");
    assert_eq!(proof.index, 3);
    assert_eq!(proof.to_text(), VALID);
}

proptest! {
    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        check(&data);
    }

    /// Mutations of a valid proof: replaced, inserted and deleted bytes.
    #[test]
    fn mutated_valid_input(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6)) {
        let mut data = VALID.as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let at = at % (data.len() + 1);
            match kind {
                0 if at < data.len() => { if let Some(b) = data.get_mut(at) { *b = byte } }
                1 => data.insert(at, byte),
                _ if at < data.len() => { data.remove(at); }
                _ => {}
            }
        }
        check(&data);
        if let Some(split) = VALID.find("\n\n") {
            check(data.get(split + 2..).unwrap_or_default());
        }
    }
}
