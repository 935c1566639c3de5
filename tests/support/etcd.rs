//! Real etcd clusters on loopback for the tests: free ports, a temp data
//! dir per member, a unique cluster token each time, members killed by pid
//! and everything removed when the cluster is dropped (or, for a member
//! left behind by a crashed test process, when that process dies). A
//! cluster may instead live in network namespaces ([`EtcdCluster::start_in`]),
//! a member per namespace, so a test can cut and slow their links.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::netns::Net;

/// A cluster of `etcd` members (Debian `etcd-server`).
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
    /// The namespaces the members live in, when they do: member `mI` in
    /// node `mI`, and the cluster's own `etcdctl` calls in the hub.
    net: Option<Arc<Net>>,
}

struct Member {
    name: String,
    host: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer)
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The runtime the tests' in-process etcd stores run on: an `EtcdStore`
/// runs its client on the runtime it was connected on, which must outlive
/// it, and this one lives as long as the test process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Runtime::new().expect("the tests' etcd runtime starts")
    });
    &RUNTIME
}

/// Whether the tests can start etcd here.
pub fn available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers. A cluster
    /// that does not come up (a port taken between choosing and binding
    /// it, by a test starting its own cluster at the same moment) is
    /// started again on fresh ports, up to three times.
    pub fn start(n: usize) -> Self {
        Self::start_on(n, None)
    }

    /// Starts `n` members in `net`, member `mI` in its node `mI` (on the
    /// node's address, etcd's usual ports), and waits until they answer.
    pub fn start_in(net: Arc<Net>, n: usize) -> Self {
        Self::start_on(n, Some(net))
    }

    fn start_on(n: usize, net: Option<Arc<Net>>) -> Self {
        let mut last_log = String::new();
        for _ in 0..3 {
            let cluster = Self::try_start(n, net.clone());
            if cluster.healthy_within(Duration::from_secs(30)) {
                return cluster;
            }
            last_log = std::fs::read_to_string(cluster.log_dir().join("m0.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n");
        }
        panic!("etcd did not become healthy three times; m0's last lines:\n{last_log}");
    }

    fn try_start(n: usize, net: Option<Arc<Net>>) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut salt = [0u8; 6];
        for b in &mut salt {
            *b = fastrand::u8(..);
        }
        let token = format!("runbox-test-{}-{}", std::process::id(), hex::encode(salt));
        let members = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                match &net {
                    // A namespace of its own: no port is taken there.
                    Some(net) => Member {
                        host: net.node(&name).addr.clone(),
                        name,
                        client: 2379,
                        peer: 2380,
                        child: None,
                    },
                    None => Member {
                        name,
                        host: "127.0.0.1".into(),
                        client: free_port(),
                        peer: free_port(),
                        child: None,
                    },
                }
            })
            .collect();
        let mut cluster = EtcdCluster {
            dir,
            token,
            members,
            net,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("a log file");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(initial)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg(state)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log);
        // SAFETY: prctl only sets this child's parent-death signal: a
        // member never outlives the test process that started it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        if let Some(net) = &self.net {
            net.enter(&m.name, &mut cmd);
        }
        self.members[i].child = Some(cmd.spawn().expect("etcd runs (Debian: etcd-server)"));
    }

    /// The store address of the whole cluster, keys under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}:{}", m.host, m.client))
            .collect();
        format!("etcd://{}/{prefix}", hosts.join(","))
    }

    /// `http://HOST:PORT` of each member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// `etcdctl` (API v3), started where it reaches every member.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3");
        if let Some(net) = &self.net {
            net.enter_hub(&mut cmd);
        }
        cmd
    }

    /// The name of member `i` (`mI`), its node in the namespaces.
    pub fn member_name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
    }

    /// The index of the member that leads now, if one does.
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let out = self
                .etcdctl()
                .arg(format!("--endpoints={}", m.client_url()))
                .args(["endpoint", "status", "-w", "json"])
                .output()
                .ok()?;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let s = &status[0]["Status"];
            if s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"] {
                return Some(i);
            }
        }
        None
    }

    /// Whether every live member says it is healthy within `within`.
    pub fn healthy_within(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::client_url)
            .collect();
        while Instant::now() < deadline {
            let ok = self
                .etcdctl()
                .arg(format!("--endpoints={}", live.join(",")))
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Where the members' logs are.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
