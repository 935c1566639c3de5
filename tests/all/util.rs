//! The one way these tests start the `runbox` binary (wasmtime's
//! `get_wasmtime_command`, ripgrep's `Dir` and `TestCommand`): the real
//! binary cargo built for this package, through [`TestCommand`], in a
//! test's own [`Dir`] when it has one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `runbox` binary under test.
const RUNBOX: &str = env!("CARGO_BIN_EXE_runbox");

/// Where the `runbox` binary is (for scripts and harnesses that take a path).
pub(crate) fn runbox_path() -> &'static Path {
    Path::new(RUNBOX)
}

/// One `runbox` command line. It starts with none of the settings a
/// developer's shell may hold (`RUNBOX_MUTATION_TOKEN`, `RUNBOX_STORE`), so
/// a test has exactly what it gives the command.
#[derive(Debug)]
pub(crate) struct TestCommand {
    cmd: Command,
}

impl TestCommand {
    /// `runbox`, with no arguments yet.
    pub(crate) fn new() -> Self {
        let mut cmd = Command::new(RUNBOX);
        cmd.env_remove("RUNBOX_MUTATION_TOKEN")
            .env_remove("RUNBOX_STORE");
        TestCommand { cmd }
    }

    /// `runbox` on the data dir `data`.
    pub(crate) fn on(data: &Path) -> Self {
        let mut c = Self::new();
        c.env("RUNBOX_DATA_DIR", data);
        c
    }

