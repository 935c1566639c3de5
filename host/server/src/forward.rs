//! `runbox mcp` beside the process that owns the data dir (`serve`, `run`,
//! another `mcp`): instead of exiting "in use", it forwards the client's
//! JSON-RPC lines to the owner's MCP endpoint on the control socket
//! ([`crate::control`], `/mcp`, MCP's streamable HTTP), and the owner's
//! answers back to stdout. The agent acts there as it would here: its
//! name, and `mutate` only with the owner's own mutation token.
//!
//! Protocol-agnostic by design: each line is one POST, answered with JSON
//! or a stream of events (a listen subscription's updates ride it), and
//! after `initialize` the session's own stream carries what the server
//! sends outside a request (legacy resource updates). Lines that are not
//! JSON are answered `-32700` here ([`crate::stdio`]).

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use crate::error::{ErrorCode, ServiceError};
use runbox_core::sync::lock;

/// The header naming the agent a forwarded session acts as.
pub const AGENT_HEADER: &str = "x-runbox-agent";
/// The header carrying the forwarder's mutation token, if it holds one.
pub const TOKEN_HEADER: &str = "x-runbox-mutation-token";
/// The header asking for a read-only session (`runbox mcp --read-only`).
pub const READ_ONLY_HEADER: &str = "x-runbox-read-only";
/// Where the owner serves MCP on its control socket.
pub const MCP_PATH: &str = "/mcp";

/// Who the forwarded agent is.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The agent's name.
    pub agent: String,
    /// The mutation token this process holds, if any.
    pub token: Option<String>,
    /// `--read-only`: the agent may only read.
    pub read_only: bool,
}

type Output = Arc<Mutex<dyn AsyncWrite + Send + Unpin>>;

/// The forwarding session: where to, as whom, and what the owner said.
struct Session {
    data_dir: PathBuf,
    who: Forwarded,
    /// `Mcp-Session-Id` and `MCP-Protocol-Version` from `initialize`.
    id: std::sync::Mutex<Option<String>>,
    version: std::sync::Mutex<Option<String>>,
    out: Output,
}

/// Forwards stdin to the owner of `data_dir` and its answers to stdout
/// until stdin ends.
pub async fn forward_stdio(data_dir: PathBuf, who: Forwarded) -> Result<(), ServiceError> {
    let stdout: Output = Arc::new(Mutex::new(tokio::io::stdout()));
    let (lines_in, lines_out) = tokio::io::duplex(1 << 16);
    let filter = tokio::spawn(crate::stdio::filter_input(
        tokio::io::stdin(),
        lines_in,
        stdout.clone(),
    ));
    let session = Arc::new(Session {
        data_dir,
        who,
        id: std::sync::Mutex::new(None),
        version: std::sync::Mutex::new(None),
        out: stdout,
    });
    let mut lines = BufReader::new(lines_out).lines();
    while let Some(line) = lines.next_line().await.map_err(io_error)? {
        let message: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if message["method"] == "initialize" {
            // Its answer names the session every later message belongs to.
            session.post(line, &message).await;
            let me = session.clone();
            tokio::spawn(async move { me.listen().await });
        } else {
            let me = session.clone();
            tokio::spawn(async move { me.post(line, &message).await });
        }
    }
    filter.abort();
    session.close().await;
    Ok(())
}

fn io_error(e: std::io::Error) -> ServiceError {
    ServiceError::new(ErrorCode::Unavailable, format!("MCP forwarding: {e}"))
}

