//! Locks that outlive a panic: sluice's locked state is counters and tables of small records, each
//! left consistent by every write, so a thread that panicked while holding a lock (a bug, already
//! logged) must not take every later caller down with it.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `lock`, `read` and `write` that take the value even if an earlier holder panicked.
pub trait Recover<T: ?Sized> {
    /// What holding the lock gives.
    type Guard<'a>
    where
        Self: 'a;
    /// Locks, taking the value even if an earlier holder panicked.
    fn locked(&self) -> Self::Guard<'_>;
}

impl<T: ?Sized> Recover<T> for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`Recover`] for the two sides of a `RwLock`.
pub trait RecoverRw<T: ?Sized> {
    /// A read lock, even if an earlier writer panicked.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// The write lock, even if an earlier holder panicked.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RecoverRw<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}
