//! An in-memory queue for unit tests of code that uses the producer. The integration tests use
//! the real SQS path ([`crate::sqs::SqsTransport`]) against MiniStack and sluice-sim.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::{EntryOutcome, OutMessage, SendFuture, Transport, TransportError, TransportErrorKind};

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
}

impl FakeQueue {
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

    /// Messages taken, in the order taken.
    pub fn messages(&self) -> Vec<OutMessage> {
        self.inner
            .messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

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
            let every = self.inner.fail_every.load(Ordering::SeqCst) as u64;
            let mut out = Vec::with_capacity(batch.len());
            let mut taken = self
                .inner
                .messages
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for m in batch {
                let n = self.inner.entries_seen.fetch_add(1, Ordering::SeqCst) + 1;
                if every > 0 && n.is_multiple_of(every) {
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
