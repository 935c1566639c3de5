//! `run --all --follow`: a runner that keeps working, for a store several
//! runners share. It polls for incidents an agent may run, runs each one
//! no runner holds, and goes back to one when it changes (a human decided,
//! a runner that held it gave it up or lapsed).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runbox_core::ident::IncidentId;
use tracing::{info, warn};

use crate::run::Runs;
use crate::{Result, RunExit, RunOptions};
use runbox_incidents::parse_id;

/// What a follow loop calls with each run that stopped (its incident and
/// how the run ended).
pub type OnStop = Arc<dyn Fn(&str, &Result<RunExit>) + Send + Sync>;

/// Remembers where a run stopped, unless it should be tried again at once.
fn settle(
    id: &IncidentId,
    version: u64,
    exit: &Result<RunExit>,
    settled: &mut HashMap<IncidentId, u64>,
) {
    match exit {
        Ok(RunExit::Elsewhere { .. } | RunExit::Waiting { .. }) => {
            settled.remove(id);
        }
        Ok(_) => {
            settled.insert(id.clone(), version);
        }
        // The store failed or fenced this runner out: try again.
        Err(e @ crate::EngineError::Store(_)) => {
            warn!(incident = %id, "run stopped: {e}");
            settled.remove(id);
        }
        // Anything else needs a change to the incident first.
        Err(e) => {
            warn!(incident = %id, "run stopped: {e}");
            settled.insert(id.clone(), version);
        }
    }
}

impl Runs<'_> {
    /// Runs incidents as they become runnable, every `poll`, until `stop`
    /// completes; then waits for the runs under way. An incident whose run
    /// stopped is run again only once its checkpoint moved, or when it
    /// stopped because another runner held it, a wait, or an error.
    pub async fn follow(
        self,
        opts: &RunOptions,
        poll: Duration,
        on_stop: OnStop,
        stop: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(stop);
        let mut running = tokio::task::JoinSet::new();
        let mut busy: HashSet<IncidentId> = HashSet::new();
        // The checkpoint version a settled run stopped at.
        let mut settled: HashMap<IncidentId, u64> = HashMap::new();
        loop {
            for id in self.engine.runnable()? {
                let id = parse_id(&id)?;
                if busy.contains(&id) {
                    continue;
                }
                let version = self
                    .engine
                    .incidents
                    .version_of(id.as_str())
                    .unwrap_or_default();
                if settled.get(&id) == Some(&version) {
                    continue;
                }
                busy.insert(id.clone());
                let (engine, opts) = (self.engine.clone(), opts.clone());
                running.spawn(async move {
                    let exit = engine.runs().run(id.as_str(), &opts).await;
                    let version = engine
                        .incidents()
                        .version_of(id.as_str())
                        .unwrap_or_default();
                    (id, version, exit)
                });
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(poll) => {}
                Some(done) = running.join_next() => {
                    if let Ok((id, version, exit)) = done {
                        settle(&id, version, &exit, &mut settled);
                        on_stop(id.as_str(), &exit);
                        busy.remove(&id);
                    }
                }
            }
            while let Some(done) = running.try_join_next() {
                if let Ok((id, version, exit)) = done {
                    settle(&id, version, &exit, &mut settled);
                    on_stop(id.as_str(), &exit);
                    busy.remove(&id);
                }
            }
        }
        info!("stopping: waiting for {} run(s) under way", running.len());
        while let Some(done) = running.join_next().await {
            if let Ok((id, _, exit)) = done {
                on_stop(id.as_str(), &exit);
            }
        }
        Ok(())
    }
}
