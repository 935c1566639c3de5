//! Group commit: the commits of different incidents that arrive while one
//! is in flight go to etcd together, as one transaction of nested
//! transactions.
//!
//! Each commit keeps its own compares (checkpoint revision, fence, shared
//! versions) in its own nested transaction, so one refused commit leaves
//! the rest of its group alone, as on RocksDB (`store-rocksdb/src/group.rs`).
//! What a group buys is fewer requests: one gRPC call, one Raft proposal
//! and one apply for many steps, where etcd and the runner share the CPU.
//! No commit waits for company: the first to arrive while none is in
//! flight goes at once; the ones that arrive meanwhile make the next group.
//!
//! etcd's rules for a transaction bound a group (`checkIntervals` and
//! `checkTxnRequest` in etcd's `v3rpc/key.go`): no key written by two of
//! its commits, and a nested transaction may hold at most
//! `--max-txn-ops` minus the group's size of compares and of operations.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use etcd_client::{Compare, TxnOp, TxnOpResponse};
use runbox_core::sync::lock;

use crate::{MAX_TXN_BYTES, MAX_TXN_OPS};

/// Commits in one group at most: a group is one etcd request, and its
/// answer carries every commit's reads.
pub(crate) const MAX_GROUP: usize = 32;

/// The cause a group's failure gives each of its commits.
pub(crate) type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// One commit's transaction, waiting to be sent.
pub(crate) struct Pending {
    pub(crate) compares: Vec<Compare>,
    pub(crate) ops: Vec<TxnOp>,
    /// The keys it puts or deletes: no other commit of its group may.
    pub(crate) writes: BTreeSet<String>,
    /// Bytes of its keys and values.
    pub(crate) bytes: usize,
    /// Its commit id and where it writes it: a lost answer is settled by
    /// reading it back.
    pub(crate) id_key: (String, String),
}

impl Pending {
    /// The most of its compares or operations: etcd's per-level limit.
    fn width(&self) -> usize {
        self.compares.len().max(self.ops.len())
    }
}

/// What one commit's transaction did.
#[derive(Debug)]
pub(crate) enum Sent {
    /// It was applied; its answer (`None`: the answer was lost and its
    /// commit id read back).
    Applied(Option<Answer>),
    /// A compare failed; nothing of it was written.
    Refused,
}

/// An applied commit's answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The revision etcd gave the transaction: every key it wrote has it
    /// as its mod revision.
    pub(crate) revision: Option<i64>,
    /// The answers to its operations, in order.
    pub(crate) ops: Vec<TxnOpResponse>,
}

/// The commits waiting for a turn, and what the sent ones did.
pub(crate) struct Groups {
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(u64, Pending)>,
    /// Whether a group is in flight.
    sending: bool,
    next_ticket: u64,
    done: HashMap<u64, Result<Sent, Cause>>,
    sent: GroupStats,
}

/// How many commits went to etcd in how many groups (requests), since the
/// store connected: [`crate::EtcdStore::group_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Commits sent.
    pub commits: u64,
    /// Groups they were sent in: one etcd request each (retries aside).
    pub groups: u64,
}

impl Groups {
    pub(crate) fn new() -> Self {
        Groups {
            state: Mutex::new(State::default()),
            turn: Condvar::new(),
        }
    }

    /// Sends `pending` in the next group and waits for what it did.
    /// `flush` sends one group and answers each of its commits in order;
    /// it runs on the thread of the group's first caller.
    pub(crate) fn send<F>(&self, pending: Pending, flush: F) -> Result<Sent, Cause>
    where
        F: Fn(Vec<Pending>) -> Result<Vec<Sent>, Cause>,
    {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back((ticket, pending));
        loop {
            if let Some(done) = state.done.remove(&ticket) {
                return done;
            }
            if state.sending {
                state = self
                    .turn
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            state.sending = true;
            let (tickets, group): (Vec<u64>, Vec<Pending>) =
                take_group(&mut state.queue).into_iter().unzip();
            state.sent.commits += group.len() as u64;
            state.sent.groups += 1;
            drop(state);
            let mut sending = Sending {
                groups: self,
                tickets,
            };
            let answers = flush(group);
            state = sending.finish(answers);
        }
    }

    pub(crate) fn stats(&self) -> GroupStats {
        self.lock().sent
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A group in flight: however its sending ends (a panic too), its commits
/// get an answer and the next group may go.
struct Sending<'a> {
    groups: &'a Groups,
    tickets: Vec<u64>,
}

impl<'a> Sending<'a> {
    fn finish(&mut self, answers: Result<Vec<Sent>, Cause>) -> MutexGuard<'a, State> {
        let tickets = std::mem::take(&mut self.tickets);
        let mut state = self.groups.lock();
        match answers {
            Ok(sent) if sent.len() == tickets.len() => {
                state
                    .done
                    .extend(tickets.into_iter().zip(sent.into_iter().map(Ok)));
            }
            Ok(sent) => {
                let cause = cause(format!(
                    "etcd answered a group of {} commits with {} answers",
                    tickets.len(),
                    sent.len()
                ));
                answer_all(&mut state, tickets, &cause);
            }
            Err(cause) => answer_all(&mut state, tickets, &cause),
        }
        state.sending = false;
        self.groups.turn.notify_all();
        state
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if self.tickets.is_empty() {
            return;
        }
        // Only a panic in `flush` ends here: the waiting commits hear it.
        let cause = cause("the thread sending this commit's group panicked");
        let tickets = std::mem::take(&mut self.tickets);
        let mut state = self.groups.lock();
        answer_all(&mut state, tickets, &cause);
        state.sending = false;
        self.groups.turn.notify_all();
    }
}

/// A cause from a message.
pub(crate) fn cause(message: impl Into<String>) -> Cause {
    Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
        message.into(),
    ))
}