impl Session {
    /// A request to the owner's `/mcp`, or why one cannot be made (a
    /// token or session id that is not a header value).
    /// A message on protocol 2026-07-28 names its version in `_meta`, and
    /// the HTTP transport wants it as `MCP-Protocol-Version`; earlier ones
    /// carry the version `initialize` answered.
    fn request(
        &self,
        method: hyper::Method,
        body: Bytes,
        message: &serde_json::Value,
    ) -> Result<hyper::Request<Full<Bytes>>, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(MCP_PATH)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header(AGENT_HEADER, &self.who.agent);
        if let Some(token) = &self.who.token {
            request = request.header(TOKEN_HEADER, token);
        }
        if self.who.read_only {
            request = request.header(READ_ONLY_HEADER, "true");
        }
        if let Some(id) = lock(&self.id).as_deref() {
            request = request.header("mcp-session-id", id);
        }
        for (name, value) in standard_headers(message) {
            request = request.header(name, value);
        }
        let own = message["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"].as_str();
        if let Some(version) = own.or(lock(&self.version).as_deref()) {
            request = request.header("mcp-protocol-version", version);
        }
        request
            .body(Full::new(body))
            .map_err(|e| format!("cannot forward: {e}"))
    }

    /// POSTs one message and relays its answer; a failure answers the
    /// message's request, if it was one, with an error naming it.
    async fn post(&self, line: String, message: &serde_json::Value) {
        let sent = match self.request(hyper::Method::POST, Bytes::from(line), message) {
            Ok(request) => self.exchange(request).await,
            Err(e) => Err(e),
        };
        let failed = match sent {
            Ok(response) => self.relay(response, message).await.err(),
            Err(e) => Some(e),
        };
        // Only a request (it has a method and an id) waits for an answer.
        if let (Some(why), Some(id), Some(_)) = (failed, message.get("id"), message.get("method")) {
            let error = serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {"code": -32603, "message": why},
            });
            self.write(&error.to_string()).await;
        }
    }

    async fn exchange(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let stream = crate::control::connect(&self.data_dir).await.map_err(|e| {
            format!(
                "the owner of {} does not answer on its control socket: {e}",
                self.data_dir.display()
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("the owner's control socket: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("the owner's control socket: {e}"))
    }

    /// Writes the answer's messages to stdout: a JSON body, or each
    /// event's data of a stream, as it comes.
    async fn relay(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
        message: &serde_json::Value,
    ) -> Result<(), String> {
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(id) = header("mcp-session-id") {
            *lock(&self.id) = Some(id);
        }
        let events = header("content-type").is_some_and(|t| t.starts_with("text/event-stream"));
        let body = response.into_body();
        if status == hyper::StatusCode::ACCEPTED {
            return Ok(());
        }
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            // A JSON-RPC answer (a protocol error) goes to the client as it
            // is; anything else (runbox's own refusal) is said for it.
            let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if answer.get("jsonrpc").is_some() {
                self.write(&answer.to_string()).await;
                return Ok(());
            }
            return Err(format!(
                "the owner refused with HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        if !events {
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            let text = String::from_utf8_lossy(&bytes);
            self.note_version(message, &text);
            self.write(text.trim()).await;
            return Ok(());
        }
        let mut frames = body.into_data_stream();
        // Bytes, not text, until an event is whole: a chunk may end inside
        // a character.
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = frames.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            pending.extend(chunk.iter().filter(|&&b| b != b'\r'));
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                if let Some(data) = event_data(&String::from_utf8_lossy(&event)) {
                    self.note_version(message, &data);
                    self.write(&data).await;
                }
            }
        }
        Ok(())
    }

    /// Keeps the protocol version `initialize` answered, for the header
    /// every later request carries.
    fn note_version(&self, message: &serde_json::Value, answer: &str) {
        if message["method"] != "initialize" {
            return;
        }
        let answer: serde_json::Value = serde_json::from_str(answer).unwrap_or_default();
        if let Some(version) = answer["result"]["protocolVersion"].as_str() {
            *lock(&self.version) = Some(version.to_string());
        }
    }

    /// The session's own stream (what the owner sends outside a request),
    /// relayed until the session ends. An owner without one says 405.
    async fn listen(&self) {
        if lock(&self.id).is_none() {
            return;
        }
        let Ok(request) = self.request(hyper::Method::GET, Bytes::new(), &serde_json::Value::Null)
        else {
            return;
        };
        if let Ok(response) = self.exchange(request).await {
            let _ = self.relay(response, &serde_json::Value::Null).await;
        }
    }

    /// Ends the session at the owner.
    async fn close(&self) {
        if lock(&self.id).is_some()
            && let Ok(request) = self.request(
                hyper::Method::DELETE,
                Bytes::new(),
                &serde_json::Value::Null,
            )
        {
            let _ = self.exchange(request).await;
        }
    }

    async fn write(&self, line: &str) {
        if line.is_empty() {
            return;
        }
        let mut out = self.out.lock().await;
        let _ = out.write_all(format!("{line}\n").as_bytes()).await;
        let _ = out.flush().await;
    }
}

/// The headers protocol 2026-07-28 wants of a message sent over HTTP
/// (SEP-2243), so a proxy routes it without reading the body: its method,
/// and the tool, prompt or resource it names (in Base64 when it is not
/// plain printable ASCII).
fn standard_headers(message: &serde_json::Value) -> Vec<(&'static str, String)> {
    let Some(method) = message["method"].as_str() else {
        return Vec::new();
    };
    let mut headers = vec![("mcp-method", method.to_string())];
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return headers,
    };
    if let Some(name) = message["params"][key].as_str() {
        headers.push(("mcp-name", header_value(name)));
    }
    headers
}

/// `value` as an `Mcp-Name` value: itself, or `=?base64?…?=`.
fn header_value(value: &str) -> String {
    use base64::Engine as _;
    let printable = value.bytes().all(|b| (0x20..=0x7e).contains(&b));
    let padded = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
    let sentinel = value.starts_with("=?base64?") && value.ends_with("?=");
    if printable && !padded && !sentinel {
        value.to_string()
    } else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        format!("=?base64?{encoded}?=")
    }
}

/// The data of one server-sent event (its `data:` lines joined), if any.
fn event_data(event: &str) -> Option<String> {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    (!data.is_empty() && data.iter().any(|d| !d.is_empty())).then(|| data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_names_its_method_and_what_it_calls_in_headers() {
        let call = serde_json::json!({"method": "tools/call", "params": {"name": "get_incident"}});
        assert_eq!(
            standard_headers(&call),
            [
                ("mcp-method", "tools/call".to_string()),
                ("mcp-name", "get_incident".to_string())
            ]
        );
        let read = serde_json::json!({"method": "resources/read", "params": {"uri": "runbox://incidents/Ü"}});
        assert_eq!(
            standard_headers(&read)[1].1,
            "=?base64?cnVuYm94Oi8vaW5jaWRlbnRzL8Oc?="
        );
        assert!(standard_headers(&serde_json::json!({"id": 1, "result": {}})).is_empty());
    }

    #[test]
    fn an_event_s_data_lines_are_its_message() {
        assert_eq!(
            event_data("id: 3\nevent: message\ndata: {\"a\":1}\n\n").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(event_data(": keep-alive\n\n"), None);
        assert_eq!(event_data("id: 0\ndata:\n\n"), None);
    }
}
