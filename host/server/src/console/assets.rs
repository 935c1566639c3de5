//! The console's script and stylesheet, embedded in the binary and served
//! under a path that holds their content's hash, so a browser caches each
//! version for good and never runs a stale one after an upgrade.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

/// An embedded file.
pub(crate) struct Asset {
    /// Its file name.
    pub(crate) name: &'static str,
    /// Its `Content-Type`.
    pub(crate) content_type: &'static str,
    /// Its bytes.
    pub(crate) body: &'static str,
}

/// `console.js`: live updates and the passkey ceremonies.
pub(crate) const JS: &Asset = &Asset {
    name: "console.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("assets/console.js"),
};

/// `console.css`.
pub(crate) const CSS: &Asset = &Asset {
    name: "console.css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("assets/console.css"),
};

/// `live.js`: the shared worker that holds one stream of changes for all
/// of a browser's console tabs.
pub(crate) const LIVE: &Asset = &Asset {
    name: "live.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("assets/live.js"),
};

/// Every asset.
const ALL: [&Asset; 3] = [JS, CSS, LIVE];

/// The assets' content hash (the first 16 hex digits of their sha256).
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for a in ALL {
        h.update(a.body.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
});

/// Where `asset` is served.
pub(crate) fn url(asset: &Asset) -> String {
    format!("/ui/assets/{}/{}", *VERSION, asset.name)
}

/// The asset at `version`/`name`, if that is this build's.
pub(crate) fn find(version: &str, name: &str) -> Option<&'static Asset> {
    if version != *VERSION {
        return None;
    }
    ALL.into_iter().find(|a| a.name == name)
}
