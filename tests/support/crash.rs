//! The crash-kill campaign: runs incidents whose steps call a counting
//! mutating tool, SIGKILLs `runbox run` at seeded random moments, restarts
//! it, and checks the invariants after every kill:
//!
//! 1. no committed step record is ever lost or changed;
//! 2. no non-idempotent step's mutating tool ran more often than it was
//!    authorized (once, plus once per human `retry`), counted from the tool's
//!    own log outside the store;
//! 3. `runbox verify` is clean;
//! 4. (after the campaign settles) every outbox entry of a committed event
//!    reached the webhook receiver at least once, and the receiver got no
//!    notification of an event that was not committed: the receiver
//!    refuses a fifth of requests, and kills land between commits and
//!    deliveries, and between deliveries and their records.
//!
//! The scripted human settles in-doubt steps the way an operator would: by
//! looking at the world (the tool's log). If the tool ran, the step is
//! resolved `ok`; if not, it is retried.
//!
//! Invariants 1 and 2 (and the shared campaign's fences and cuts) are
//! judged by [`History`], which writes what it judges to `history.jsonl`
//! in the campaign's dir: `crash-campaign --check-history FILE` judges it
//! again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::history::{Event, History};
use crate::netns::Net;
use crate::{fixture, write_file};

/// The shared campaign's runner lease, ms: short, so faults outlast it.
pub const RUNNER_LEASE_MS: u64 = 3000;

/// Campaign settings.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// The `runbox` binary.
    pub runbox: PathBuf,
    /// RNG seed: the same seed kills at the same moments.
    pub seed: u64,
    /// Stop after this many kills (on a shared store: faults of any kind).
    pub kills: u32,
    /// Longest wait before a kill.
    pub max_delay_ms: u64,
    /// Where to work (a data dir, tools, logs).
    pub dir: PathBuf,
    /// A shared store (`etcd://…`) instead of the data dir's own.
    pub store: Option<String>,
    /// The network namespaces of a shared campaign's runners and members:
    /// the campaign's own commands run in their hub.
    pub net: Option<Arc<Net>>,
}

/// What a campaign did.
#[derive(Debug, Clone, Default)]
pub struct CampaignReport {
    /// SIGKILLs delivered to a live `runbox run`.
    pub kills: u32,
    /// Faults injected on a shared store, of every kind (kills included).
    pub faults: u32,
    /// Runners paused with SIGSTOP (for up to 4 s, past their 3 s lease
    /// about a third of the time) and continued.
    pub runner_stops: u32,
    /// etcd members SIGKILLed and started again on their data dir.
    pub member_kills: u32,
    /// Of those, members that led the cluster when killed.
    pub leader_kills: u32,
    /// Runners cut off from the cluster (0.5 to 6 s; lease 3 s) and joined.
    pub runner_partitions: u32,
    /// Leaders cut off from the other members (a minority of one) and joined.
    pub leader_partitions: u32,
    /// Runner links slowed and made lossy for a while.
    pub slow_links: u32,
    /// Of the mutating calls cut-off runners started while cut off, the
    /// latest after its cut, ms (the lease is [`RUNNER_LEASE_MS`]).
    pub latest_call_after_cut_ms: Option<u64>,
    /// Events in the history file.
    pub history_events: u64,
    /// Seconds until every incident had ended after the last fault.
    pub drained_s: f64,
    /// `runbox run` processes started.
    pub runs: u32,
    /// Incidents driven to resolution.
    pub incidents_resolved: u32,
    /// In-doubt attempts settled by the scripted human (resolve ok).
    pub human_resolves: u32,
    /// In-doubt attempts the scripted human retried.
    pub human_retries: u32,
    /// Mutating tool executions seen in the tool's log.
    pub tool_calls: u32,
    /// Notifications committed (outbox entries), each delivered at least once.
    pub notifications: u32,
    /// Requests the receiver got for them (tries, redeliveries included).
    pub notification_requests: u32,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// (step id, idempotent)
const STEPS: [(&str, bool); 5] = [
    ("s1", false),
    ("s2", true),
    ("s3", false),
    ("s4", true),
    ("s5", false),
];

fn runbook(dir: &Path) -> PathBuf {
    write_file(
        dir,
        "tools.toml",
        r#"[tools.count]
mode = "mutate"
argv = ["sh", "-c", "echo \"$0 $PPID $(date +%s%N)\" >> counts.log; sleep 0.05", "{step}"]
timeout_ms = 10000
[tools.count.args]
step = { type = "string" }
"#,
    );
    let module = fixture("engine/count.wat");
    let mut text = String::from(
        "[runbook]\nname = \"crash\"\ntools = \"tools.toml\"\n[params.tag]\ndescription = \"tags tool log lines\"\n",
    );
    for (id, idempotent) in STEPS {
        text += &format!(
            "[[steps]]\nid = \"{id}\"\nmodule = \"{}\"\nidempotent = {idempotent}\ninput = {{ step = \"{{tag}}:{id}\" }}\ngrants = {{ tools = [\"count\"], kv_write = [\"last\"] }}\n",
            module.display()
        );
    }
    // Every call is counted fleet-wide, in one count every runner writes;
    // the campaign checks no use is lost or doubled by a fault. The limit
    // is never reached; the window is short so the count stays small (a
    // day's window grew it by every call of an hour-long run, past what a
    // commit should carry), and the checker remembers each use it saw.
    text += "[[rate_limits]]\ntool = \"count\"\nmax = 10000\nwindow = \"2m\"\n";
    write_file(dir, "runbook.toml", &text)
}

impl Campaign {
    /// `runbox` with the campaign's data dir, token and store, started in
    /// the hub when there are namespaces.
    fn cmd(&self, token: &str) -> Command {
        let mut c = self.bare_cmd(token);
        if let Some(net) = &self.net {
            net.enter_hub(&mut c);
        }
        c
    }

