//! The tape an attempt runs against: off, recording every nondeterministic
//! input it consumes ([`Recording`]), or replaying a recording, where each
//! KV read, tool call, clock reading and random byte is answered from the
//! tape and anything the recording does not have, in that order, is a
//! divergence.
//!
//! The tape is shared between the host functions and the WASI clocks and
//! random source, so one ordered log covers all of them.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use runbox_core::attempt::KvWrite;
use runbox_core::recording::{Recording, Seen};
use runbox_core::sync::lock;
use runbox_core::tools::{Shortfall, ToolMode};

/// What an attempt's nondeterministic inputs come from.
#[derive(Clone, Default)]
pub struct Tape(Option<Arc<Mutex<State>>>);

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            None => "Tape::Off",
            Some(_) => "Tape::On",
        })
    }
}

struct State {
    replay: bool,
    /// Tool calls answered from a script instead of run (`runbox test`).
    script: Option<Arc<ToolScript>>,
    /// Mutating tool calls intercepted (`runbox run --dry-run`).
    dry_run: bool,
    /// Record mode: the most bytes of events kept. Replay: unused.
    limit: u64,
    recording: Recording,
    /// Replay: the next event to answer from.
    next: usize,
    /// Replay: bytes of the current `Random` event already handed out
    /// (WASI draws random bytes a few at a time; the recording keeps a run
    /// of draws as one event).
    random_used: usize,
    divergence: Option<String>,
}

/// A tool answer from the tape: the JSON the step received, or the error
/// and whether the arguments were at fault.
pub(crate) type TapedAnswer = (Option<serde_json::Value>, Option<String>, bool);

impl Tape {
    /// No recording: inputs come from the world. The default.
    pub fn off() -> Self {
        Tape(None)
    }

    /// Records every input of an attempt given `input`, keeping at most
    /// `limit_bytes` of events; past that the recording says it is not
    /// replayable.
    pub fn record(input: &serde_json::Value, limit_bytes: u64) -> Self {
        // The input and the KV writes count against the limit with the
        // events: all of it is stored with the record.
        let mut recording = Recording::new(input.clone());
        recording.bytes = serde_json::to_vec(input).map_or(0, |v| v.len() as u64);
        if recording.bytes > limit_bytes {
            recording.complete = false;
            recording.incomplete = Some(format!(
                "the input alone passed the recording limit of {limit_bytes} bytes"
            ));
            recording.input = serde_json::Value::Null;
        }
        Self::on(false, limit_bytes, recording)
    }

    /// Answers every input from `recording`.
    pub fn replay(recording: Recording) -> Self {
        Self::on(true, u64::MAX, recording)
    }

    fn on(replay: bool, limit: u64, recording: Recording) -> Self {
        Tape(Some(Arc::new(Mutex::new(State {
            replay,
            script: None,
            dry_run: false,
            limit,
            recording,
            next: 0,
            random_used: 0,
            divergence: None,
        }))))
    }

    /// The same tape with tool calls answered from `script`: nothing runs.
    /// For a tape that is off, a recording tape that keeps nothing.
    pub fn with_script(self, script: Arc<ToolScript>) -> Self {
        let tape = self.turned_on();
        tape.with(|s| s.script = Some(script));
        tape
    }

    /// This tape, or for one that is off a recording tape that keeps nothing.
    fn turned_on(self) -> Self {
        if self.is_on() {
            self
        } else {
            Self::record(&serde_json::Value::Null, 0)
        }
    }

    /// The same tape with every mutating tool call intercepted: checked,
    /// recorded as what it would have done, answered with the tool's
    /// declared dry-run reply, never run.
    pub fn with_dry_run(self) -> Self {
        let tape = self.turned_on();
        tape.with(|s| s.dry_run = true);
        tape
    }

    /// Whether mutating calls are intercepted.
    pub(crate) fn is_dry_run(&self) -> bool {
        self.with(|s| s.dry_run).unwrap_or(false)
    }

