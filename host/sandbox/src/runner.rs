//! Runs a tool call: argv from the registry, no shell, a cleared
//! environment, its own process group, a timeout and capped output.

use std::process::Stdio;
use std::time::{Duration, Instant};

use runbox_core::tools::{Shortfall, ToolAnswer, ToolError, ToolRegistry};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Runs tool `name` of `registry` with `args`, keeping at most `output_cap` bytes of each
/// stream (and never more than the tool's own cap).
pub async fn run(
    registry: &ToolRegistry,
    name: &str,
    args: &serde_json::Value,
    output_cap: u32,
) -> Result<ToolOutput, ToolError> {
    let argv = registry.argv(name, args)?;
    registry.check(name)?;
    let spec = registry
        .get(name)
        .ok_or_else(|| ToolError::Unknown(name.into()))?;
    let cap = output_cap.min(spec.output_bytes) as usize;
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(registry.base_dir())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group, so a timeout kills whatever the tool spawned.
        .process_group(0);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| ToolError::Spawn {
        tool: name.to_string(),
        program: argv[0].clone(),
        source,
    })?;
    // Kills the whole group if this future is dropped mid-run (the
    // attempt hit its own deadline), not just the direct child.
    let mut group = GroupGuard(child.id());
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let work = async {
        let (out, err, status) = tokio::join!(
            read_capped(stdout, cap),
            read_capped(stderr, cap),
            child.wait()
        );
        (out, err, status)
    };
    let timeout = Duration::from_millis(spec.timeout_ms);
    let outcome = tokio::time::timeout(timeout, work).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(((stdout, out_trunc), (stderr, err_trunc), status)) => {
            group.disarm();
            let rc = status.ok().and_then(|s| s.code()).unwrap_or(-1);
            Ok(ToolOutput {
                answer: ToolAnswer {
                    rc,
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                },
                shortfall: Shortfall {
                    truncated: out_trunc || err_trunc,
                    timed_out: false,
                },
                duration_ms,
            })
        }
        Err(_) => {
            drop(group);
            Ok(ToolOutput {
                answer: ToolAnswer {
                    rc: -1,
                    stdout: String::new(),
                    stderr: format!("tool `{name}` timed out after {} ms", spec.timeout_ms),
                },
                shortfall: Shortfall {
                    truncated: false,
                    timed_out: true,
                },
                duration_ms,
            })
        }
    }
}

/// What a tool run produced: its answer, in the one shape every answer has
/// ([`ToolAnswer`]: the exit code, -1 when killed by a signal or the
/// timeout, and both streams lossily decoded, each at most the cap), how it
/// fell short, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The answer.
    pub answer: ToolAnswer,
    /// Whether a stream was cut or the tool timed out.
    pub shortfall: Shortfall,
    /// Wall-clock duration.
    pub duration_ms: u64,
}

/// SIGKILLs a tool's process group when dropped, unless disarmed.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: killpg only sends a signal; the group was created for
            // this tool by `process_group(0)`, so it holds nothing of ours.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}

/// Reads a stream to its end, keeping the first `cap` bytes: the rest is
/// drained and dropped so the tool never blocks on a full pipe.
async fn read_capped(mut stream: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::{Path, PathBuf};

    #[tokio::test]
    async fn output_is_capped_and_marked_truncated() {
        let r = ToolRegistry::from_toml(
            "[tools.big]\nmode = \"read\"\nargv = [\"head\", \"-c\", \"100000\", \"/dev/zero\"]\n",
            Path::new("t"),
            PathBuf::from("/"),
        )
        .unwrap();
        let out = run(&r, "big", &json!({}), 1000).await.unwrap();
        assert_eq!(out.answer.rc, 0);
        assert_eq!(out.answer.stdout.len(), 1000);
        assert!(out.shortfall.truncated);
    }

    #[tokio::test]
    async fn cancelled_call_kills_the_tool_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let text = format!(
            "[tools.slow]\nmode = \"read\"\nargv = [\"sh\", \"-c\", \"(sleep 1; touch {}) & sleep 30\"]\n",
            marker.display()
        );
        let r = ToolRegistry::from_toml(&text, Path::new("t"), PathBuf::from("/")).unwrap();
        let args = json!({});
        let call = run(&r, "slow", &args, 1000);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), call)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "a grandchild outlived the cancelled call");
    }

    #[tokio::test]
    async fn timeout_kills_the_tool_and_its_children() {
        let r = ToolRegistry::from_toml(
            "[tools.slow]\nmode = \"read\"\nargv = [\"sh\", \"-c\", \"sleep 30 & sleep 30\"]\ntimeout_ms = 200\n",
            Path::new("t"),
            PathBuf::from("/"),
        )
        .unwrap();
        let started = Instant::now();
        let out = run(&r, "slow", &json!({}), 1000).await.unwrap();
        assert!(out.shortfall.timed_out);
        assert_eq!(out.answer.rc, -1);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
