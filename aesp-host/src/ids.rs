//! Ids for the call path: UUID v7 (the clock's millisecond time, then 74 bits that never
//! repeat within a thread and are unpredictable across threads), formatted without a heap
//! allocation and without asking the operating system for randomness on every call.
//!
//! Each thread seeds a small generator once from the system's random source; every id then
//! takes the next value of a 64-bit counter through a bijective mixer keyed by the seed, so
//! two ids of one thread never share their random bits, and ids of different threads (or
//! processes) collide only by chance among 2^74 values within the same millisecond. Ids that
//! act as secrets (session ids) still come from [`aesp_core::new_id`].

use std::cell::Cell;

use aesp_core::Clock;

/// The text of a UUID (36 ASCII characters, hyphenated, lowercase), on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdText([u8; 36]);

impl IdText {
    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for IdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-thread state: the mixer's key, a counter, and random bits that tell threads apart.
#[derive(Clone, Copy)]
struct State {
    key: u64,
    counter: u64,
    tag: u16,
}

thread_local! {
    static STATE: Cell<Option<State>> = const { Cell::new(None) };
}

fn seed() -> State {
    let mut bytes = [0u8; 18];
    if getrandom::fill(&mut bytes).is_err() {
        // The standard library's hash keys are seeded from the system's random source too.
        use std::hash::{BuildHasher as _, Hasher as _};
        for chunk in bytes.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_usize(chunk.as_ptr() as usize);
            let word = hasher.finish().to_le_bytes();
            for (b, w) in chunk.iter_mut().zip(word) {
                *b = w;
            }
        }
    }
    let [k0, k1, k2, k3, k4, k5, k6, k7, c0, c1, c2, c3, c4, c5, c6, c7, t0, t1] = bytes;
    State {
        key: u64::from_le_bytes([k0, k1, k2, k3, k4, k5, k6, k7]),
        counter: u64::from_le_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
        tag: u16::from_le_bytes([t0, t1]),
    }
}

/// The 64-bit finaliser of SplitMix64: a bijection of `u64`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// 64 bits no earlier call of this thread returned, and 10 bits of this thread.
fn next_bits() -> (u64, u16) {
    STATE.with(|cell| {
        let mut state = cell.get().unwrap_or_else(seed);
        state.counter = state.counter.wrapping_add(1);
        cell.set(Some(state));
        // Distinct counters give distinct values: xor with a constant and `mix` are bijections.
        (mix(state.counter ^ state.key), state.tag & 0x3ff)
    })
}

/// A new UUID v7 at `clock`'s current time.
pub(crate) fn fast_id(clock: &dyn Clock) -> IdText {
    fast_id_at(clock.now_ms())
}

/// A new UUID v7 at `now_ms` (milliseconds since the epoch), for a caller that has read the
/// clock already.
pub(crate) fn fast_id_at(now_ms: u64) -> IdText {
    let ms = now_ms & 0xffff_ffff_ffff;
    let (bits, tag) = next_bits();
    // rand_a (12 bits): the thread's 10 bits, then the top 2 bits of `bits`; rand_b (62 bits):
    // the rest of `bits`. So `bits` is whole in every id.
    let rand_a = (u64::from(tag) << 2) | (bits >> 62);
    let high = (ms << 16) | (0x7 << 12) | rand_a;
    let low = (0b10 << 62) | (bits & 0x3fff_ffff_ffff_ffff);
    let value = (u128::from(high) << 64) | u128::from(low);
    let bytes = value.to_be_bytes();
    let mut text = [b'-'; 36];
    // Where each byte's two digits go: 4, 2, 2, 2 and 6 bytes between the hyphens.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (byte, at) in bytes.into_iter().zip(AT) {
        let pair = crate::events::HEX_PAIRS.get(usize::from(byte)).copied().unwrap_or_default();
        if let Some(slot) = text.get_mut(at..at + 2) {
            slot.copy_from_slice(&pair);
        }
    }
    IdText(text)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use aesp_core::{ManualClock, id_time_ms};

    use super::*;

    #[test]
    fn ids_are_uuid_v7_with_the_clock_time_and_unique() {
        let clock = ManualClock::new(1_700_000_000_123);
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = fast_id(&clock);
            assert!(seen.insert(id.as_str().to_owned()), "{id:?} repeated");
        }
        let id = fast_id(&clock);
        assert_eq!(id_time_ms(id.as_str()), Some(1_700_000_000_123), "{id:?}");
        let text = id.as_str();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "7", "version 7: {text}");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "RFC 9562 variant: {text}");
        assert!(text.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn threads_draw_their_own_ids() {
        let clock = ManualClock::new(5);
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| (0..10_000).map(|_| fast_id(&clock).as_str().to_owned()).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
