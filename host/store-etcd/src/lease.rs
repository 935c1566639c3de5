//! The runner's lease: granted once, renewed in the background, and known
//! to have lapsed locally before etcd says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runbox_core::sync::lock;
use tokio::sync::Mutex;

use crate::Conn;

/// A lease this process holds its claims under.
pub struct Lease {
    id: i64,
    ttl: Duration,
    /// Until when the lease surely lives: the last renewal's send time plus
    /// its TTL. Past it, this process acts as if it had lost the lease.
    valid_until: std::sync::Mutex<Instant>,
    lost: AtomicBool,
    /// Serialises renewals.
    renewing: Mutex<()>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

impl Lease {
    pub(crate) async fn grant(conn: Arc<Conn>, ttl_s: i64) -> Result<Lease, etcd_client::Error> {
        let sent = Instant::now();
        let mut client = conn.client().await?;
        let granted = client.lease_grant(ttl_s, None).await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        Ok(Lease {
            id: granted.id(),
            ttl,
            valid_until: std::sync::Mutex::new(sent + ttl),
            lost: AtomicBool::new(false),
            renewing: Mutex::new(()),
        })
    }

    /// The lease's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Whether it surely still lives: renewed within its TTL, with a margin
    /// for the call in flight.
    pub fn alive(&self) -> bool {
        let until = *lock(&self.valid_until);
        !self.lost.load(Ordering::Relaxed) && Instant::now() + self.ttl / 10 < until
    }

    /// Renews the lease every third of its TTL until it is lost; moves to
    /// another member when one stops answering. Runs on the store's runtime.
    pub(crate) async fn keep_alive(self: Arc<Self>, conn: Arc<Conn>) {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            if self.lost.load(Ordering::Relaxed) {
                return;
            }
            let renewed = self.renew(&conn).await;
            runbox_telemetry::lease_renewal(renewed.is_ok());
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    runbox_telemetry::lease_lapse();
                    tracing::warn!(
                        lease = self.id,
                        "the runner's lease expired: its claims are gone"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        lease = self.id,
                        "lease renewal failed ({e}); trying another member"
                    );
                    conn.next().await;
                }
            }
        }
    }

    /// One renewal; `false` when etcd says the lease is gone.
    pub(crate) async fn renew(&self, conn: &Conn) -> Result<bool, etcd_client::Error> {
        let _one = self.renewing.lock().await;
        let sent = Instant::now();
        let mut client = conn.client().await?;
        let (mut keeper, mut stream) = match client.lease_keep_alive(self.id).await {
            Ok(open) => open,
            Err(e) if gone(&e) => {
                self.lost.store(true, Ordering::Relaxed);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        keeper.keep_alive().await?;
        let Some(answer) = stream.message().await? else {
            return Err(etcd_client::Error::LeaseKeepAliveError(
                "the keep-alive stream ended".into(),
            ));
        };
        if answer.ttl() <= 0 {
            self.lost.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        let until = sent + Duration::from_secs(answer.ttl() as u64);
        *lock(&self.valid_until) = until;
        Ok(true)
    }

    /// Revokes it: the claims under it go at once.
    pub(crate) async fn revoke(&self, conn: &Conn) {
        self.lost.store(true, Ordering::Relaxed);
        if let Ok(mut client) = conn.client().await {
            let _ = client.lease_revoke(self.id).await;
        }
    }
}

/// Whether `e` is etcd saying the lease is gone rather than a member not
/// answering. etcd-client reads the stream's first answer itself and turns
/// a TTL of 0 into `LeaseKeepAliveError("lease not found")`; treated as a
/// failed renewal, it kept a keeper of a dead lease retrying every second
/// and moving the runner's connection to another member each time (found
/// by the campaign's slow links).
fn gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(message) => message == "lease not found",
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::NotFound,
        _ => false,
    }
}
