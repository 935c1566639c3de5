//! Real etcd clusters on loopback for the tests: free ports, a temp data
//! dir per member, a unique cluster token each time, members killed by pid
//! and everything removed when the cluster is dropped (or, for a member
//! left behind by a crashed test process, when that process dies).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A cluster of `etcd` members (Debian `etcd-server`).
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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
        let mut last_log = String::new();
        for _ in 0..3 {
            let cluster = Self::try_start(n);
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

    fn try_start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut salt = [0u8; 6];
        for b in &mut salt {
            *b = fastrand::u8(..);
        }
        let token = format!("runbox-test-{}-{}", std::process::id(), hex::encode(salt));
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            dir,
            token,
            members,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
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
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
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
        self.members[i].child = Some(cmd.spawn().expect("etcd runs (Debian: etcd-server)"));
    }

    /// The store address of the whole cluster, keys under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}/{prefix}", hosts.join(","))
    }

    /// `http://127.0.0.1:PORT` of each member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
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
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints=http://127.0.0.1:{}", m.client))
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
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect();
        while Instant::now() < deadline {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
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
