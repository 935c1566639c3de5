//! The etcd backend on a real cluster started here: the store conformance
//! suite, and what only a shared store has to do (claims, fences, leases,
//! etcd's transaction limits, a member dying).

use std::sync::Arc;
use std::time::Duration;

use runbox_core::ident::IncidentId;
use runbox_core::records::{Checkpoint, Status};
use runbox_store::keys;
use runbox_store::{Batch, Claim, Expect, Store, StoreError, StoreExt};
use runbox_store_etcd::{EtcdStore, Options};
use runbox_tests::etcd::EtcdCluster;

fn store(cluster: &EtcdCluster, prefix: &str, runner: &str, ttl: Duration) -> EtcdStore {
    let url = cluster.url(prefix).parse().unwrap();
    let options = Options {
        runner: runner.into(),
        lease_ttl: ttl,
        ..Options::default()
    };
    let _on_runtime = runbox_tests::etcd::runtime().enter();
    EtcdStore::connect(&url, options).unwrap()
}

fn checkpoint(version: u64) -> Checkpoint {
    Checkpoint {
        version,
        ..Checkpoint::first("s")
    }
}

fn open(store: &dyn Store, id: &IncidentId) {
    let mut batch = Batch::new(checkpoint(0));
    batch.put(keys::status(id), &Status::Open);
    store.commit(id, Expect::Absent, batch).unwrap();
}

#[test]
fn etcd_passes_the_store_conformance_suite() {
    let cluster = EtcdCluster::start(1);
    for (i, (name, check)) in runbox_store::conformance::CHECKS.iter().enumerate() {
        let s = store(
            &cluster,
            &format!("conformance/{i}"),
            "r",
            Duration::from_secs(5),
        );
        println!("conformance: {name}");
        check(&s);
    }
}

