//! Identifiers: UUID version 7 (time-ordered) for events and requests, so ids sort by
//! creation time and index well.

use uuid::Uuid;

use crate::clock::Clock;

/// A new UUID v7 whose timestamp is `clock`'s current time, as its hyphenated lowercase text.
///
/// The id carries exactly the clock's time (even a manual clock's, even one that went back),
/// so ids sort by time to the millisecond; the remaining 74 bits are random, so ids are unique
/// without coordination but not ordered within one millisecond.
pub fn new_id(clock: &dyn Clock) -> String {
    new_uuid(clock).hyphenated().to_string()
}

/// A new UUID v7 whose timestamp is `clock`'s current time.
pub fn new_uuid(clock: &dyn Clock) -> Uuid {
    let ms = clock.now_ms();
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    );
    Uuid::new_v7(ts)
}

/// The Unix-millisecond time inside a UUID v7, or `None` for another version or bad text.
pub fn id_time_ms(id: &str) -> Option<u64> {
    let uuid = Uuid::parse_str(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn ids_are_v7_carry_the_clock_time_and_sort_by_it() {
        let clock = ManualClock::new(1_764_000_000_123);
        let a = new_id(&clock);
        clock.advance(std::time::Duration::from_millis(1));
        let b = new_id(&clock);
        assert_eq!(id_time_ms(&a), Some(1_764_000_000_123));
        assert_eq!(id_time_ms(&b), Some(1_764_000_000_124));
        assert!(a < b);
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 7);
        assert_eq!(id_time_ms("not an id"), None);
    }

    #[test]
    fn ids_within_one_millisecond_are_distinct() {
        let clock = ManualClock::new(42);
        let ids: std::collections::BTreeSet<String> = (0..1000).map(|_| new_id(&clock)).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id_time_ms(id) == Some(42)));
    }
}