    /// `runbox` with the campaign's data dir, token and store.
    fn bare_cmd(&self, token: &str) -> Command {
        let mut c = Command::new(&self.runbox);
        c.env("RUNBOX_DATA_DIR", self.dir.join("data"))
            .env("RUNBOX_MUTATION_TOKEN", token)
            .stdin(Stdio::null());
        match &self.store {
            Some(store) => c.env("RUNBOX_STORE", store),
            None => c.env_remove("RUNBOX_STORE"),
        };
        c
    }

    fn out(&self, token: &str, args: &[&str]) -> Result<(i32, String), String> {
        // The scripted human signs every decision with its own key.
        let args = crate::with_human_key_by(&|| self.cmd(token), &self.dir.join("keys"), args);
        let o = self
            .cmd(token)
            .args(&args)
            .output()
            .map_err(|e| format!("runbox {args:?}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok((o.status.code().unwrap_or(-1), text))
    }

    fn ok(&self, token: &str, args: &[&str]) -> Result<String, String> {
        match self.out(token, args)? {
            (0, text) => Ok(text),
            (code, text) => Err(format!("runbox {args:?} exited {code}: {text}")),
        }
    }

    /// Feeds the tool's log lines written since the last call to the
    /// history (`TAG PID NS` each; a line still being written waits).
    fn feed_tool_calls(&self, checker: &mut Checker) -> Result<(), String> {
        let text = std::fs::read_to_string(self.dir.join("counts.log")).unwrap_or_default();
        let done = text.rfind('\n').map_or("", |end| &text[..=end]);
        for line in done.lines().skip(checker.lines_seen) {
            checker.lines_seen += 1;
            let mut fields = line.split(' ');
            let (Some(tag), Some(pid), Some(at_ns), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("counts.log: `{line}` is not `TAG PID NS`"));
            };
            let event = Event::ToolCall {
                tag: tag.to_string(),
                pid: pid.parse().map_err(|_| format!("counts.log: `{line}`"))?,
                at_ns: at_ns.parse().map_err(|_| format!("counts.log: `{line}`"))?,
            };
            if let Err(e) = checker.history.apply(event) {
                let incident = tag.split(':').next().unwrap_or_default();
                return Err(self.keep_export(&format!("CRASH-{incident}"), e));
            }
        }
        Ok(())
    }

    /// Keeps what the store says of `id` beside the campaign, for whoever
    /// traces the broken invariant `error`; says where.
    fn keep_export(&self, id: &str, error: String) -> String {
        let kept = self.dir.join(format!("broken-{id}.json"));
        match self.ok("", &["export", id, "--format", "json"]) {
            Ok(export) if std::fs::write(&kept, &export).is_ok() => {
                format!("{error} (its export: {})", kept.display())
            }
            _ => error,
        }
    }

    /// The checker of a campaign: its history file, the lines it has read.
    fn checker(&self) -> Result<Checker, String> {
        let mut history = History::create(&self.dir.join("history.jsonl"))?;
        history.apply(Event::Began {
            once: STEPS
                .iter()
                .filter(|(_, idempotent)| !idempotent)
                .map(|(id, _)| (*id).to_string())
                .collect(),
            lease_ms: RUNNER_LEASE_MS,
        })?;
        Ok(Checker {
            history,
            lines_seen: 0,
            uses: Default::default(),
        })
    }

    /// Runs the campaign; `Err` describes the first broken invariant.
    pub fn run(&self) -> Result<CampaignReport, String> {
        let started = Instant::now();
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let rb = runbook(&self.dir);
        let init = self
            .cmd("")
            .args(["token", "init"])
            .output()
            .map_err(|e| e.to_string())?;
        if !init.status.success() {
            return Err(format!(
                "token init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            ));
        }
        let token = String::from_utf8_lossy(&init.stdout).trim().to_string();
        let receiver = crate::receiver::Receiver::start(crate::receiver::Mode::FailShare(200));
        if self.store.is_none() {
            self.notify_to(&receiver)?;
        }
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut report = CampaignReport::default();
        let mut checker = self.checker()?;
        let mut incident = 0u32;
        let mut id = String::new();
        let mut need_open = true;
        while report.kills < self.kills {
            if need_open {
                incident += 1;
                id = format!("CRASH-{incident}");
                let tag = format!("tag={incident}");
                self.ok(
                    &token,
                    &[
                        "open",
                        &id,
                        "--runbook",
                        rb.to_str().expect("utf-8 path"),
                        "--param",
                        &tag,
                    ],
                )?;
                need_open = false;
            }
            let mut child = self
                .cmd(&token)
                .args(["run", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            report.runs += 1;
            let deadline = Instant::now() + Duration::from_millis(rng.u64(0..=self.max_delay_ms));
            let mut exited = None;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    exited = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            match exited {
                None => {
                    child.kill().map_err(|e| e.to_string())?;
                    child.wait().map_err(|e| e.to_string())?;
                    report.kills += 1;
                }
                // Resolved, or escalated over an in-doubt attempt: both expected.
                Some(status) if matches!(status.code(), Some(0 | 4)) => {}
                Some(status) => {
                    return Err(format!("{id}: `runbox run` exited {status} by itself"));
                }
            }
            self.check(&id, incident, &mut checker)?;
            let status: Value = serde_json::from_str(&self.ok(&token, &["status", &id, "--json"])?)
                .map_err(|e| e.to_string())?;
            match status["status"].as_str() {
                Some("resolved") => {
                    report.incidents_resolved += 1;
                    need_open = true;
                }
                Some("escalated") => {
                    self.settle(&token, &id, incident, &status, &mut checker, &mut report)?;
                }
                Some("open" | "running") => {}
                other => return Err(format!("{id}: unexpected status {other:?}: {status}")),
            }
        }
        self.feed_tool_calls(&mut checker)?;
        report.tool_calls = checker.history.tool_calls();
        report.history_events = checker.history.events;
        if self.store.is_none() {
            self.check_outbox(&receiver, &mut report)?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Escalations, attempts in doubt and resolutions go to `receiver`.
    fn notify_to(&self, receiver: &crate::receiver::Receiver) -> Result<(), String> {
        write_file(&self.dir, "hook.key", "crash-campaign-hmac-key-32-bytes");
        // On a shared store nothing has made the data dir yet.
        std::fs::create_dir_all(self.dir.join("data")).map_err(|e| e.to_string())?;
        let notify = format!(
            "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"../hook.key\"\nevents = [\"escalated\", \"in-doubt\", \"resolved\"]\nbackoff = \"10ms\"\nmax_attempts = 100\n",
            receiver.url()
        );
        if self.store.is_none() {
            write_file(&self.dir.join("data"), "notify.toml", &notify);
            return Ok(());
        }
        // On a shared store the sinks are the store's: the scripted human
        // sets them, signed.
        let file = write_file(&self.dir, "sinks.toml", &notify);
        let key = self.dir.join("keys").join("chaos");
        self.ok(
            "",
            &[
                "notify",
                "set",
                &file.display().to_string(),
                "--as",
                "chaos",
                "--key",
                &key.display().to_string(),
            ],
        )?;
        Ok(())
    }

    /// Invariant 4: a `serve` delivers what is owed; then every entry has
    /// reached the receiver, which heard of nothing else.
    fn check_outbox(
        &self,
        receiver: &crate::receiver::Receiver,
        report: &mut CampaignReport,
    ) -> Result<(), String> {
        let mut entries = std::collections::BTreeSet::new();
        for line in self.ok("", &["notify", "list", "--all", "--json"])?.lines() {
            let n: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            entries.insert(n["id"].as_str().unwrap_or_default().to_string());
        }
        let mut serve = self
            .cmd("")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let delivered = |got: &[crate::receiver::Received]| {
            got.iter()
                .filter(|r| r.answered == 200)
                .filter_map(|r| r.key.clone())
                .collect::<std::collections::BTreeSet<_>>()
        };
        let got = receiver.wait_for(Duration::from_secs(60), |got| {
            entries.is_subset(&delivered(got))
        });
        let _ = serve.kill();
        let _ = serve.wait();
        let heard: std::collections::BTreeSet<String> =
            got.iter().filter_map(|r| r.key.clone()).collect();
        if let Some(lost) = entries.difference(&delivered(&got)).next() {
            return Err(format!(
                "notification {lost} was committed but never delivered"
            ));
        }
        if let Some(stray) = heard.difference(&entries).next() {
            return Err(format!(
                "the receiver heard of {stray}, which no commit enqueued"
            ));
        }
        report.notifications = entries.len() as u32;
        report.notification_requests = got.len() as u32;
        Ok(())
    }

    /// The scripted human: settles the in-doubt step from the tool's log.
    fn settle(
        &self,
        token: &str,
        id: &str,
        incident: u32,
        status: &Value,
        checker: &mut Checker,
        report: &mut CampaignReport,
    ) -> Result<(), String> {
        let step = status["in_doubt"]["step"]
            .as_str()
            .or(status["checkpoint"]["step"].as_str())
            .ok_or_else(|| format!("{id} escalated with no step to settle: {status}"))?
            .to_string();
        self.feed_tool_calls(checker)?;
        let ran = checker.history.runs(&format!("{incident}:{step}"));
        if ran >= checker.history.authorized(incident, &step) {
            self.ok(
                token,
                &[
                    "resolve",
                    id,
                    "--step",
                    &step,
                    "--outcome",
                    "ok",
                    "--as",
                    "chaos",
                ],
            )?;
            report.human_resolves += 1;
        } else {
            self.ok(token, &["retry", id, "--step", &step, "--as", "chaos"])?;
            checker.history.apply(Event::Retried {
                incident,
                step: step.clone(),
            })?;
            report.human_retries += 1;
        }
        let after: Value = serde_json::from_str(&self.ok(token, &["status", id, "--json"])?)
            .map_err(|e| e.to_string())?;
        if after["status"] != "resolved" {
            self.ok(token, &["handback", id, "--as", "chaos"])?;
        }
        Ok(())
    }

    /// The rate-limit count holds one use per attempt that reached its
    /// mutating call: the in-flight marker and the use commit together.
    /// Uses leave the count when the window passes them, so each use seen
    /// is remembered (by step, attempt and time: a doubled increment is a
    /// second use of one attempt).
    fn check_counts(&self, id: &str, export: &Value, checker: &mut Checker) -> Result<(), String> {
        let started = export["timeline"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["kind"] == "attempt-started")
                    .count()
            })
            .unwrap_or(0);
        let seen = checker.uses.entry(id.to_string()).or_default();
        for line in self.ok("", &["limits", "--json"])?.lines() {
            let count: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            for u in count["uses"].as_array().into_iter().flatten() {
                if u["incident"] == id {
                    seen.insert(u.to_string());
                }
            }
        }
        let uses = seen.len();
        if uses != started {
            return Err(format!(
                "{id}: the rate-limit count holds {uses} uses, but {started} attempts started a mutation"
            ));
        }
        Ok(())
    }

    /// The invariants, after every run: `verify` is clean, the rate-limit
    /// count is exact, and the history holds (records, tool runs).
    fn check(&self, id: &str, incident: u32, checker: &mut Checker) -> Result<(), String> {
        let (code, text) = self.out("", &["verify", id])?;
        if code != 0 {
            return Err(format!("verify failed for {id}: {text}"));
        }
        let export: Value =
            serde_json::from_str(&self.ok("", &["export", id, "--format", "json"])?)
                .map_err(|e| e.to_string())?;
        self.check_counts(id, &export, checker)?;
        let records = export["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["step"].as_str().unwrap_or_default().to_string(),
                    r["attempt"].as_u64().unwrap_or_default(),
                    crate::history::digest(r),
                )
            })
            .collect();
        checker
            .history
            .apply(Event::Records { incident, records })
            .map_err(|e| self.keep_export(id, e))?;
        self.feed_tool_calls(checker)
    }
}

/// A campaign's history, how far it has read the tool's log, and every
/// rate-limit use it has seen, by incident.
struct Checker {
    history: History,
    lines_seen: usize,
    uses: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// A fault the shared campaign injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a random runner and start it again.
    RunnerKill,
    /// SIGSTOP a random runner for 0.5 to 4 s (its lease is 3 s), then
    /// SIGCONT it: a pause past the lease must find it fenced out.
    RunnerStop,
    /// SIGKILL an etcd member (the leader half the time), wait up to 2 s,
    /// and start it again on its data dir.
    MemberKill,
    /// Cut a random runner off from the cluster for 0.5 to 6 s, awake the
    /// whole time: it must start no mutating call past its lease.
    RunnerPartition,
    /// Cut the leader off from the other members (and every runner) for 1
    /// to 6 s: the majority elects another and goes on.
    LeaderPartition,
    /// Slow a random runner's link (64 kbit/s to 1 Mbit/s) and drop 1 to
    /// 30% of its packets each way for 1 to 6 s.
    SlowLink,
}

impl Fault {
    /// Every kind, in the order of their names.
    pub const ALL: [Fault; 6] = [
        Fault::RunnerKill,
        Fault::RunnerStop,
        Fault::MemberKill,
        Fault::RunnerPartition,
        Fault::LeaderPartition,
        Fault::SlowLink,
    ];

    /// The kind named `name`.
    pub fn parse(name: &str) -> Result<Fault, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                format!("no fault `{name}`: {}", names.join(", "))
            })
    }

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RunnerKill => "runner-kill",
            Fault::RunnerStop => "runner-stop",
            Fault::MemberKill => "member-kill",
            Fault::RunnerPartition => "runner-partition",
            Fault::LeaderPartition => "leader-partition",
            Fault::SlowLink => "slow-link",
        }
    }

    /// Whether the fault lives in network namespaces.
    pub fn needs_net(self) -> bool {
        matches!(
            self,
            Fault::RunnerPartition | Fault::LeaderPartition | Fault::SlowLink
        )
    }
}