#[test]
fn a_runner_that_lost_its_claim_never_commits_and_etcd_limits_are_refused_clearly() {
    let cluster = EtcdCluster::start(1);
    let a = store(&cluster, "fence", "runner-a", Duration::from_secs(2));
    let b = store(&cluster, "fence", "runner-b", Duration::from_secs(2));
    let id = IncidentId::new("INC-1").unwrap();
    open(&a, &id);
    assert_eq!(a.claim(&id).unwrap(), Claim::Ours);
    assert_eq!(
        b.claim(&id).unwrap(),
        Claim::Theirs {
            runner: "runner-a".into()
        }
    );
    a.check_claim(&id).unwrap();
    // A commits under its claim.
    a.commit(&id, Expect::Version(0), Batch::new(checkpoint(1)))
        .unwrap();
    // A releases; B takes it and commits; A's later commit is fenced even
    // though it names the current version.
    a.release(&id).unwrap();
    let a_late = store(&cluster, "fence", "runner-a", Duration::from_secs(2));
    assert_eq!(a_late.claim(&id).unwrap(), Claim::Ours);
    a_late.release(&id).unwrap();
    assert_eq!(b.claim(&id).unwrap(), Claim::Ours);
    // A claims anew while B holds it: refused.
    assert!(matches!(a.claim(&id).unwrap(), Claim::Theirs { .. }));
    b.commit(&id, Expect::Version(1), Batch::new(checkpoint(2)))
        .unwrap();
    drop(b);
    // B's clean exit released it; A holds it with a new fence.
    assert_eq!(a.claim(&id).unwrap(), Claim::Ours);
    let version = a.version(&id).unwrap().unwrap();
    assert_eq!(version, 2);
    a.commit(&id, Expect::Version(2), Batch::new(checkpoint(3)))
        .unwrap();

    // A claim held by a store whose lease lapses is taken by another, and
    // the first one's commits are fenced.
    let c = store(&cluster, "fence", "runner-c", Duration::from_secs(2));
    let id2 = IncidentId::new("INC-2").unwrap();
    open(&c, &id2);
    assert_eq!(c.claim(&id2).unwrap(), Claim::Ours);
    let c2 = store(&cluster, "fence", "runner-c2", Duration::from_secs(2));
    // Revoke C's lease behind its back (as a lapse would).
    let endpoints = cluster.endpoints();
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["lease", "list"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let _ = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["lease", "revoke", line.trim()])
            .output();
    }
    assert_eq!(c2.claim(&id2).unwrap(), Claim::Ours);
    let err = c
        .commit(&id2, Expect::Version(0), Batch::new(checkpoint(1)))
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(err.to_string().contains("runner-c2"), "{err}");
    assert_eq!(c.version(&id2).unwrap(), Some(0), "nothing written");
    c2.commit(&id2, Expect::Version(0), Batch::new(checkpoint(1)))
        .unwrap();

    // Past etcd's limits: a clear error before anything is sent.
    let id3 = IncidentId::new("INC-3").unwrap();
    open(&c2, &id3);
    let mut big = Batch::new(checkpoint(1));
    for i in 0..200 {
        big.kv(format!("k{i}"), Some(b"v".to_vec()));
    }
    let err = c2.commit(&id3, Expect::Version(0), big).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("at most 128"), "{err}");
    let mut huge = Batch::new(checkpoint(1));
    huge.put_unchecked(keys::meta(&id3), vec![b'7'; 2 << 20]);
    assert!(matches!(
        c2.commit(&id3, Expect::Version(0), huge),
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(c2.version(&id3).unwrap(), Some(0));
}

/// Revokes every lease on `cluster` behind its holders' backs, as etcd
/// does to a lease whose holder went silent past its TTL.
fn revoke_all_leases(cluster: &EtcdCluster) {
    let endpoints = format!("--endpoints={}", cluster.endpoints().join(","));
    let out = cluster
        .etcdctl()
        .args([endpoints.as_str(), "lease", "list"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let revoked = cluster
            .etcdctl()
            .args([endpoints.as_str(), "lease", "revoke", line.trim()])
            .output()
            .unwrap();
        assert!(revoked.status.success(), "{revoked:?}");
    }
}

/// A runner whose lease etcd dropped learns it at its next renewal (a
/// third of the TTL), not when its own clock runs the TTL out, and stops
/// renewing it; its next claim takes a new lease. (etcd-client reports a
/// dropped lease as an error, which the keeper took for a silent member:
/// it kept renewing a dead lease every second, each time moving the
/// runner's connection to another member.)
#[test]
fn a_lease_etcd_dropped_is_known_lost_at_the_next_renewal_and_replaced() {
    let cluster = EtcdCluster::start(1);
    let ttl = Duration::from_secs(9);
    let a = store(&cluster, "dropped", "runner-a", ttl);
    let id = IncidentId::new("INC-1").unwrap();
    open(&a, &id);
    assert_eq!(a.claim(&id).unwrap(), Claim::Ours);
    a.lease_held().unwrap();
    revoke_all_leases(&cluster);
    let revoked = std::time::Instant::now();
    // Its clock alone would call the lease alive until 90% of 9 s.
    while a.lease_held().is_ok() {
        assert!(
            revoked.elapsed() < Duration::from_secs(6),
            "the runner still believes in a lease etcd dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = a.check_claim(&id).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert_eq!(a.claim(&id).unwrap(), Claim::Ours, "a new lease");
    a.check_claim(&id).unwrap();
    a.commit(&id, Expect::Version(0), Batch::new(checkpoint(1)))
        .unwrap();
}

/// A runner's commits compare on the checkpoint it committed last instead
/// of reading it first: a commit from anyone else in between (a human's
/// decision through another process) still makes its next commit a
/// conflict, and the next one after reading again lands.
#[test]
fn a_runner_that_remembers_its_checkpoint_still_sees_every_other_commit() {
    let cluster = EtcdCluster::start(1);
    let runner = store(&cluster, "remember", "runner-a", Duration::from_secs(5));
    let human = store(&cluster, "remember", "human-cli", Duration::from_secs(5));
    let id = IncidentId::new("INC-R").unwrap();
    open(&runner, &id);
    assert_eq!(runner.claim(&id).unwrap(), Claim::Ours);
    for version in 0..2 {
        runner
            .commit(
                &id,
                Expect::Version(version),
                Batch::new(checkpoint(version + 1)),
            )
            .unwrap();
    }
    // Reading back in the commit's transaction, under the claim.
    let mut batch = Batch::new(checkpoint(3));
    batch.put(keys::status(&id), &Status::Running);
    let wanted = keys::Group::new().with(&keys::status(&id));
    let read = runner
        .commit_and_read(&id, Expect::Version(2), batch, &wanted)
        .unwrap();
    assert_eq!(read, human.get_many(&wanted).unwrap());
    // Another process commits version 4 without a claim.
    human
        .commit(&id, Expect::Version(3), Batch::new(checkpoint(4)))
        .unwrap();
    // The runner still believes in version 3: refused, nothing written.
    let err = runner
        .commit(&id, Expect::Version(3), Batch::new(checkpoint(4)))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    // Even a commit naming the right version: its remembered revision is
    // gone, so it reads the checkpoint again and lands.
    runner
        .commit(&id, Expect::Version(4), Batch::new(checkpoint(5)))
        .unwrap();
    // Same again, the other process writing the very bytes the runner
    // would have: the revision moved, so the runner's compare fails.
    human
        .commit(&id, Expect::Version(5), Batch::new(checkpoint(6)))
        .unwrap();
    let err = runner
        .commit(&id, Expect::Version(5), Batch::new(checkpoint(6)))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(runner.version(&id).unwrap(), Some(6));
    // After a release and a new claim nothing is remembered from before.
    runner.release(&id).unwrap();
    assert_eq!(runner.claim(&id).unwrap(), Claim::Ours);
    runner
        .commit(&id, Expect::Version(6), Batch::new(checkpoint(7)))
        .unwrap();
    assert_eq!(human.version(&id).unwrap(), Some(7));
}

#[test]
fn commits_go_on_when_the_leader_dies() {
    let mut cluster = EtcdCluster::start(3);
    let s = Arc::new(store(&cluster, "ha", "r", Duration::from_secs(5)));
    let id = IncidentId::new("INC-1").unwrap();
    open(&*s, &id);
    let mut version = 0;
    for round in 0..3 {
        for _ in 0..20 {
            s.commit(
                &id,
                Expect::Version(version),
                Batch::new(checkpoint(version + 1)),
            )
            .unwrap_or_else(|e| panic!("round {round}, version {version}: {e}"));
            version += 1;
        }
        if round == 0 {
            let leader = cluster.leader().expect("a leader");
            cluster.kill(leader);
        }
    }
    assert_eq!(
        s.version(&id).unwrap(),
        Some(version),
        "no commit lost or doubled"
    );
}

/// Commits of 16 incidents at once go to etcd in groups (one request for
/// several); the leader dies while they do, so some groups' answers are
/// lost and settled by their commit ids. Every commit lands once.
#[test]
fn grouped_commits_land_once_when_the_leader_dies() {
    const INCIDENTS: usize = 16;
    const COMMITS: u64 = 40;
    let mut cluster = EtcdCluster::start(3);
    let s = Arc::new(store(&cluster, "groups", "r", Duration::from_secs(5)));
    let ids: Vec<IncidentId> = (0..INCIDENTS)
        .map(|i| IncidentId::new(format!("INC-{i}")).unwrap())
        .collect();
    for id in &ids {
        open(&*s, id);
    }
    let before = s.group_stats();
    let start = Arc::new(std::sync::Barrier::new(INCIDENTS + 1));
    let writers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (s, id, start) = (s.clone(), id.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for v in 0..COMMITS {
                    let mut batch = Batch::new(checkpoint(v + 1));
                    batch.kv(format!("commit-{v}"), Some(b"once".to_vec()));
                    s.commit(&id, Expect::Version(v), batch)
                        .unwrap_or_else(|e| panic!("{id} version {v}: {e}"));
                }
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_millis(150));
    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    for w in writers {
        w.join().expect("every commit lands");
    }
    for id in &ids {
        assert_eq!(s.version(id).unwrap(), Some(COMMITS), "{id}");
        assert_eq!(s.kv_scan(id).unwrap().len() as u64, COMMITS, "{id}");
    }
    let after = s.group_stats();
    let (commits, groups) = (after.commits - before.commits, after.groups - before.groups);
    assert_eq!(commits, INCIDENTS as u64 * COMMITS, "each commit sent once");
    assert!(
        groups < commits,
        "{commits} commits of {INCIDENTS} incidents at once went in {groups} requests"
    );
}

fn cli(dir: &std::path::Path, store: Option<&str>, args: &[&str]) -> (i32, String) {
    let mut cmd = crate::util::TestCommand::in_dir(dir);
    if let Some(store) = store {
        cmd.env("RUNBOX_STORE", store);
    }
    cmd.args(args).code()
}

/// A one-member cluster and a work dir holding `runbook.toml` = `text`.
fn one_member(text: &str) -> (EtcdCluster, tempfile::TempDir, String) {
    let cluster = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let rb = runbox_tests::write_file(dir.path(), "runbook.toml", text);
    (cluster, dir, rb.display().to_string())
}

#[test]
fn store_copy_moves_incidents_to_etcd_and_back_and_they_verify() {
    let (cluster, dir, rb) = one_member(&format!(
        "[runbook]\nname = \"c\"\n[[steps]]\nid = \"a\"\nmodule = \"{ok}\"\n[[steps]]\nid = \"b\"\nmodule = \"{ok}\"\n",
        ok = runbox_tests::fixture("engine/ok.wat").display()
    ));
    let d = dir.path();
    let rb = rb.as_str();
    for id in ["C-1", "C-2"] {
        assert_eq!(cli(d, None, &["open", id, "--runbook", rb]).0, 0);
    }
    assert_eq!(cli(d, None, &["run", "C-1"]).0, 0);
    let (_, token) = cli(d, None, &["token", "init"]);
    assert!(token.contains("rbx_"), "{token}");
    let url = cluster.url("copy");
    let data = d.join("data");
    let (code, text) = cli(d, None, &["store", "copy", data.to_str().unwrap(), &url]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("copied 2 incident(s)"), "{text}");
    for id in ["C-1", "C-2"] {
        let here = cli(d, None, &["export", id, "--format", "json"]).1;
        let there = cli(d, Some(&url), &["export", id, "--format", "json"]).1;
        assert_eq!(here, there, "{id} reads the same on etcd");
        assert_eq!(cli(d, Some(&url), &["verify", id]).0, 0);
    }
    // The copy runs on: C-2 resolves on etcd.
    let (code, text) = cli(d, Some(&url), &["run", "C-2"]);
    assert_eq!(code, 0, "{text}");
    // Copying again keeps what is there; copying back to a new data dir works.
    let (_, again) = cli(d, None, &["store", "copy", data.to_str().unwrap(), &url]);
    assert!(again.contains("kept 2 incident(s)"), "{again}");
    let back = d.join("back");
    let (code, text) = cli(d, None, &["store", "copy", &url, back.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let status = crate::util::TestCommand::new()
        .env("RUNBOX_DATA_DIR", &back)
        .env_remove("RUNBOX_STORE")
        .args(["status", "C-2", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["status"], "resolved", "{status}");
    // A bad address is a clear error.
    let (code, text) = cli(d, Some("etcd://nowhere"), &["list"]);
    assert_eq!(code, 2);
    assert!(text.contains("etcd://HOST:PORT"), "{text}");
}

#[test]
fn a_step_whose_commit_etcd_cannot_take_escalates_with_a_clear_error() {
    let (cluster, dir, rb) = one_member(&format!(
        "[runbook]\nname = \"big\"\n[[steps]]\nid = \"many\"\nmodule = \"{}\"\ngrants = {{ kv_write = [\"k*\"] }}\n",
        runbox_tests::fixture("fleet/many_keys.wat").display()
    ));
    let d = dir.path();
    let url = cluster.url("big");
    assert_eq!(cli(d, Some(&url), &["open", "B-1", "--runbook", &rb]).0, 0);
    let (code, text) = cli(d, Some(&url), &["run", "B-1"]);
    assert_eq!(code, 4, "escalated: {text}");
    assert!(
        text.contains("larger than the store takes") && text.contains("at most 128"),
        "{text}"
    );
    assert_eq!(
        cli(d, Some(&url), &["kv", "B-1"]).1.trim(),
        "{}",
        "no KV write landed"
    );
    assert_eq!(cli(d, Some(&url), &["verify", "B-1"]).0, 0);
}
