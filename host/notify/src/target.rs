//! A sink made ready to send to: its URL and secret read from where
//! `notify.toml` says they are (a file, an environment variable), once, when
//! the deliverer starts, so a missing secret stops `serve` with its name
//! instead of failing every delivery later.

use std::fmt;
use std::path::Path;

use runbox_core::notify::{Sink, SinkKind, Source, check_url};

use crate::NotifyError;

/// The longest secret or URL file read: secrets are short.
pub const MAX_SECRET_BYTES: u64 = 4096;

/// A secret's bytes: never printed, never in a `Debug`.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A checked sink with its URL and secret in hand.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) sink: Sink,
    /// Where to send; a secret itself for Slack.
    pub(crate) url: Secret,
    /// The HMAC key (`webhook`) or the routing key (`pagerduty`).
    pub(crate) secret: Option<Secret>,
}

impl Target {
    /// Reads `sink`'s URL and secret; a relative file path is read from
    /// `dir` (the data dir, where `notify.toml` is).
    pub(crate) fn resolve(sink: &Sink, dir: &Path) -> Result<Target, NotifyError> {
        let url = read(sink, dir, "url", &sink.url)?;
        check_url(&url).map_err(|message| bad(sink, "url", &sink.url, message))?;
        let secret = match &sink.secret {
            Some(source) => Some(Secret(read(sink, dir, "secret", source)?)),
            None => None,
        };
        if sink.kind == SinkKind::Webhook && secret.as_ref().is_some_and(|s| s.0.len() < 16) {
            return Err(bad(
                sink,
                "secret",
                sink.secret.as_ref().unwrap_or(&sink.url),
                "an HMAC key of fewer than 16 bytes is guessable: use at least 32 random bytes"
                    .into(),
            ));
        }
        Ok(Target {
            sink: sink.clone(),
            url: Secret(url),
            secret,
        })
    }
}

fn read(sink: &Sink, dir: &Path, what: &str, source: &Source) -> Result<String, NotifyError> {
    let text = match source {
        Source::Inline(text) => text.clone(),
        Source::File(path) => runbox_core::files::read_capped(&dir.join(path), MAX_SECRET_BYTES)
            .map_err(|e| bad(sink, what, source, format!("cannot read it: {e}")))?,
        Source::Env(var) => std::env::var(var)
            .map_err(|e| bad(sink, what, source, format!("cannot read it: {e}")))?,
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(bad(sink, what, source, "it is empty".into()));
    }
    Ok(text)
}

fn bad(sink: &Sink, what: &str, source: &Source, message: String) -> NotifyError {
    NotifyError::Secret {
        origin: sink.origin.clone(),
        what: what.to_string(),
        source_name: source.to_string(),
        message,
    }
}
