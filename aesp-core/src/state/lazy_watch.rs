//! The watch loop shared by backends that read committed history lazily.

use std::collections::VecDeque;

use tokio::sync::watch;

use super::{Revision, WatchEvent, WatchStream};
use crate::error::Result;

/// What one read of history found.
#[derive(Debug)]
pub struct Progress {
    /// The next revision to read.
    pub next: Revision,
}

/// A [`WatchStream`] for a backend that keeps committed history readable and publishes its
/// current revision on a [`watch`] channel after every commit.
///
/// `read(from, buffer)` appends to `buffer` the events (of the watched prefix) of a bounded
/// number of commits from revision `from` on, and returns the revision to read next; it fails
/// with `REVISION_COMPACTED` if `from` is no longer kept. The stream yields the buffered
/// events, reads again when they are used up, and waits for a commit only when a read made no
/// progress. After an error it yields the error and ends. A slow consumer costs nothing but
/// its position: nothing is buffered for it ahead of time.
pub fn lazy_watch<R>(from: Revision, changed: watch::Receiver<Revision>, read: R) -> WatchStream
where
    R: FnMut(Revision, &mut VecDeque<WatchEvent>) -> Result<Progress> + Send + 'static,
{
    struct State<R> {
        next: Revision,
        changed: watch::Receiver<Revision>,
        read: R,
        buffer: VecDeque<WatchEvent>,
        done: bool,
    }
    let state = State { next: from, changed, read, buffer: VecDeque::new(), done: false };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.buffer.pop_front() {
                return Some((Ok(event), s));
            }
            if s.done {
                return None;
            }
            // Mark the current notification as seen before reading, so that a commit after
            // the read wakes the wait below.
            s.changed.borrow_and_update();
            match (s.read)(s.next, &mut s.buffer) {
                Err(error) => {
                    s.done = true;
                    return Some((Err(error), s));
                }
                Ok(progress) => {
                    let progressed = progress.next > s.next;
                    s.next = progress.next;
                    if !progressed && s.buffer.is_empty() && s.changed.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    }))
}