/// Nanoseconds since the epoch: the clock the tool's log lines use.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The campaign on a store several runners share: `runners` processes of
/// `runbox run --all --follow` on one etcd cluster, `incidents` open at a
/// time, and at seeded random moments a fault picked from `faults`. After
/// every fault every runner is paused and every live incident checked as
/// in [`Campaign`], plus: the owner keys' fences never decrease, and a
/// runner cut off started no mutating call past its lease. Once faults
/// stop, every incident ends, and every notification is delivered.
pub struct SharedCampaign {
    /// The campaign's binary, seed, number of faults, delays and work dir;
    /// its `store` is the cluster's address.
    pub campaign: Campaign,
    /// Runners sharing the store.
    pub runners: usize,
    /// Incidents open at a time.
    pub incidents: u32,
    /// The cluster the runners share.
    pub cluster: crate::etcd::EtcdCluster,
    /// The kinds of fault to pick from, each as likely.
    pub faults: Vec<Fault>,
}

impl SharedCampaign {
    /// Sets up `runners` runners and a 3-member cluster for `campaign`: in
    /// network namespaces of their own when a fault in `faults` needs them
    /// (fails naming what the machine lacks), on loopback otherwise.
    pub fn start(
        campaign: Campaign,
        runners: usize,
        incidents: u32,
        faults: Vec<Fault>,
    ) -> Result<SharedCampaign, String> {
        let net = if faults.iter().any(|f| f.needs_net()) {
            if let Some(missing) = Net::missing() {
                return Err(format!("partitions and link faults: {missing}"));
            }
            let mut nodes: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
            nodes.extend((0..runners).map(|i| format!("r{i}")));
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            Some(Arc::new(Net::create(&nodes)?))
        } else {
            None
        };
        let cluster = match &net {
            Some(net) => crate::etcd::EtcdCluster::start_in(net.clone(), 3),
            None => crate::etcd::EtcdCluster::start(3),
        };
        Ok(SharedCampaign {
            campaign: Campaign {
                store: Some(cluster.url("campaign")),
                net,
                ..campaign
            },
            runners,
            incidents,
            cluster,
            faults,
        })
    }

