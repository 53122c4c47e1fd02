//! An in-memory queue for unit tests of code that uses the producer. The integration tests use
//! the real SQS path ([`crate::sqs::SqsTransport`]) against MiniStack and sluice-sim.

use sluice_common::sync::Recover;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::{EntryOutcome, OutMessage, SendFuture, Transport, TransportError, TransportErrorKind};

/// An in-memory [`Transport`] that takes every message unless told to fail, and records what it
/// took. Clones share one queue.
#[derive(Clone, Default)]
pub struct FakeQueue {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    messages: Mutex<Vec<OutMessage>>,
    down: AtomicBool,
    fail_every: AtomicUsize,
    calls: AtomicUsize,
    entries_seen: AtomicU64,
    entry_failures: AtomicU64,
    /// Entries whose body contains this are refused (a sender fault), as SQS refuses characters.
    refuse: Mutex<Option<String>>,
    /// Whole calls carrying such an entry are refused, as SQS refuses a batch too long.
    refuse_whole_call: AtomicBool,
}

impl FakeQueue {
    /// An empty queue that takes everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call fails as if the queue were unreachable.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// Every n-th entry seen fails transiently (0: none).
    pub fn fail_entries_every(&self, n: usize) {
        self.inner.fail_every.store(n, Ordering::SeqCst);
    }

    /// Refuse every entry whose body contains `needle` (None: refuse nothing); with `whole_call`
    /// the whole SendMessageBatch carrying one is refused instead.
    pub fn refuse_containing(&self, needle: Option<&str>, whole_call: bool) {
        *self.inner.refuse.locked() = needle.map(String::from);
        self.inner
            .refuse_whole_call
            .store(whole_call, Ordering::SeqCst);
    }

    /// Messages taken, in the order taken.
    pub fn messages(&self) -> Vec<OutMessage> {
        self.inner.messages.locked().clone()
    }

    /// Send calls made so far, failed ones included.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Entries failed transiently so far (by [`FakeQueue::fail_entries_every`]); refused ones are
    /// not counted.
    pub fn entry_failures(&self) -> u64 {
        self.inner.entry_failures.load(Ordering::SeqCst)
    }
}

impl Transport for FakeQueue {
    fn send<'a>(&'a self, batch: &'a [OutMessage]) -> SendFuture<'a> {
        Box::pin(async move {
            self.inner.calls.fetch_add(1, Ordering::SeqCst);
            if self.inner.down.load(Ordering::SeqCst) {
                return Err(TransportError {
                    kind: TransportErrorKind::Unavailable,
                    message: "fake queue is down".into(),
                });
            }
            let refuse = self.inner.refuse.locked().clone();
            let refused = |m: &OutMessage| refuse.as_deref().is_some_and(|n| m.body.contains(n));
            if self.inner.refuse_whole_call.load(Ordering::SeqCst) && batch.iter().any(refused) {
                return Err(TransportError {
                    kind: TransportErrorKind::Refused,
                    message: "InvalidMessageContents: the call carries a body the fake refuses"
                        .into(),
                });
            }
            let every = self.inner.fail_every.load(Ordering::SeqCst) as u64;
            let mut out = Vec::with_capacity(batch.len());
            let mut taken = self.inner.messages.locked();
            for m in batch {
                let n = self.inner.entries_seen.fetch_add(1, Ordering::SeqCst) + 1;
                if refused(m) {
                    out.push(EntryOutcome::Rejected(
                        "InvalidMessageContents: the fake refuses this body".into(),
                    ));
                } else if every > 0 && n.is_multiple_of(every) {
                    self.inner.entry_failures.fetch_add(1, Ordering::SeqCst);
                    out.push(EntryOutcome::Retry("InternalError".into()));
                } else {
                    taken.push(m.clone());
                    out.push(EntryOutcome::Sent);
                }
            }
            Ok(out)
        })
    }
}
