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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{fixture, write_file};

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
argv = ["sh", "-c", "echo \"$0\" >> counts.log; sleep 0.05", "{step}"]
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
    // Every call is counted fleet-wide; the campaign checks no count is
    // lost or doubled by a kill (the limit itself is never reached).
    text += "[[rate_limits]]\ntool = \"count\"\nmax = 10000\nwindow = \"1d\"\n";
    write_file(dir, "runbook.toml", &text)
}

impl Campaign {
    fn cmd(&self, token: &str) -> Command {
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
        let args = crate::with_human_key(
            &self.runbox,
            &self.dir.join("data"),
            &self.dir.join("keys"),
            args,
        );
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

    fn tool_lines(&self) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(self.dir.join("counts.log")) {
            for line in text.lines() {
                *counts.entry(line.to_string()).or_insert(0) += 1;
            }
        }
        counts
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
        // Per incident: authorized executions per step, and committed records.
        let mut incident = 0u32;
        let mut authorized: BTreeMap<(u32, String), u32> = BTreeMap::new();
        let mut committed: BTreeMap<(u32, String, u64), Value> = BTreeMap::new();
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
            self.check(&id, incident, &mut committed, &authorized)?;
            let status: Value = serde_json::from_str(&self.ok(&token, &["status", &id, "--json"])?)
                .map_err(|e| e.to_string())?;
            match status["status"].as_str() {
                Some("resolved") => {
                    report.incidents_resolved += 1;
                    need_open = true;
                }
                Some("escalated") => {
                    self.settle(&token, &id, incident, &status, &mut authorized, &mut report)?;
                }
                Some("open" | "running") => {}
                other => return Err(format!("{id}: unexpected status {other:?}: {status}")),
            }
        }
        report.tool_calls = self.tool_lines().values().sum();
        if self.store.is_none() {
            self.check_outbox(&receiver, &mut report)?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Escalations, attempts in doubt and resolutions go to `receiver`.
    fn notify_to(&self, receiver: &crate::receiver::Receiver) -> Result<(), String> {
        write_file(&self.dir, "hook.key", "crash-campaign-hmac-key-32-bytes");
        let notify = format!(
            "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"../hook.key\"\nevents = [\"escalated\", \"in-doubt\", \"resolved\"]\nbackoff = \"10ms\"\nmax_attempts = 100\n",
            receiver.url()
        );
        write_file(&self.dir.join("data"), "notify.toml", &notify);
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
        authorized: &mut BTreeMap<(u32, String), u32>,
        report: &mut CampaignReport,
    ) -> Result<(), String> {
        let step = status["in_doubt"]["step"]
            .as_str()
            .or(status["checkpoint"]["step"].as_str())
            .ok_or_else(|| format!("{id} escalated with no step to settle: {status}"))?
            .to_string();
        let tag = format!("{incident}:{step}");
        let ran = self.tool_lines().get(&tag).copied().unwrap_or(0);
        let allowed = authorized.entry((incident, step.clone())).or_insert(1);
        if ran >= *allowed {
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
            *allowed += 1;
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
    fn check_counts(&self, id: &str, export: &Value) -> Result<(), String> {
        let started = export["timeline"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["kind"] == "attempt-started")
                    .count()
            })
            .unwrap_or(0);
        let mut uses = 0;
        for line in self.ok("", &["limits", "--json"])?.lines() {
            let count: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            uses += count["uses"]
                .as_array()
                .map(|u| u.iter().filter(|u| u["incident"] == id).count())
                .unwrap_or(0);
        }
        if uses != started {
            return Err(format!(
                "{id}: the rate-limit count holds {uses} uses, but {started} attempts started a mutation"
            ));
        }
        Ok(())
    }

    /// The invariants, after every run.
    fn check(
        &self,
        id: &str,
        incident: u32,
        committed: &mut BTreeMap<(u32, String, u64), Value>,
        authorized: &BTreeMap<(u32, String), u32>,
    ) -> Result<(), String> {
        let (code, text) = self.out("", &["verify", id])?;
        if code != 0 {
            return Err(format!("verify failed for {id}: {text}"));
        }
        let export: Value =
            serde_json::from_str(&self.ok("", &["export", id, "--format", "json"])?)
                .map_err(|e| e.to_string())?;
        self.check_counts(id, &export)?;
        let records = export["steps"].as_array().cloned().unwrap_or_default();
        for ((inc, step, attempt), before) in
            committed.iter().filter(|((inc, _, _), _)| *inc == incident)
        {
            let now = records
                .iter()
                .find(|r| r["step"] == step.as_str() && r["attempt"].as_u64() == Some(*attempt));
            if now != Some(before) {
                return Err(format!(
                    "incident {inc}: committed record {step}#{attempt} was lost or changed: {now:?}"
                ));
            }
        }
        for r in records {
            let key = (
                incident,
                r["step"].as_str().unwrap_or_default().to_string(),
                r["attempt"].as_u64().unwrap_or_default(),
            );
            committed.entry(key).or_insert(r);
        }
        let lines = self.tool_lines();
        for (step, idempotent) in STEPS {
            if idempotent {
                continue;
            }
            let ran = lines
                .get(&format!("{incident}:{step}"))
                .copied()
                .unwrap_or(0);
            let allowed = authorized
                .get(&(incident, step.to_string()))
                .copied()
                .unwrap_or(1);
            if ran > allowed {
                // What the store says of it, for whoever traces the break.
                let kept = self.dir.join(format!("broken-{id}.json"));
                let _ = std::fs::write(&kept, export.to_string());
                return Err(format!(
                    "incident {incident}: non-idempotent `{step}` ran {ran} times, {allowed} authorized (its export: {})",
                    kept.display()
                ));
            }
        }
        Ok(())
    }
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
}

impl Fault {
    /// Every kind, in the order of their names.
    pub const ALL: [Fault; 3] = [Fault::RunnerKill, Fault::RunnerStop, Fault::MemberKill];