    /// Starts runner `name` (in its namespace, when there are some); its
    /// log lines (`info` and up) go to `runner-{name}.log` in the
    /// campaign's dir, kept across restarts, so a broken invariant can be
    /// traced.
    fn spawn_runner(&self, token: &str, name: &str) -> Result<std::process::Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.campaign.dir.join(format!("runner-{name}.log")))
            .map_err(|e| format!("runner {name}'s log: {e}"))?;
        let mut cmd = self.campaign.bare_cmd(token);
        if let Some(net) = &self.campaign.net {
            net.enter(name, &mut cmd);
        }
        cmd.env("RUNBOX_LOG", "info")
            .args([
                "--runner",
                name,
                "--lease-ttl",
                &format!("{RUNNER_LEASE_MS}ms"),
                "run",
                "--all",
                "--follow",
                "--poll",
                "100ms",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())
    }

    fn signal_all(children: &[std::process::Child], signal: libc::c_int) {
        for child in children {
            // SAFETY: kill only signals our own children.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Each incident's owner key and its create revision now.
    fn fences(&self) -> Vec<(String, i64)> {
        let prefix = match &self.campaign.store {
            Some(url) => format!("{}o/", url.rsplit_once('/').map_or("runbox/", |(_, p)| p)),
            None => return Vec::new(),
        };
        let out = self
            .cluster
            .etcdctl()
            .arg(format!(
                "--endpoints={}",
                self.cluster.endpoints().join(",")
            ))
            .args(["get", "--prefix", &prefix, "-w", "json"])
            .output();
        let Ok(out) = out else {
            return Vec::new();
        };
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        json["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                (
                    kv["key"].as_str().unwrap_or_default().to_string(),
                    kv["create_revision"].as_i64().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn net(&self, fault: Fault) -> Result<Arc<Net>, String> {
        self.campaign.net.clone().ok_or_else(|| {
            format!(
                "`{}` needs network namespaces: start the campaign with SharedCampaign::start",
                fault.name()
            )
        })
    }

    /// Injects `fault`, its victim and durations as `rng` picks them.
    fn inject(
        &mut self,
        fault: Fault,
        rng: &mut fastrand::Rng,
        runners: &mut Runners,
        checker: &mut Checker,
        report: &mut CampaignReport,
    ) -> Result<(), String> {
        let victim = rng.usize(..runners.children.len());
        let name = runners.names[victim].clone();
        let hit = match fault {
            Fault::RunnerKill => {
                let child = &mut runners.children[victim];
                child.kill().map_err(|e| e.to_string())?;
                child.wait().map_err(|e| e.to_string())?;
                report.kills += 1;
                *child = self.spawn_runner(&runners.token, &name)?;
                report.runs += 1;
                name
            }
            Fault::RunnerStop => {
                let child = &runners.children[victim..=victim];
                Self::signal_all(child, libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(rng.u64(500..=4000)));
                Self::signal_all(child, libc::SIGCONT);
                report.runner_stops += 1;
                name
            }
            Fault::MemberKill => self.kill_member(rng, report)?,
            Fault::RunnerPartition => {
                let net = self.net(fault)?;
                net.cut(&name)?;
                // Once the link is down: `ip` may take a while on a loaded
                // machine, and calls meanwhile were not cut off.
                let from_ns = now_ns();
                std::thread::sleep(Duration::from_millis(rng.u64(500..=6000)));
                // Taken before the link is back: a call after it is not cut off.
                let to_ns = now_ns();
                net.heal(&name)?;
                checker.history.apply(Event::Cut {
                    runner: name.clone(),
                    pid: runners.children[victim].id(),
                    from_ns,
                    to_ns,
                })?;
                report.runner_partitions += 1;
                name
            }
            Fault::LeaderPartition => self.partition_leader(rng, report)?,
            Fault::SlowLink => {
                let net = self.net(fault)?;
                net.degrade(&name, rng.u32(64..=1024), rng.u32(1..=30))?;
                std::thread::sleep(Duration::from_millis(rng.u64(1000..=6000)));
                net.heal(&name)?;
                report.slow_links += 1;
                name
            }
        };
        checker.history.apply(Event::Fault {
            kind: fault.name().into(),
            victim: hit,
        })?;
        report.faults += 1;
        Ok(())
    }

    /// The webhook receiver the runners notify, failing a share of
    /// requests: in the hub when they live in namespaces.
    fn receiver(&self) -> Result<crate::receiver::Receiver, String> {
        use crate::receiver::{Mode, Receiver};
        match &self.campaign.net {
            Some(net) => net.in_hub(|| Receiver::start_at(Mode::FailShare(200), Net::hub_addr())),
            None => Ok(Receiver::start(Mode::FailShare(200))),
        }
    }

    /// The leader now (a random member when none leads); whether it leads.
    fn leader_or_any(&self, rng: &mut fastrand::Rng) -> (usize, bool) {
        match self.cluster.leader() {
            Some(l) => (l, true),
            None => (rng.usize(..self.cluster.endpoints().len()), false),
        }
    }

    /// Waits until every member is healthy again after a fault of `victim`.
    fn healthy_again(&self, victim: &str) -> Result<(), String> {
        if self.cluster.healthy_within(Duration::from_secs(30)) {
            return Ok(());
        }
        Err(format!(
            "etcd member {victim} did not come back healthy (logs in {})",
            self.cluster.log_dir().display()
        ))
    }

    /// SIGKILLs an etcd member (the leader half the time), and starts it
    /// again after up to 2 s; waits until the cluster is healthy.
    fn kill_member(
        &mut self,
        rng: &mut fastrand::Rng,
        report: &mut CampaignReport,
    ) -> Result<String, String> {
        let (leader, leads) = self.leader_or_any(rng);
        let victim = if leads && rng.bool() {
            leader
        } else {
            rng.usize(..self.cluster.endpoints().len())
        };
        self.cluster.kill(victim);
        report.member_kills += 1;
        if leads && leader == victim {
            report.leader_kills += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..=2000)));
        self.cluster.restart(victim);
        let name = self.cluster.member_name(victim).to_string();
        self.healthy_again(&name)?;
        Ok(name)
    }

    /// Cuts the leader off for 1 to 6 s, then joins it and waits until the
    /// cluster is healthy.
    fn partition_leader(
        &mut self,
        rng: &mut fastrand::Rng,
        report: &mut CampaignReport,
    ) -> Result<String, String> {
        let net = self.net(Fault::LeaderPartition)?;
        let (leader, _) = self.leader_or_any(rng);
        let name = self.cluster.member_name(leader).to_string();
        net.cut(&name)?;
        std::thread::sleep(Duration::from_millis(rng.u64(1000..=6000)));
        net.heal(&name)?;
        report.leader_partitions += 1;
        self.healthy_again(&name)?;
        Ok(name)
    }

    /// Runs the campaign; `Err` describes the first broken invariant.
    pub fn run(&mut self) -> Result<CampaignReport, String> {
        if self.faults.is_empty() {
            return Err("a shared campaign needs at least one kind of fault".into());
        }
        let c = self.campaign.clone();
        let c = &c;
        let started = Instant::now();
        std::fs::create_dir_all(&c.dir).map_err(|e| e.to_string())?;
        let rb = runbook(&c.dir);
        let token = c.ok("", &["token", "init"])?;
        let token = token
            .lines()
            .find(|l| l.starts_with("rbx_"))
            .ok_or("no token printed")?
            .to_string();
        // The scripted human is enrolled before any fault: on a shared
        // store, into the store, with the token's consent.
        crate::human_key_by(&|| c.cmd(&token), &c.dir.join("keys"), "chaos");
        let receiver = self.receiver()?;
        c.notify_to(&receiver)?;
        let mut rng = fastrand::Rng::with_seed(c.seed);
        // The kinds come from a stream of their own: how often the other
        // draws happen depends on timing (is there a leader now?), so the
        // seed alone fixes which faults a campaign injects.
        let mut kinds = fastrand::Rng::with_seed(c.seed ^ 0x6b69_6e64);
        let mut report = CampaignReport::default();
        let mut checker = c.checker()?;
        let mut live: Vec<u32> = Vec::new();
        let mut next = 0u32;
        let names: Vec<String> = (0..self.runners).map(|i| format!("r{i}")).collect();
        let children = names
            .iter()
            .map(|n| self.spawn_runner(&token, n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut runners = Runners {
            token,
            names,
            children,
        };
        let result = (|| -> Result<(), String> {
            while report.faults < c.kills {
                while live.len() < self.incidents as usize {
                    next += 1;
                    let tag = format!("tag={next}");
                    let id = format!("CRASH-{next}");
                    c.ok(
                        &runners.token,
                        &[
                            "open",
                            &id,
                            "--runbook",
                            rb.to_str().unwrap_or_default(),
                            "--param",
                            &tag,
                        ],
                    )?;
                    live.push(next);
                }
                std::thread::sleep(Duration::from_millis(rng.u64(0..=c.max_delay_ms)));
                let fault = self.faults[kinds.usize(..self.faults.len())];
                self.inject(fault, &mut rng, &mut runners, &mut checker, &mut report)?;
                if report.faults % 50 == 0 {
                    // Long campaigns run for an hour: say how far they are.
                    eprintln!(
                        "shared campaign: {} faults, {} incidents resolved, {:.0} s",
                        report.faults,
                        report.incidents_resolved,
                        started.elapsed().as_secs_f64()
                    );
                }
                // Check a still picture: every runner paused.
                Self::signal_all(&runners.children, libc::SIGSTOP);
                let checked =
                    self.check_round(&runners.token, &mut live, &mut checker, &mut report);
                Self::signal_all(&runners.children, libc::SIGCONT);
                checked?;
            }
            self.drain(&runners, &mut live, &mut checker, &mut report)
        })();
        for child in &mut runners.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        result?;
        c.feed_tool_calls(&mut checker)?;
        c.check_outbox(&receiver, &mut report)?;
        report.tool_calls = checker.history.tool_calls();
        report.latest_call_after_cut_ms = checker.history.latest_call_after_cut_ms;
        report.history_events = checker.history.events;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Once faults stop, every incident must end (resolved; the scripted
    /// human settles each escalation) within [`DRAIN`], checked as after
    /// a fault.
    fn drain(
        &self,
        runners: &Runners,
        live: &mut Vec<u32>,
        checker: &mut Checker,
        report: &mut CampaignReport,
    ) -> Result<(), String> {
        let stopped = Instant::now();
        while !live.is_empty() {
            if stopped.elapsed() > DRAIN {
                let ids: Vec<String> = live.iter().map(|n| format!("CRASH-{n}")).collect();
                return Err(format!(
                    "{} s after the last fault, {} have not ended",
                    DRAIN.as_secs(),
                    ids.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
            Self::signal_all(&runners.children, libc::SIGSTOP);
            let checked = self.check_round(&runners.token, live, checker, report);
            Self::signal_all(&runners.children, libc::SIGCONT);
            checked?;
        }
        report.drained_s = stopped.elapsed().as_secs_f64();
        Ok(())
    }

    fn check_round(
        &self,
        token: &str,
        live: &mut Vec<u32>,
        checker: &mut Checker,
        report: &mut CampaignReport,
    ) -> Result<(), String> {
        let c = &self.campaign;
        for (key, revision) in self.fences() {
            checker.history.apply(Event::Fence { key, revision })?;
        }
        let mut still = Vec::new();
        for &n in live.iter() {
            let id = format!("CRASH-{n}");
            c.check(&id, n, checker)?;
            let status: Value = serde_json::from_str(&c.ok(token, &["status", &id, "--json"])?)
                .map_err(|e| e.to_string())?;
            match status["status"].as_str() {
                Some("resolved") => report.incidents_resolved += 1,
                // In doubt, held before its mutating call, or stopped in the
                // middle of it: the human looks at the world (the tool's
                // log), never at how the escalation was worded.
                Some("escalated") => {
                    c.settle(token, &id, n, &status, checker, report)?;
                    still.push(n);
                }
                Some("open" | "running" | "awaiting-approval") => still.push(n),
                other => return Err(format!("{id}: unexpected status {other:?}: {status}")),
            }
        }
        *live = still;
        Ok(())
    }
}

/// How long every incident may take to end once faults stop.
const DRAIN: Duration = Duration::from_secs(60);

/// The shared campaign's runner processes, by name.
struct Runners {
    token: String,
    names: Vec<String>,
    children: Vec<std::process::Child>,
}
