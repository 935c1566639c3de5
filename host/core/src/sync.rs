//! The one way runbox takes a std mutex. A panic elsewhere while a mutex
//! was held (poison) is no reason to stop serving: every value runbox
//! guards with one is replaced or updated in one step, never left half-made
//! across a statement that could panic, so the guard is taken as it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `m`'s guard, poisoned or not.
///
/// ```
/// use std::sync::Mutex;
///
/// let m = Mutex::new(1);
/// let _ = std::panic::catch_unwind(|| {
///     let _held = m.lock().unwrap();
///     panic!("a panic while held poisons the mutex");
/// });
/// assert_eq!(*runbox_core::sync::lock(&m), 1);
/// ```
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
