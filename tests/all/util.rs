//! The one way these tests start the `runbox` binary (wasmtime's
//! `get_wasmtime_command`): the real binary cargo built for this package.

use std::path::Path;
use std::process::Command;

/// The `runbox` binary under test.
pub(crate) const RUNBOX: &str = env!("CARGO_BIN_EXE_runbox");

/// A command running `runbox`, with no arguments yet.
pub(crate) fn runbox() -> Command {
    Command::new(RUNBOX)
}

/// Where the `runbox` binary is (for scripts and harnesses that take a path).
pub(crate) fn runbox_path() -> &'static Path {
    Path::new(RUNBOX)
}

/// A child process killed when the test ends, however it ends (`runbox
/// serve`, Alertmanager).
pub(crate) struct Server(pub(crate) std::process::Child);

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
pub(crate) fn start_serve(cmd: &mut Command) -> Result<(Server, String), String> {
    use std::io::{BufRead, Read};
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
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

/// `runbox ARGS` on the data dir `data`, without the mutation token; its
/// stdout. The command must succeed (its stderr is the failure's message).
pub(crate) fn runbox_ok(data: &Path, args: &[&str]) -> String {
    let out = runbox()
        .env("RUNBOX_DATA_DIR", data)
        .env_remove("RUNBOX_MUTATION_TOKEN")
        .args(args)
        .output()
        .expect("runbox starts");
    assert!(
        out.status.success(),
        "runbox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
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
pub(crate) fn escalating_world() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    runbox_tests::write_file(
        &dir.path().join("runbooks"),
        "page.toml",
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
pub(crate) fn serve_with_agent(mut cmd: Command, dir: &Path) -> (Server, String, String) {
    let data = dir.join("data");
    let token = runbox_ok(&data, &["agent", "add", "bot", "--can", "run"])
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
