//! `/healthz` and `/readyz`. Health says the process answers; readiness
//! says it can do its work, and why not: the store answers, the lease its
//! claims are held under is alive (a store several runners share), and the
//! control socket humans decide through is bound (a data dir this process
//! owns).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use runbox_store::Store;
use serde::Serialize;

/// One check of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `store`, `lease` or `control-socket`.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// Why not, or what was checked.
    pub detail: String,
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ready {
    /// Every check holds.
    pub ready: bool,
    /// Each check.
    pub checks: Vec<Check>,
}

/// What readiness is checked against.
pub struct Readiness {
    store: Arc<dyn Store>,
    /// The control socket, once this process tried to bind it: where, or
    /// why it could not. Unset: this process owns no data dir (etcd).
    control: OnceLock<Result<PathBuf, String>>,
}

impl Readiness {
    /// Readiness over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Readiness {
            store,
            control: OnceLock::new(),
        }
    }

    /// Notes where the control socket was bound, or why it was not.
    pub fn control_socket(&self, bound: Result<PathBuf, String>) {
        let _ = self.control.set(bound);
    }

    /// Runs every check.
    pub fn check(&self) -> Ready {
        let mut checks = vec![
            match self.store.meta_get("ping") {
                Ok(_) => pass("store", "answers"),
                Err(e) => fail("store", e.to_string()),
            },
            match self.store.lease_held() {
                Ok(()) => pass("lease", "held where claims need it"),
                Err(why) => fail("lease", why),
            },
        ];
        if let Some(control) = self.control.get() {
            checks.push(match control {
                Ok(path) if path.exists() => pass("control-socket", path.display().to_string()),
                Ok(path) => fail("control-socket", format!("{} is gone", path.display())),
                Err(why) => fail("control-socket", why.clone()),
            });
        }
        Ready {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        detail: detail.into(),
    }
}

fn fail(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        detail: detail.into(),
    }
}

/// What every listener of runbox answers without a token: `/healthz`,
/// `/readyz` and, when metrics are on, `/metrics`.
#[derive(Clone)]
pub struct Ops {
    /// The readiness checks.
    pub readiness: Arc<Readiness>,
    /// The metrics, when exported.
    pub metrics: Option<Arc<crate::metrics::Exposition>>,
}

/// `/healthz`, `/readyz` and `/metrics` over `ops`: merged into `serve`'s
/// router, and served alone by `--metrics-listen`.
pub fn router<S: Clone + Send + Sync + 'static>(ops: Ops) -> axum::Router<S> {
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "ok": true }))
}

async fn readyz(axum::extract::State(ops): axum::extract::State<Ops>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ready = tokio::task::spawn_blocking(move || ops.readiness.check()).await;
    match ready {
        Ok(ready) if ready.ready => axum::Json(ready).into_response(),
        Ok(ready) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(ready),
        )
            .into_response(),
        Err(e) => crate::ServiceError::new(
            crate::ErrorCode::Internal,
            format!("the readiness checks stopped: {e}"),
        )
        .into_response(),
    }
}

async fn metrics(axum::extract::State(ops): axum::extract::State<Ops>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(exposition) = &ops.metrics else {
        return crate::ServiceError::new(
            crate::ErrorCode::NotFound,
            "metrics are off in this process",
        )
        .into_response();
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        exposition.render(),
    )
        .into_response()
}

/// Serves `/healthz`, `/readyz` and `/metrics` alone on `listener` (`run
/// --follow` and `mcp` with `--metrics-listen`), until SIGINT or SIGTERM.
pub async fn serve(listener: tokio::net::TcpListener, ops: Ops) -> std::io::Result<()> {
    let app = router(ops).fallback(|| async {
        use axum::response::IntoResponse;
        crate::ServiceError::new(
            crate::ErrorCode::NotFound,
            "no such route: /healthz, /readyz, /metrics",
        )
        .into_response()
    });
    crate::http::serve_app(listener, app, None).await
}