    /// The kind named `name` (`runner-kill`, `runner-stop`, `member-kill`).
    pub fn parse(name: &str) -> Result<Fault, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| format!("no fault `{name}`: runner-kill, runner-stop or member-kill"))
    }

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RunnerKill => "runner-kill",
            Fault::RunnerStop => "runner-stop",
            Fault::MemberKill => "member-kill",
        }
    }
}

/// The campaign on a store several runners share: `runners` processes of
/// `runbox run --all --follow` on one etcd cluster, `incidents` open at a
/// time, and at seeded random moments a fault picked from `faults`: a
/// runner SIGKILLed (and started again), a runner paused, an etcd member
/// (the leader half the time) killed and restarted. After every fault
/// every runner is paused and every live incident checked as in
/// [`Campaign`], plus: the owner keys' fences never decrease.
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
    /// Starts runner `name`; its log lines (`info` and up) go to
    /// `runner-{name}.log` in the campaign's dir, kept across restarts, so
    /// a broken invariant can be traced.
    fn spawn_runner(&self, token: &str, name: &str) -> Result<std::process::Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.campaign.dir.join(format!("runner-{name}.log")))
            .map_err(|e| format!("runner {name}'s log: {e}"))?;
        self.campaign
            .cmd(token)
            .env("RUNBOX_LOG", "info")
            .args([
                "--runner",
                name,
                "--lease-ttl",
                "3s",
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

    /// Each incident's owner key create revision now.
    fn fences(&self) -> BTreeMap<String, i64> {
        let prefix = match &self.campaign.store {
            Some(url) => format!("{}o/", url.rsplit_once('/').map_or("runbox/", |(_, p)| p)),
            None => return BTreeMap::new(),
        };
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints={}",
                self.cluster.endpoints().join(",")
            ))
            .args(["get", "--prefix", &prefix, "-w", "json"])
            .output();
        let Ok(out) = out else {
            return BTreeMap::new();
        };
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        json["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        (
                            kv["key"].as_str().unwrap_or_default().to_string(),
                            kv["create_revision"].as_i64().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Injects one fault of a kind from `self.faults`, as `rng` picks it.
    fn inject(
        &mut self,
        rng: &mut fastrand::Rng,
        children: &mut [std::process::Child],
        token: &str,
        names: &[String],
        report: &mut CampaignReport,
    ) -> Result<(), String> {
        let fault = self.faults[rng.usize(..self.faults.len())];
        match fault {
            Fault::RunnerKill => {
                let victim = rng.usize(..children.len());
                children[victim].kill().map_err(|e| e.to_string())?;
                children[victim].wait().map_err(|e| e.to_string())?;
                report.kills += 1;
                children[victim] = self.spawn_runner(token, &names[victim])?;
                report.runs += 1;
            }
            Fault::RunnerStop => {
                let victim = rng.usize(..children.len());
                Self::signal_all(&children[victim..=victim], libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(rng.u64(500..=4000)));
                Self::signal_all(&children[victim..=victim], libc::SIGCONT);
                report.runner_stops += 1;
            }
            Fault::MemberKill => self.kill_member(rng, report)?,
        }
        report.faults += 1;
        Ok(())
    }

    /// SIGKILLs an etcd member (the leader half the time), and starts it
    /// again after up to 2 s; waits until the cluster is healthy.
    fn kill_member(
        &mut self,
        rng: &mut fastrand::Rng,
        report: &mut CampaignReport,
    ) -> Result<(), String> {
        let members = self.cluster.endpoints().len();
        let leader = self.cluster.leader();
        let victim = match leader {
            Some(l) if rng.bool() => l,
            _ => rng.usize(..members),
        };
        self.cluster.kill(victim);
        report.member_kills += 1;
        if leader == Some(victim) {
            report.leader_kills += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..=2000)));
        self.cluster.restart(victim);
        if !self.cluster.healthy_within(Duration::from_secs(30)) {
            return Err(format!(
                "etcd member m{victim} did not come back healthy (logs in {})",
                self.cluster.log_dir().display()
            ));
        }
        Ok(())
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
        let mut rng = fastrand::Rng::with_seed(c.seed);
        let mut report = CampaignReport::default();
        let mut authorized: BTreeMap<(u32, String), u32> = BTreeMap::new();
        let mut committed: BTreeMap<(u32, String, u64), Value> = BTreeMap::new();
        let mut live: Vec<u32> = Vec::new();
        let mut next = 0u32;
        let mut fences: BTreeMap<String, i64> = BTreeMap::new();
        let names: Vec<String> = (0..self.runners).map(|i| format!("r{i}")).collect();
        let mut children = names
            .iter()
            .map(|n| self.spawn_runner(&token, n))
            .collect::<Result<Vec<_>, _>>()?;
        let result = (|| -> Result<(), String> {
            while report.faults < c.kills {
                while live.len() < self.incidents as usize {
                    next += 1;
                    let tag = format!("tag={next}");
                    let id = format!("CRASH-{next}");
                    c.ok(
                        &token,
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
                self.inject(&mut rng, &mut children, &token, &names, &mut report)?;
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
                Self::signal_all(&children, libc::SIGSTOP);
                let checked = self.check_round(
                    &token,
                    &mut live,
                    &mut committed,
                    &mut authorized,
                    &mut report,
                    &mut fences,
                );
                Self::signal_all(&children, libc::SIGCONT);
                checked?;
            }
            Ok(())
        })();
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        result?;
        report.tool_calls = c.tool_lines().values().sum();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn check_round(
        &self,
        token: &str,
        live: &mut Vec<u32>,
        committed: &mut BTreeMap<(u32, String, u64), Value>,
        authorized: &mut BTreeMap<(u32, String), u32>,
        report: &mut CampaignReport,
        fences: &mut BTreeMap<String, i64>,
    ) -> Result<(), String> {
        let c = &self.campaign;
        for (key, fence) in self.fences() {
            let before = fences.insert(key.clone(), fence).unwrap_or(0);
            if fence < before {
                return Err(format!("the fence of {key} went down: {before} -> {fence}"));
            }
        }
        let mut still = Vec::new();
        for &n in live.iter() {
            let id = format!("CRASH-{n}");
            c.check(&id, n, committed, authorized)?;
            let status: Value = serde_json::from_str(&c.ok(token, &["status", &id, "--json"])?)
                .map_err(|e| e.to_string())?;
            match status["status"].as_str() {
                Some("resolved") => report.incidents_resolved += 1,
                // In doubt, held before its mutating call, or stopped in the
                // middle of it: the human looks at the world (the tool's
                // log), never at how the escalation was worded.
                Some("escalated") => {
                    c.settle(token, &id, n, &status, authorized, report)?;
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