    /// Whether the tape is on.
    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        let state = self.0.as_ref()?;
        let mut s = lock(state);
        Some(f(&mut s))
    }

    /// Replay: the committed value of `key` as recorded, or the divergence.
    /// `None` when not replaying (read the store, then [`Tape::kv_seen`]).
    pub(crate) fn kv_get(&self, key: &str) -> Option<Result<Option<Vec<u8>>, String>> {
        self.with(|s| {
            if !s.replay {
                return None;
            }
            Some(s.take(&format!("KV read of `{key}`"), |e| match e {
                Seen::KvGet { key: k, value } if k == key => Some(value.clone()),
                _ => None,
            }))
        })
        .flatten()
    }

    /// Record: a committed KV read and what it returned.
    pub(crate) fn kv_seen(&self, key: &str, value: &Option<Vec<u8>>) {
        self.with(|s| {
            s.push(Seen::KvGet {
                key: key.to_string(),
                value: value.clone(),
            });
        });
    }

    /// Replay: the answer the step received for this call, or the
    /// divergence. `None` when not replaying.
    pub(crate) fn tool(
        &self,
        name: &str,
        mode: ToolMode,
        args: &serde_json::Value,
    ) -> Option<Result<TapedAnswer, String>> {
        self.with(|s| {
            if let Some(script) = &s.script {
                return Some(Ok(script.answer(name)));
            }
            if !s.replay {
                return None;
            }
            let asked = format!("call of tool `{name}` with {args}");
            Some(s.take(&asked, |e| match e {
                Seen::Tool {
                    name: n,
                    mode: m,
                    args: a,
                    answer,
                    error,
                    bad_args,
                } if n == name && *m == mode && a == args => {
                    Some((answer.clone(), error.clone(), *bad_args))
                }
                _ => None,
            }))
        })
        .flatten()
    }

    /// Record: a tool call and the answer the step received.
    pub(crate) fn tool_seen(
        &self,
        name: &str,
        mode: ToolMode,
        args: &serde_json::Value,
        answer: Option<&serde_json::Value>,
        error: Option<&str>,
        bad_args: bool,
    ) {
        self.with(|s| {
            s.push(Seen::Tool {
                name: name.to_string(),
                mode,
                args: args.clone(),
                answer: answer.cloned(),
                error: error.map(str::to_string),
                bad_args,
            });
        });
    }

    /// The wall clock: live (and recorded), or replayed.
    fn wall_nanos(&self) -> u64 {
        let live = || {
            let since = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        };
        self.clock(
            "a wall-clock reading",
            live,
            |nanos| Seen::WallClock { nanos },
            |e| match e {
                Seen::WallClock { nanos } => Some(*nanos),
                _ => None,
            },
        )
    }

    /// The monotonic clock: live (and recorded), or replayed.
    fn monotonic_nanos(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        let live = || {
            let start = START.get_or_init(Instant::now);
            u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
        };
        self.clock(
            "a monotonic-clock reading",
            live,
            |nanos| Seen::MonotonicClock { nanos },
            |e| match e {
                Seen::MonotonicClock { nanos } => Some(*nanos),
                _ => None,
            },
        )
    }

    fn clock(
        &self,
        what: &str,
        live: impl FnOnce() -> u64,
        seen: impl FnOnce(u64) -> Seen,
        recorded: impl FnOnce(&Seen) -> Option<u64>,
    ) -> u64 {
        self.with(|s| {
            if s.replay {
                // A diverged replay goes on with zeros; the report says why.
                return s.take(what, recorded).unwrap_or(0);
            }
            let nanos = live();
            s.push(seen(nanos));
            nanos
        })
        .unwrap_or(0)
    }

    /// Random bytes: live (and recorded), or replayed.
    fn random(&self, dst: &mut [u8]) {
        self.with(|s| {
            if s.replay {
                let bytes = s.take_random(dst.len());
                dst.copy_from_slice(&bytes.unwrap_or_else(|_| vec![0; dst.len()]));
                return;
            }
            if getrandom::fill(dst).is_err() {
                dst.fill(0);
            }
            s.push_random(dst);
        });
    }

    /// Ends the attempt: the recording (record mode, with the KV writes that
    /// stand) and the first divergence (replay, including inputs the
    /// recording has that the step never asked for).
    pub(crate) fn finish(&self, kv_writes: &[KvWrite]) -> (Option<Recording>, Option<String>) {
        self.with(|s| {
            if s.replay {
                if s.divergence.is_none() && s.next < s.recording.events.len() {
                    let left = &s.recording.events[s.next];
                    s.divergence = Some(format!(
                        "at input #{}: the recording has {}, but the step asked for nothing more",
                        s.next + 1,
                        left.describe()
                    ));
                }
                return (None, s.divergence.clone());
            }
            let mut recording = s.recording.clone();
            let writes = serde_json::to_vec(kv_writes).map_or(0, |v| v.len() as u64);
            if recording.complete && recording.bytes + writes <= s.limit {
                recording.bytes += writes;
                recording.kv_writes = kv_writes.to_vec();
            } else if recording.complete {
                recording.complete = false;
                recording.incomplete = Some(format!(
                    "the attempt's KV writes passed the recording limit of {} bytes",
                    s.limit
                ));
            }
            (Some(recording), None)
        })
        .unwrap_or((None, None))
    }

    /// A seed drawn like random bytes (recorded, or replayed): for WASI
    /// 0.2's `insecure-seed`, which a language runtime may seed its hashing
    /// with.
    pub(crate) fn seed(&self) -> u128 {
        let mut b = [0; 16];
        self.random(&mut b);
        u128::from_le_bytes(b)
    }

    /// The WASI clocks and random source that read from this tape.
    pub(crate) fn wasi_sources(&self) -> (TapeWallClock, TapeMonotonicClock, TapeRandom) {
        (
            TapeWallClock(self.clone()),
            TapeMonotonicClock(self.clone()),
            TapeRandom(self.clone()),
        )
    }
}