fn answer_all(state: &mut State, tickets: Vec<u64>, cause: &Cause) {
    for ticket in tickets {
        state.done.insert(ticket, Err(cause.clone()));
    }
}

/// The next group from the front of `queue`: in order, while the group
/// stays within etcd's limits and no two of its commits write one key.
/// The first commit always goes (alone, it was checked against the
/// limits of a plain transaction).
fn take_group(queue: &mut VecDeque<(u64, Pending)>) -> Vec<(u64, Pending)> {
    let mut group: Vec<(u64, Pending)> = Vec::new();
    let mut written: BTreeSet<String> = BTreeSet::new();
    let (mut bytes, mut width) = (0, 0);
    while let Some((_, next)) = queue.front() {
        let size = group.len() + 1;
        let fits = group.is_empty()
            || (size <= MAX_GROUP
                && width.max(next.width()) + size <= MAX_TXN_OPS
                && bytes + next.bytes <= MAX_TXN_BYTES
                && next.writes.is_disjoint(&written));
        if !fits {
            break;
        }
        let Some(entry) = queue.pop_front() else {
            break;
        };
        bytes += entry.1.bytes;
        width = width.max(entry.1.width());
        written.extend(entry.1.writes.iter().cloned());
        group.push(entry);
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(keys: &[&str], ops: usize, bytes: usize) -> Pending {
        Pending {
            compares: Vec::new(),
            ops: (0..ops)
                .map(|i| TxnOp::get(format!("k{i}"), None))
                .collect(),
            writes: keys.iter().map(ToString::to_string).collect(),
            bytes,
            id_key: ("c".into(), "id".into()),
        }
    }

    fn queue(items: Vec<Pending>) -> VecDeque<(u64, Pending)> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p))
            .collect()
    }

    #[test]
    fn a_group_stops_before_a_commit_that_writes_a_key_of_it() {
        let mut q = queue(vec![
            pending(&["a", "shared"], 3, 10),
            pending(&["b"], 3, 10),
            pending(&["c", "shared"], 3, 10),
            pending(&["d"], 3, 10),
        ]);
        let first: Vec<u64> = take_group(&mut q).iter().map(|(t, _)| *t).collect();
        assert_eq!(first, [0, 1], "in order, up to the overlapping commit");
        let second: Vec<u64> = take_group(&mut q).iter().map(|(t, _)| *t).collect();
        assert_eq!(second, [2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_group_keeps_each_nested_transaction_within_the_op_limit() {
        // A commit of 120 operations leaves room for 8 in its group.
        let mut q = queue(
            (0..20)
                .map(|i| pending(&[format!("k{i}").as_str()], 120, 1))
                .collect(),
        );
        assert_eq!(take_group(&mut q).len(), 8);
        assert_eq!(MAX_TXN_OPS, 128);
        // Small commits stop at MAX_GROUP.
        let mut q = queue(
            (0..100)
                .map(|i| pending(&[format!("k{i}").as_str()], 4, 1))
                .collect(),
        );
        assert_eq!(take_group(&mut q).len(), MAX_GROUP);
    }

    #[test]
    fn a_group_keeps_within_the_request_size_and_always_sends_its_first() {
        let big = MAX_TXN_BYTES / 2 + 1;
        let mut q = queue(vec![pending(&["a"], 3, big), pending(&["b"], 3, big)]);
        assert_eq!(take_group(&mut q).len(), 1);
        assert_eq!(take_group(&mut q).len(), 1);
        // A commit wider than a nested transaction may be still goes alone.
        let mut q = queue(vec![pending(&["a"], MAX_TXN_OPS, 1), pending(&["b"], 1, 1)]);
        assert_eq!(take_group(&mut q).len(), 1);
    }

    #[test]
    fn every_commit_of_a_group_hears_its_own_answer_or_the_groups_failure() {
        let groups = Arc::new(Groups::new());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let start = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (groups, sizes, start) = (groups.clone(), sizes.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    groups.send(pending(&[format!("k{i}").as_str()], 1, i), |group| {
                        sizes.lock().unwrap().push(group.len());
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        // Odd sizes are refused: each caller gets its own.
                        Ok(group
                            .iter()
                            .map(|p| match p.bytes % 2 {
                                0 => Sent::Applied(None),
                                _ => Sent::Refused,
                            })
                            .collect())
                    })
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            let sent = t.join().unwrap().unwrap();
            assert_eq!(matches!(sent, Sent::Refused), i % 2 == 1, "commit {i}");
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 16, "each commit sent once");
        let stats = groups.stats();
        assert_eq!(stats.commits, 16);
        assert_eq!(stats.groups, sizes.len() as u64);
        assert!(stats.groups < 16, "commits that wait together go together");
        let failed = groups.send(pending(&["x"], 1, 0), |_| Err(cause("etcd is gone")));
        assert_eq!(failed.unwrap_err().to_string(), "etcd is gone");
        let short = groups.send(pending(&["x"], 1, 0), |_| Ok(Vec::new()));
        assert!(short.unwrap_err().to_string().contains("0 answers"));
    }

    #[test]
    fn a_panic_while_sending_answers_the_group_and_frees_the_next() {
        let groups = Arc::new(Groups::new());
        let g = groups.clone();
        let panicked =
            std::thread::spawn(move || g.send(pending(&["a"], 1, 0), |_| panic!("boom"))).join();
        assert!(panicked.is_err());
        let next = groups.send(pending(&["b"], 1, 0), |g| {
            Ok(g.iter().map(|_| Sent::Applied(None)).collect())
        });
        assert!(matches!(next, Ok(Sent::Applied(None))));
    }
}
