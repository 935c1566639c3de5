//! Group commit: the commits of many incidents written as one synced
//! batch.
//!
//! Each commit queues itself. The first to find no leader leads: it takes
//! every commit queued (up to [`MAX_GROUP`], one per incident), locks their
//! incidents' stripes in order, checks each one's expected version, writes
//! those that pass in one `WriteBatch` with one fsync, hands each its
//! result, and passes the lead to the next commit queued, if any. A commit
//! whose check fails is refused alone; the others still land.
//!
//! RocksDB groups concurrent synced writes too, but each writer still
//! joins its write group, waits (spinning first) for the group's leader and
//! inserts its own entries: on two cores that per-writer work cost more
//! than the engine's step. Here one thread enters RocksDB per group.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use rocksdb::WriteBatch;
use runbox_core::ident::IncidentId;
use runbox_core::sync::lock;
use runbox_store::{Batch, Expect, Op, StoreError, check_expected, checkpoint_entry};

use crate::{INCIDENTS, KV, RocksStore, kv_key};

/// The most commits one group writes.
pub const MAX_GROUP: usize = 256;

/// The queue of commits waiting to be written.
#[derive(Default)]
pub(crate) struct Group {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Arc<Waiter>>,
    /// A committer is writing a group (and will hand the lead on).
    leading: bool,
}

/// One queued commit.
struct Waiter {
    incident: IncidentId,
    expected: Expect,
    batch: Batch,
    turn: Mutex<Turn>,
    wake: Condvar,
}

enum Turn {
    Waiting,
    /// Lead the next group (this commit is at the queue's front).
    Lead,
    Done(Result<(), StoreError>),
}

impl Waiter {
    fn set(&self, turn: Turn) {
        *lock(&self.turn) = turn;
        self.wake.notify_one();
    }
}

impl RocksStore {
    /// Commits `batch` (with no shared-plane part) in the next group.
    pub(crate) fn commit_grouped(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: Batch,
    ) -> Result<(), StoreError> {
        let me = Arc::new(Waiter {
            incident: incident.clone(),
            expected,
            batch,
            turn: Mutex::new(Turn::Waiting),
            wake: Condvar::new(),
        });
        let lead = {
            let mut state = lock(&self.group.state);
            state.queue.push_back(me.clone());
            !std::mem::replace(&mut state.leading, true)
        };
        if !lead {
            let mut turn = lock(&me.turn);
            while matches!(*turn, Turn::Waiting) {
                turn = me.wake.wait(turn).unwrap_or_else(PoisonError::into_inner);
            }
            if let Turn::Done(_) = &*turn {
                return take_result(&mut turn);
            }
        }
        self.lead();
        take_result(&mut lock(&me.turn))
    }

    /// Writes one group (which holds the leader's own commit: it is at the
    /// queue's front), then hands the lead on.
    fn lead(&self) {
        let group = self.take_group();
        self.write_group(&group);
        let mut state = lock(&self.group.state);
        match state.queue.front() {
            Some(next) => next.set(Turn::Lead),
            None => state.leading = false,
        }
    }

    /// The queue's commits, the first of each incident, in order; the
    /// others wait for a later group so each sees the one before it.
    fn take_group(&self) -> Vec<Arc<Waiter>> {
        let mut state = lock(&self.group.state);
        let mut group: Vec<Arc<Waiter>> = Vec::new();
        let mut later = VecDeque::new();
        while let Some(w) = state.queue.pop_front() {
            if group.len() < MAX_GROUP && group.iter().all(|g| g.incident != w.incident) {
                group.push(w);
            } else {
                later.push_back(w);
            }
        }
        state.queue = later;
        group
    }

    /// Checks each commit under its incident's lock and writes those that
    /// pass in one synced batch.
    fn write_group(&self, group: &[Arc<Waiter>]) {
        let mut stripes: Vec<usize> = group.iter().map(|w| self.stripe_of(&w.incident)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // In index order, so two leaders (or a lone shared commit) never
        // wait on each other in a cycle.
        let _held: Vec<MutexGuard<'_, ()>> = stripes.iter().map(|&i| self.lock_stripe(i)).collect();
        let mut write = WriteBatch::default();
        let mut admitted = Vec::with_capacity(group.len());
        for w in group {
            match self.stage(&w.incident, w.expected, &w.batch, &mut write) {
                Ok(cp_key) => admitted.push((w, cp_key)),
                Err(refused) => w.set(Turn::Done(Err(refused))),
            }
        }
        if admitted.is_empty() {
            return;
        }
        let written = self.write_raw(write);
        for (w, cp_key) in admitted {
            let result = match &written {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::io(Op::Write, Some(&cp_key), e.clone())),
            };
            w.set(Turn::Done(result));
        }
    }

    /// Checks the incident's expected version and adds its writes to
    /// `write`; returns its checkpoint key.
    pub(crate) fn stage(
        &self,
        incident: &IncidentId,
        expected: Expect,
        batch: &Batch,
        write: &mut WriteBatch,
    ) -> Result<String, StoreError> {
        let (cp_key, cp_bytes) = checkpoint_entry(incident, batch);
        let stored = self.get_cf(INCIDENTS, &cp_key)?;
        check_expected(incident, expected, &cp_key, stored.as_deref())?;
        let records = self.cf(INCIDENTS);
        write.put_cf(records, cp_key.as_bytes(), cp_bytes);
        for (k, v) in batch.records().iter() {
            write.put_cf(records, k.as_bytes(), v);
        }
        let kv = self.cf(KV);
        for (k, v) in batch.kv_writes() {
            let key = kv_key(incident, k);
            match v {
                Some(v) => write.put_cf(kv, key.as_bytes(), v),
                None => write.delete_cf(kv, key.as_bytes()),
            }
        }
        Ok(cp_key)
    }
}

fn take_result(turn: &mut Turn) -> Result<(), StoreError> {
    match std::mem::replace(turn, Turn::Waiting) {
        Turn::Done(result) => result,
        // The leader's group always holds its own commit.
        Turn::Waiting | Turn::Lead => Err(StoreError::io(
            Op::Write,
            None,
            "group commit: a commit was left without a result",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runbox_core::records::Checkpoint;

    fn waiter(incident: &str) -> Arc<Waiter> {
        Arc::new(Waiter {
            incident: IncidentId::new(incident).unwrap(),
            expected: Expect::Absent,
            batch: Batch::new(Checkpoint::first("s")),
            turn: Mutex::new(Turn::Waiting),
            wake: Condvar::new(),
        })
    }

    /// A queue longer than [`MAX_GROUP`], with an incident queued twice:
    /// the group takes `MAX_GROUP` commits, one per incident, and the rest
    /// stay queued in order.
    #[test]
    fn a_group_takes_at_most_max_group_and_one_commit_per_incident() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        {
            let mut state = lock(&store.group.state);
            state.queue.push_back(waiter("A"));
            state.queue.push_back(waiter("A"));
            for i in 0..MAX_GROUP + 10 {
                state.queue.push_back(waiter(&format!("I-{i}")));
            }
        }
        let group = store.take_group();
        assert_eq!(group.len(), MAX_GROUP);
        assert_eq!(
            group.iter().filter(|w| w.incident.as_str() == "A").count(),
            1
        );
        let state = lock(&store.group.state);
        let left: Vec<&str> = state.queue.iter().map(|w| w.incident.as_str()).collect();
        assert_eq!(left.len(), 12, "{left:?}");
        assert_eq!(left[0], "A", "the second commit of A waits, first in line");
        assert_eq!(left[1], format!("I-{}", MAX_GROUP - 1));
    }
}