    /// `runbox` working in `dir`, on its data dir `dir/data`.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        let mut c = Self::on(&dir.join("data"));
        c.current_dir(dir);
        c
    }

    pub(crate) fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &mut self,
        args: I,
    ) -> &mut Self {
        self.cmd.args(args);
        self
    }

    pub(crate) fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    pub(crate) fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env_remove(key);
        self
    }

    pub(crate) fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cmd.current_dir(dir);
        self
    }

    pub(crate) fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.cmd.stdin(cfg);
        self
    }

    pub(crate) fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.cmd.stdout(cfg);
        self
    }

    pub(crate) fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.cmd.stderr(cfg);
        self
    }

    /// The command as std has it, for what this harness does not wrap.
    pub(crate) fn cmd(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Runs it to the end; what it printed and how it exited.
    pub(crate) fn output(&mut self) -> std::io::Result<Output> {
        self.cmd.output()
    }

    /// Starts it.
    pub(crate) fn spawn(&mut self) -> std::io::Result<Child> {
        self.cmd.spawn()
    }

    /// Its stdout; it must succeed (the failure names its stderr).
    pub(crate) fn ok(&mut self) -> String {
        let out = self.output().expect("runbox starts");
        assert!(
            out.status.success(),
            "{:?}: {}{}",
            self.cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Its exit code and everything it printed (stdout, then stderr).
    pub(crate) fn code(&mut self) -> (i32, String) {
        runbox_tests::code_and_text(&self.output().expect("runbox starts"))
    }

    /// The command as std has it, for the shared support code that takes
    /// one (`runbox_tests::human_key_by`).
    pub(crate) fn into_command(self) -> Command {
        self.cmd
    }

    /// The same command for tokio, to await or to hand to a client that
    /// speaks to its stdio.
    pub(crate) fn tokio(self) -> tokio::process::Command {
        tokio::process::Command::from(self.cmd)
    }
}

/// A test's own directory, removed when the test ends: the files it
/// writes, and in `data` the data dir its commands run on.
#[derive(Debug)]
pub(crate) struct Dir {
    root: tempfile::TempDir,
}

impl Dir {
    pub(crate) fn new() -> Self {
        Dir {
            root: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.root.path()
    }

    /// Its data dir, `data`.
    pub(crate) fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Writes `contents` to `name` in it, making the directories on the
    /// way; the file's path.
    pub(crate) fn create(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a directory");
        }
        std::fs::write(&path, contents).expect("a file");
        path
    }

    /// `runbox` working here, on the data dir ([`TestCommand::in_dir`]).
    pub(crate) fn command(&self) -> TestCommand {
        TestCommand::in_dir(self.path())
    }
}

/// A child process killed when the test ends, however it ends (`runbox
/// serve`, Alertmanager).
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd`, a `runbox serve --listen 127.0.0.1:0 …`, and reads the
/// line it prints once it listens: the server and its base URL, or what it
/// said when it would not start. What it logs afterwards is echoed (a
/// closed pipe would fail its next log line).
pub(crate) fn start_serve(cmd: &mut TestCommand) -> Result<(Server, String), String> {
    use std::io::{BufRead, Read};
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).map_err(|e| e.to_string())?;
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        let status = child.wait().map_err(|e| e.to_string())?;
        return Err(format!("{status}: {line}{rest}"));
    };
    let url = url.to_string();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("serve: {line}");
        }
    });
    Ok((Server(child), url))
}

/// Requires `bin` on the PATH (`bin --version` succeeds); the test fails,
/// never skips, naming the Debian package that `scripts/bootstrap.sh
/// --tests` installs it from.
pub(crate) fn require_bin(bin: &'static str, package: &str) -> &'static str {
    let found = Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{bin}` is not installed: run `scripts/bootstrap.sh --tests` (Debian package {package})"
    );
    bin
}

/// Opens incident `id` with `runbook` on the `runbox serve` at `url` and
/// runs its step through the HTTP API, sending `headers` with the run; the
/// run's answer. Both must succeed.
pub(crate) async fn open_and_run(
    url: &str,
    token: &str,
    (runbook, id): (&str, &str),
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let http = reqwest::Client::new();
    let open = http
        .post(format!("{url}/v1/incidents"))
        .bearer_auth(token)
        .json(&serde_json::json!({"runbook": runbook, "id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 201, "{}", open.text().await.unwrap());
    let mut run = http
        .post(format!("{url}/v1/incidents/{id}/steps:run"))
        .bearer_auth(token)
        .json(&serde_json::json!({}));
    for (name, value) in headers {
        run = run.header(*name, *value);
    }
    let run = run.send().await.unwrap();
    assert_eq!(run.status(), 200);
    run.json().await.unwrap()
}

/// A tool `scripts/bootstrap.sh --tests` installs beside the target dir
/// (`suffix` is its path under `TARGET-…`); the test fails naming the
/// bootstrap command when it is missing.
pub(crate) fn bootstrap_tool(suffix: &str, flag: &str) -> std::path::PathBuf {
    let target = runbox_tests::target_dir();
    let tool = std::path::PathBuf::from(format!("{}{suffix}", target.display()));
    assert!(
        tool.exists(),
        "{} is missing: run scripts/bootstrap.sh {flag} (or --tests)",
        tool.display()
    );
    tool
}

/// The data dir and runbooks of an incident that runs one step and
/// escalates: `runbooks/page.toml`.
pub(crate) fn escalating_world() -> Dir {
    let dir = Dir::new();
    dir.create(
        "runbooks/page.toml",
        &format!(
            "[runbook]\nname = \"page\"\n[[steps]]\nid = \"look\"\nmodule = \"{}\"\non = {{ ok = \"escalate\" }}\n",
            runbox_tests::fixture("engine/ok.wat").display()
        ),
    );
    dir
}

/// `cmd` (a `runbox` command, with whatever environment the test gives it)
/// run as `serve` on `dir/data` and `dir/runbooks`, with an agent `bot`
/// that may run steps: the server, its URL and the agent's token.
pub(crate) fn serve_with_agent(mut cmd: TestCommand, dir: &Path) -> (Server, String, String) {
    let data = dir.join("data");
    let token = TestCommand::on(&data)
        .args(["agent", "add", "bot", "--can", "run"])
        .ok()
        .trim()
        .to_string();
    let (serve, url) = start_serve(
        cmd.env("RUNBOX_DATA_DIR", &data)
            .args(["serve", "--listen", "127.0.0.1:0", "--runbooks"])
            .arg(dir.join("runbooks")),
    )
    .unwrap();
    (serve, url, token)
}
