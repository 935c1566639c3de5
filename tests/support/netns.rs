//! Network namespaces a test builds for itself, so it can cut and slow the
//! links between runners and etcd members (issue 29): one namespace per
//! node, each with one veth link to a bridge in a hub namespace, where the
//! test's own commands run. Every address (10.77.0.0/24) lives inside these
//! namespaces; nothing touches the machine's own network, and dropping the
//! [`Net`] deletes them all (a crashed test's are deleted by the next).
//!
//! Faults, each undone by [`Net::heal`]:
//! - [`Net::cut`]: the node's link goes down on the hub side. Both ends go
//!   silent, as in a real partition: no reset, no error, packets vanish.
//! - [`Net::degrade`]: a token bucket (`tc tbf`) caps the node's bandwidth
//!   and an `nft` rule drops a share of its packets both ways. This kernel
//!   has no `sch_netem` (checked by [`Net::missing`]'s caller at run time
//!   through `tc`), so latency comes from the queue and retransmissions,
//!   not from a fixed delay.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The subnet inside the namespaces; the hub's bridge is `.1`.
const SUBNET: &str = "10.77.0";
// `Net::hub_addr` is `{SUBNET}.1`.

/// Namespaces made by this process, so each [`Net`] has its own names.
static MADE: AtomicU32 = AtomicU32::new(0);

/// Namespaces and links for a set of named nodes.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    nodes: Vec<Node>,
}

/// A node: its namespace, its address and its link's hub end.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name (`m0`, `r1`).
    pub name: String,
    /// Its address inside the namespaces.
    pub addr: String,
    ns: String,
    /// The veth end in the hub, attached to the bridge.
    link: String,
}

/// Runs `ip ARGS` and fails naming the command and what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{program}` does not run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// What this machine lacks for namespaces and link faults (`None`
    /// when it has all of it): root, `ip`, `tc`, `nft`, and a kernel that
    /// lets this process make a namespace.
    pub fn missing() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("network namespaces need root".into());
        }
        for (program, package) in [("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")] {
            if Command::new(program)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                return Some(format!("`{program}` is missing (Debian: {package})"));
            }
        }
        let probe = format!("rb{}p", std::process::id());
        if let Err(e) = ip(&["netns", "add", &probe]) {
            return Some(format!("this kernel or container refuses a namespace: {e}"));
        }
        let _ = ip(&["netns", "del", &probe]);
        None
    }

    /// Makes a namespace per node in `names` and links each to the hub.
    pub fn create(names: &[&str]) -> Result<Net, String> {
        remove_stale();
        let prefix = format!(
            "rb{}{}",
            std::process::id(),
            char::from(b'a' + (MADE.fetch_add(1, Ordering::Relaxed) % 26) as u8)
        );
        let mut net = Net {
            prefix,
            nodes: Vec::new(),
        };
        let hub = net.hub_ns();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let node = Node {
                name: (*name).to_string(),
                addr: format!("{SUBNET}.{}", 10 + i),
                ns: format!("{}-{name}", net.prefix),
                link: format!("{}{name}", net.prefix),
            };
            net.link(&node)?;
            net.nodes.push(node);
        }
        Ok(net)
    }

    fn hub_ns(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    fn link(&self, node: &Node) -> Result<(), String> {
        let hub = self.hub_ns();
        ip(&["netns", "add", &node.ns])?;
        ip(&["-n", &node.ns, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &node.link, "netns", &hub, "type", "veth", "peer", "name", "eth0",
            "netns", &node.ns,
        ])?;
        ip(&["-n", &hub, "link", "set", &node.link, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &node.ns,
            "addr",
            "add",
            &format!("{}/24", node.addr),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &node.ns, "link", "set", "eth0", "up"])
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node `{name}` in this net"))
    }

    /// The hub's address, which every node reaches.
    pub fn hub_addr() -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 77, 0, 1)
    }

    /// Runs `f` on a thread inside the hub: a socket it opens (a receiver
    /// the nodes call) lives there after the thread ends.
    pub fn in_hub<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        let path = format!("/run/netns/{}", self.hub_ns());
        let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns moves only this thread, which ends here.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| "the hub's thread panicked".to_string())?
        })
    }

    /// Makes `cmd` start inside the hub, which reaches every node.
    pub fn enter_hub(&self, cmd: &mut Command) {
        enter(cmd, &self.hub_ns());
    }

    /// Makes `cmd` start inside `node`'s namespace.
    pub fn enter(&self, node: &str, cmd: &mut Command) {
        enter(cmd, &self.node(node).ns);
    }

    /// Cuts `node` off: its link goes down at the hub, silently for both.
    pub fn cut(&self, node: &str) -> Result<(), String> {
        ip(&[
            "-n",
            &self.hub_ns(),
            "link",
            "set",
            &self.node(node).link,
            "down",
        ])
    }

    /// Slows `node`'s link to `kbit` kbit/s and drops `loss_pct`% of its
    /// packets each way.
    pub fn degrade(&self, node: &str, kbit: u32, loss_pct: u32) -> Result<(), String> {
        let ns = &self.node(node).ns;
        let rate = format!("{kbit}kbit");
        run(
            "ip",
            &[
                "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                "rate", &rate, "burst", "8kb", "latency", "500ms",
            ],
        )?;
        let rules = format!(
            "table inet runbox_fault {{\n chain out {{ type filter hook output priority 0; numgen random mod 100 < {loss_pct} drop; }}\n chain in {{ type filter hook input priority 0; numgen random mod 100 < {loss_pct} drop; }}\n}}\n"
        );
        let rules_file = std::env::temp_dir().join(format!("{}-{node}.nft", self.prefix));
        std::fs::write(&rules_file, rules).map_err(|e| format!("nft rules: {e}"))?;
        let applied = run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "nft",
                "-f",
                &rules_file.display().to_string(),
            ],
        );
        let _ = std::fs::remove_file(&rules_file);
        applied
    }

    /// Undoes every fault on `node`'s link.
    pub fn heal(&self, node: &str) -> Result<(), String> {
        let n = self.node(node);
        // Each undo may find nothing to undo; only the link must come up.
        let _ = run(
            "ip",
            &[
                "netns", "exec", &n.ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ],
        );
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                &n.ns,
                "nft",
                "delete",
                "table",
                "inet",
                "runbox_fault",
            ],
        );
        ip(&["-n", &self.hub_ns(), "link", "set", &n.link, "up"])
    }
}

/// Adds a `setns` into the namespace `ns` to `cmd`, done in the child
/// before it runs the program.
fn enter(cmd: &mut Command, ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: the closure only calls setns, which is async-signal-safe, on
    // a descriptor it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Deletes namespaces a test process that has died left behind.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("rb") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = ip(&["netns", "del", &node.ns]);
        }
        let _ = ip(&["netns", "del", &self.hub_ns()]);
    }
}
