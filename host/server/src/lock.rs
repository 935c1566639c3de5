//! The one way this crate takes a std mutex. A panic elsewhere while the
//! mutex was held (poison) is no reason to stop serving: every value this
//! crate guards is replaced or updated in one step, never left half-made
//! across a statement that could panic, so the guard is taken as it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `m`'s guard, poisoned or not.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