impl State {
    /// Record mode: random bytes, joined to the previous event when that
    /// was random bytes too.
    fn push_random(&mut self, bytes: &[u8]) {
        let more = hex::encode(bytes);
        let room = self.recording.bytes + more.len() as u64 <= self.limit;
        if self.recording.complete
            && room
            && let Some(Seen::Random { hex }) = self.recording.events.last_mut()
        {
            hex.push_str(&more);
            self.recording.bytes += more.len() as u64;
            return;
        }
        self.push(Seen::Random { hex: more });
    }

    /// Replay: `len` random bytes from the current run of recorded ones.
    fn take_random(&mut self, len: usize) -> Result<Vec<u8>, String> {
        let asked = format!("{len} random bytes");
        let used = self.random_used;
        let available = match self.recording.events.get(self.next) {
            Some(Seen::Random { hex }) if self.divergence.is_none() => hex::decode(hex)
                .ok()
                .filter(|b| b.len() >= used + len)
                .map(|b| (b.len(), b[used..used + len].to_vec())),
            _ => None,
        };
        match available {
            Some((total, bytes)) => {
                self.random_used += len;
                if self.random_used == total {
                    self.next += 1;
                    self.random_used = 0;
                }
                Ok(bytes)
            }
            None => self.take(&asked, |_| None::<Vec<u8>>),
        }
    }

    /// Record mode: keeps `event` unless the limit is reached.
    fn push(&mut self, event: Seen) {
        if !self.recording.complete {
            return;
        }
        let size = event.size();
        if self.recording.bytes + size > self.limit {
            self.recording.complete = false;
            self.recording.incomplete = Some(format!(
                "the attempt's inputs passed the recording limit of {} bytes at input #{}",
                self.limit,
                self.recording.events.len() + 1
            ));
            return;
        }
        self.recording.bytes += size;
        self.recording.events.push(event);
    }

    /// Replay: the next event if `matches` accepts it, else the divergence
    /// (kept once: the first point of difference).
    fn take<T>(
        &mut self,
        asked: &str,
        matches: impl FnOnce(&Seen) -> Option<T>,
    ) -> Result<T, String> {
        if let Some(d) = &self.divergence {
            return Err(d.clone());
        }
        let index = self.next;
        let found = self.recording.events.get(index);
        match found.and_then(matches) {
            Some(answer) => {
                self.next += 1;
                Ok(answer)
            }
            None => {
                let had = found.map_or("nothing more".to_string(), Seen::describe);
                let d = format!(
                    "at input #{}: the recording has {had}, but the step asked for {asked}",
                    index + 1
                );
                self.divergence = Some(d.clone());
                Err(d)
            }
        }
    }
}

/// Scripted tool answers, per tool, in order; the last answer repeats.
#[derive(Debug, Default)]
pub struct ToolScript {
    tools: Mutex<std::collections::BTreeMap<String, (Vec<ToolAnswer>, usize)>>,
}

/// What a scripted tool answers: the type `runbox test` case files hold.
pub use runbox_core::tools::ToolAnswer;

impl ToolScript {
    /// A script answering each tool with its answers in turn.
    pub fn new(answers: std::collections::BTreeMap<String, Vec<ToolAnswer>>) -> Self {
        ToolScript {
            tools: Mutex::new(answers.into_iter().map(|(k, v)| (k, (v, 0))).collect()),
        }
    }

    /// How many times each tool was called.
    pub fn calls(&self) -> std::collections::BTreeMap<String, usize> {
        let tools = lock(&self.tools);
        tools.iter().map(|(k, (_, n))| (k.clone(), *n)).collect()
    }

    fn answer(&self, name: &str) -> TapedAnswer {
        let mut tools = lock(&self.tools);
        let Some((answers, calls)) = tools.get_mut(name).filter(|(a, _)| !a.is_empty()) else {
            return (
                None,
                Some(format!("tool `{name}` has no scripted answer")),
                false,
            );
        };
        let a = &answers[(*calls).min(answers.len() - 1)];
        *calls += 1;
        (Some(a.step_json(Shortfall::default())), None, false)
    }
}

/// `wasi:clocks/wall-clock` from the tape.
pub(crate) struct TapeWallClock(Tape);

impl wasmtime_wasi::HostWallClock for TapeWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.wall_nanos())
    }
}

/// `wasi:clocks/monotonic-clock` from the tape.
pub(crate) struct TapeMonotonicClock(Tape);

impl wasmtime_wasi::HostMonotonicClock for TapeMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.monotonic_nanos()
    }
}

/// `random_get` from the tape.
pub(crate) struct TapeRandom(Tape);

impl rand_core::TryRng for TapeRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0; 4];
        self.0.random(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0; 8];
        self.0.random(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.random(dst);
        Ok(())
    }
}
