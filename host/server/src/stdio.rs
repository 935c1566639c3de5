//! MCP's stdio transport, as JSON-RPC 2.0 asks of a line that is not JSON:
//! an answer with `-32700` (parse error) and a `null` id, where rmcp drops
//! such a line unanswered and the client waits for nothing. Lines that are
//! JSON go on to rmcp unchanged; its answers and ours reach stdout whole,
//! one line at a time.
//!
//! The answers are rate-limited ([`PARSE_ERRORS_PER_SECOND`]): a peer that
//! answers our error with more garbage cannot start an error storm (the
//! reason rmcp stays silent), and past the limit a bad line is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// The longest line read from stdin; a longer one is answered `-32700`
/// and skipped. (rmcp's own cap is larger; this one bounds our buffer.)
pub(crate) const MAX_LINE_BYTES: usize = 16 << 20;

/// Parse errors answered per second at most.
pub(crate) const PARSE_ERRORS_PER_SECOND: u32 = 10;

/// Copies `input` to `to_server` line by line, answering each line that is
/// not JSON on `output` instead; ends when `input` does.
pub(crate) async fn filter_input(
    input: impl AsyncRead + Unpin,
    mut to_server: impl AsyncWrite + Unpin,
    output: Arc<Mutex<dyn AsyncWrite + Send + Unpin>>,
) -> std::io::Result<()> {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    let mut limit = Limit::new();
    loop {
        line.clear();
        let n = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return to_server.shutdown().await;
        }
        let whole = line.last() == Some(&b'\n');
        if !whole && n > MAX_LINE_BYTES {
            skip_rest_of_line(&mut input).await?;
            answer(&output, &mut limit, "the line is longer than 16 MiB").await?;
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            Ok(_) => {
                to_server.write_all(text).await?;
                to_server.write_all(b"\n").await?;
                to_server.flush().await?;
            }
            Err(e) => answer(&output, &mut limit, &e.to_string()).await?,
        }
    }
}

/// Copies the server's lines to `output`, each whole.
pub(crate) async fn relay_output(
    from_server: impl AsyncRead + Unpin,
    output: Arc<Mutex<dyn AsyncWrite + Send + Unpin>>,
) -> std::io::Result<()> {
    let mut lines = BufReader::new(from_server);
    let mut line = Vec::new();
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let mut out = output.lock().await;
        out.write_all(&line).await?;
        out.flush().await?;
    }
}

async fn skip_rest_of_line(input: &mut (impl AsyncBufReadExt + Unpin)) -> std::io::Result<()> {
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                input.consume(len);
            }
        }
    }
}

/// Writes one `-32700` answer, unless the limit is spent.
async fn answer(
    output: &Mutex<dyn AsyncWrite + Send + Unpin>,
    limit: &mut Limit,
    why: &str,
) -> std::io::Result<()> {
    if !limit.take() {
        tracing::debug!(
            why,
            "an unparsable MCP line, past the answer limit: dropped"
        );
        return Ok(());
    }
    let error = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32700, "message": format!("Parse error: {why}")},
    });
    let mut out = output.lock().await;
    out.write_all(format!("{error}\n").as_bytes()).await?;
    out.flush().await
}

/// [`PARSE_ERRORS_PER_SECOND`], counted per whole second.
struct Limit {
    window: Instant,
    used: u32,
}

impl Limit {
    fn new() -> Self {
        Limit {
            window: Instant::now(),
            used: 0,
        }
    }

    fn take(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used = 0;
        }
        self.used += 1;
        self.used <= PARSE_ERRORS_PER_SECOND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `input` through the filter: what reached the server, and what
    /// was answered.
    async fn filtered(input: &[u8]) -> (String, String) {
        let (to_server, mut server_side) = tokio::io::duplex(1 << 16);
        let output: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let writer: Arc<Mutex<dyn AsyncWrite + Send + Unpin>> = output.clone();
        filter_input(input, to_server, writer).await.unwrap();
        let mut passed = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server_side, &mut passed)
            .await
            .unwrap();
        let answered = String::from_utf8(output.lock().await.clone()).unwrap();
        (passed, answered)
    }

    #[tokio::test]
    async fn a_line_that_is_not_json_is_answered_minus_32700_and_json_passes() {
        let (passed, answered) =
            filtered(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\nnot json\n\n[1,\n")
                .await;
        assert_eq!(
            passed,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n"
        );
        let answers: Vec<serde_json::Value> = answered
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(answers.len(), 2, "{answered}");
        for a in &answers {
            assert_eq!(a["error"]["code"], -32700);
            assert_eq!(a["id"], serde_json::Value::Null);
        }
    }

    #[tokio::test]
    async fn a_flood_of_bad_lines_gets_at_most_the_limit_of_answers() {
        let flood = "x\n".repeat(1000);
        let (_, answered) = filtered(flood.as_bytes()).await;
        assert_eq!(answered.lines().count(), PARSE_ERRORS_PER_SECOND as usize);
    }

    #[tokio::test]
    async fn a_line_past_the_cap_is_answered_and_the_next_one_passes() {
        let mut input = vec![b'['; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\n{}\n");
        let (passed, answered) = filtered(&input).await;
        assert_eq!(passed, "{}\n");
        assert!(answered.contains("longer than 16 MiB"), "{answered}");
    }
}
