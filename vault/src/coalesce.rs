//! One read for every caller waiting on it.
//!
//! Some reads must be fresh for each call: a call on one node has to see
//! a revocation committed on another before it arrived (DESIGN.md §9). Fresh
//! does not mean one read per call. A read that *began after* a caller
//! arrived is as good for that caller as its own, so callers that arrive
//! while a read is in flight wait for the next one and share it, as group
//! commit shares one sync between writers. The store sees about one read per
//! round trip however many callers there are, and no caller waits more than
//! two round trips.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;
use crate::store::StoreError;

/// A read shared by the callers that arrived before it began.
pub(crate) struct Coalesced<T> {
    /// How many reads have begun; a read's number is its place in that count.
    begun: AtomicU64,
    /// The newest finished read: its number and outcome. Held while a read
    /// is in flight, so the callers that queue behind it share the next one.
    last: tokio::sync::Mutex<Option<(u64, Result<T, String>)>>,
}

impl<T: Clone> Coalesced<T> {
    pub(crate) fn new() -> Self {
        Self {
            begun: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The outcome of a `read` that began after this call: the one another
    /// caller already ran, or one run now. A failed read is shared too
    /// (as [`StoreError::Unavailable`] with its message), so that an
    /// unreachable store costs the waiting callers one timeout, not one each.
    pub(crate) async fn get<F, Fut>(&self, read: F) -> Result<T, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        // Every read numbered above this began after this caller arrived. A
        // read-modify-write sees the latest count, never an older one (which
        // would let a read begun before this caller arrived answer it).
        let arrived = self.begun.fetch_add(0, Ordering::AcqRel);
        let mut last = self.last.lock().await;
        if let Some((number, outcome)) = last.as_ref()
            && *number > arrived
        {
            return outcome
                .clone()
                .map_err(|why| Error::Store(StoreError::Unavailable(why)));
        }
        let number = self.begun.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome = read().await;
        *last = Some((
            number,
            outcome.as_ref().map(T::clone).map_err(ToString::to_string),
        ));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    // One thread, so that a caller counted as queued has also run up to its
    // wait for the lock (nothing in between yields).
    #[tokio::test]
    async fn callers_waiting_on_a_read_share_the_next_and_none_sees_an_older_one() {
        let shared = Arc::new(Coalesced::<u64>::new());
        let reads = Arc::new(AtomicUsize::new(0));
        let value = Arc::new(AtomicU64::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        // A first read, held open until released.
        let first = {
            let (shared, reads, value, mut gate) = (
                Arc::clone(&shared),
                Arc::clone(&reads),
                Arc::clone(&value),
                gate.clone(),
            );
            tokio::spawn(async move {
                shared
                    .get(|| async move {
                        reads.fetch_add(1, Ordering::SeqCst);
                        let seen = value.load(Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok(seen)
                    })
                    .await
            })
        };
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Written after the first read looked: callers arriving now must not
        // be answered by it.
        value.store(7, Ordering::SeqCst);
        let queued = Arc::new(AtomicUsize::new(0));
        let waiting: Vec<_> = (0..16)
            .map(|_| {
                let (shared, reads, value, queued) = (
                    Arc::clone(&shared),
                    Arc::clone(&reads),
                    Arc::clone(&value),
                    Arc::clone(&queued),
                );
                tokio::spawn(async move {
                    queued.fetch_add(1, Ordering::SeqCst);
                    shared
                        .get(|| async move {
                            reads.fetch_add(1, Ordering::SeqCst);
                            Ok(value.load(Ordering::SeqCst))
                        })
                        .await
                })
            })
            .collect();
        while queued.load(Ordering::SeqCst) < 16 {
            tokio::task::yield_now().await;
        }
        release.send(true).expect("first read waits");
        assert_eq!(first.await.expect("task").expect("read"), 0);
        for caller in waiting {
            assert_eq!(caller.await.expect("task").expect("read"), 7);
        }
        // The first read, and one more for the sixteen that queued behind it.
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_read_is_shared_by_name_and_the_next_caller_reads_again() {
        let shared = Coalesced::<u64>::new();
        let failed = shared
            .get(|| async { Err(Error::Store(StoreError::Unavailable("gone".into()))) })
            .await;
        assert!(failed.is_err());
        assert_eq!(shared.get(|| async { Ok(3) }).await.expect("read"), 3);
    }
}
