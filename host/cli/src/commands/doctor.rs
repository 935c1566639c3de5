//! `runbox doctor`: checks a data dir (or an etcd store) as a new user
//! would want it checked, each check a line: the version and the store, who
//! may read the data dir and write `allowed_signers` and the token file,
//! the compiled-module cache, `routes.toml` and `notify.toml`, the clock
//! against etcd's, and what waits for a person (unrouted alerts, parked
//! notifications, engaged brakes). Read-only: it runs beside a server.
//! Exits 1 when a check fails, 0 otherwise (warnings included).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use runbox_core::time::now_ms;
use runbox_engine::Incidents;
use serde::Serialize;

use crate::context::Context;
use crate::output::outln;

/// A clock this far from etcd's is a warning: cooldowns, approval TTLs and
/// signed statements' times are read against it.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(2);
/// Unrouted alerts of this last stretch are worth a warning.
const RECENT_MS: u64 = 86_400_000;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The mutation token file to check (owner-only, as `token init --out`
    /// writes it).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print JSON: `[{"check", "level", "detail"}]`.
    #[arg(long)]
    json: bool,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    level: Level,
    detail: String,
}

fn finding(check: &'static str, level: Level, detail: impl Into<String>) -> Finding {
    Finding {
        check,
        level,
        detail: detail.into(),
    }
}

pub(crate) async fn run(args: Args, ctx: &Context) -> Result<ExitCode> {
    let mut found = vec![finding(
        "version",
        Level::Ok,
        format!("runbox {}", env!("CARGO_PKG_VERSION")),
    )];
    let dir = ctx.data_dir();
    found.push(data_dir(dir));
    found.push(match ctx.shared_store() {
        true => fleet_signers(ctx),
        false => signers(&ctx.signers_path()),
    });
    if let Some(path) = &args.token_file {
        found.push(token_file(path));
    }
    found.push(modules(&dir.join("modules")));
    found.push(match ctx.shared_store() {
        true => fleet_routes(ctx),
        false => routes(dir),
    });
    found.push(notify(ctx));
    match ctx.reader() {
        Ok(reader) => found.extend(store(&reader)),
        Err(e) => found.push(finding("store", Level::Fail, format!("{e:#}"))),
    }
    if let Some(endpoints) = ctx.etcd_endpoints() {
        found.push(clock(&endpoints).await);
    }
    report(&found, args.json)?;
    let failed = found.iter().any(|f| f.level == Level::Fail);
    Ok(ExitCode::from(u8::from(failed)))
}

fn report(found: &[Finding], json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(found)?);
        return Ok(());
    }
    for f in found {
        let level = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        outln!("{level} {}: {}", f.check, f.detail);
    }
    Ok(())
}

/// Who may read the data dir: its owner alone (`serve` makes it 0700).
fn data_dir(dir: &Path) -> Finding {
    owner_only(
        "data-dir",
        dir,
        "group or others can read incidents and token hashes (chmod 700 it)",
        Level::Warn,
    )
}

/// A finding on `path`, which no one but its owner may read: fails when
/// its mode lets group or others in, naming `risk`; `missing` when it
/// cannot be read at all.
fn owner_only(check: &'static str, path: &Path, risk: &str, missing: Level) -> Finding {
    match std::fs::metadata(path) {
        Ok(m) if m.mode() & 0o077 != 0 => finding(
            check,
            Level::Fail,
            format!("{} is mode {:o}: {risk}", path.display(), m.mode() & 0o777),
        ),
        Ok(_) => finding(check, Level::Ok, format!("{} (owner only)", path.display())),
        Err(e) => finding(check, missing, format!("{}: {e}", path.display())),
    }
}

/// On a store runners share, the humans are the store's fleet signers.
fn fleet_signers(ctx: &Context) -> Finding {
    let signers = ctx.reader().and_then(|r| Ok(r.signers()?));
    match signers {
        Err(e) => finding("allowed-signers", Level::Fail, format!("{e:#}")),
        Ok(s) if s.is_empty() => finding(
            "allowed-signers",
            Level::Warn,
            "the fleet has no human yet: no one can approve or take over (enroll the first with `runbox human add NAME KEY.pub` and the mutation token)",
        ),
        Ok(s) => finding(
            "allowed-signers",
            Level::Ok,
            format!(
                "{} key(s) in the store's fleet signers (`runbox human list`, `runbox timeline --fleet`)",
                s.entries().len()
            ),
        ),
    }
}

/// Who may write `allowed_signers`: whoever can adds a human who decides.
fn signers(path: &Path) -> Finding {
    match std::fs::metadata(path) {
        Err(_) => finding(
            "allowed-signers",
            Level::Warn,
            format!(
                "no {}: no human can approve or take over (runbox human add NAME --key KEY.pub)",
                path.display()
            ),
        ),
        Ok(m) if m.mode() & 0o022 != 0 => finding(
            "allowed-signers",
            Level::Fail,
            format!(
                "{} is mode {:o}: anyone in its group or beyond can add a human who decides (chmod 600 it)",
                path.display(),
                m.mode() & 0o777
            ),
        ),
        Ok(m) if Some(m.uid()) != my_uid() => finding(
            "allowed-signers",
            Level::Warn,
            format!(
                "{} belongs to uid {}, not to this user",
                path.display(),
                m.uid()
            ),
        ),
        Ok(_) => finding(
            "allowed-signers",
            Level::Ok,
            format!("{} (writable by its owner only)", path.display()),
        ),
    }
}

/// This process's uid: the owner of its `/proc/self`.
fn my_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The mutation token file: owner-only, like a private key.
fn token_file(path: &Path) -> Finding {
    owner_only(
        "token-file",
        path,
        "others can read the mutation token (chmod 600 it)",
        Level::Fail,
    )
}

/// The compiled-module cache: how many artifacts, how big.
fn modules(dir: &Path) -> Finding {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return finding(
            "module-cache",
            Level::Ok,
            format!("{}: none yet (steps compile on first use)", dir.display()),
        );
    };
    let (mut n, mut bytes) = (0u64, 0u64);
    for m in entries.flatten().filter_map(|e| e.metadata().ok()) {
        n += 1;
        bytes += m.len();
    }
    finding(
        "module-cache",
        Level::Ok,
        format!(
            "{}: {n} compiled module(s), {:.1} MiB",
            dir.display(),
            bytes as f64 / 1_048_576.0
        ),
    )
}

fn routes(dir: &Path) -> Finding {
    let path = dir.join(runbox_core::route::ROUTES_FILE);
    if !path.exists() {
        return finding(
            "routes",
            Level::Ok,
            "no routes.toml: every alert is unrouted",
        );
    }
    match runbox_core::route::Routes::load(&path) {
        Ok(_) => finding("routes", Level::Ok, path.display().to_string()),
        Err(e) => finding("routes", Level::Fail, e.to_string()),
    }
}

/// On a store runners share, the routes are the store's.
fn fleet_routes(ctx: &Context) -> Finding {
    let read = ctx.reader().and_then(|r| {
        let text = r.config_text(runbox_core::fleet_config::ConfigKind::Routes)?;
        Ok(runbox_incidents::config::routes_of(&text)?)
    });
    match read {
        Ok(routes) => finding(
            "routes",
            Level::Ok,
            format!(
                "{} route(s) in the store's fleet routes (`runbox alerts routes show`)",
                routes.iter().count()
            ),
        ),
        Err(e) => finding("routes", Level::Fail, format!("{e:#}")),
    }
}

fn notify(ctx: &Context) -> Finding {
    let routing = match ctx.notify_routing() {
        Ok(r) => r,
        Err(e) => return finding("notify", Level::Fail, format!("{e:#}")),
    };
    if routing.is_empty() {
        return finding(
            "notify",
            Level::Warn,
            "no notify.toml sinks: escalations reach nobody outside runbox",
        );
    }
    match runbox_notify::check(&routing, ctx.data_dir()) {
        Ok(()) => finding(
            "notify",
            Level::Ok,
            format!(
                "{} sink(s), every URL and secret readable",
                routing.sinks().len()
            ),
        ),
        Err(e) => finding("notify", Level::Fail, e.to_string()),
    }
}

/// What the store holds that waits for a person.
fn store(reader: &Incidents) -> Vec<Finding> {
    let tally = match reader.tally(usize::MAX) {
        Ok(t) => t,
        Err(e) => return vec![finding("store", Level::Fail, e.to_string())],
    };
    let incidents: usize = tally.incidents.values().sum();
    let deployment = match reader.deployment() {
        Ok(Some(id)) => format!("deployment {id}"),
        Ok(None) => "no deployment identity yet".into(),
        Err(e) => return vec![finding("store", Level::Fail, e.to_string())],
    };
    let mut found = vec![finding(
        "store",
        Level::Ok,
        format!("answers: {incidents} incident(s), {deployment}"),
    )];
    found.push(match tally.parked {
        0 => finding(
            "notifications",
            Level::Ok,
            format!("{} pending, none parked", tally.pending),
        ),
        n => finding(
            "notifications",
            Level::Warn,
            format!("{n} parked (out of tries): runbox notify list, then runbox notify retry"),
        ),
    });
    let since = now_ms().saturating_sub(RECENT_MS);
    found.push(match reader.unrouted_alerts() {
        Ok(alerts) => match alerts.iter().filter(|a| a.received_ms >= since).count() {
            0 => finding("alerts", Level::Ok, "no unrouted alert in the last day"),
            n => finding(
                "alerts",
                Level::Warn,
                format!("{n} unrouted alert group(s) in the last day: runbox alerts"),
            ),
        },
        Err(e) => finding("alerts", Level::Fail, e.to_string()),
    });
    found.push(match tally.brakes {
        0 => finding("brakes", Level::Ok, "none engaged"),
        n => finding(
            "brakes",
            Level::Warn,
            format!("{n} engaged: runbox brake list"),
        ),
    });
    found
}

/// This clock against each etcd member's (the `Date` of its HTTP answer,
/// to the second).
async fn clock(endpoints: &[String]) -> Finding {
    let mut worst: Option<(String, f64)> = None;
    for endpoint in endpoints {
        let Ok(Ok(theirs)) =
            tokio::time::timeout(Duration::from_secs(5), member_date(endpoint)).await
        else {
            continue;
        };
        let ours = SystemTime::now();
        let skew = match ours.duration_since(theirs) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        };
        if worst.as_ref().is_none_or(|(_, w)| skew.abs() > w.abs()) {
            worst = Some((endpoint.clone(), skew));
        }
    }
    match worst {
        None => finding("clock", Level::Warn, "no etcd member told its time"),
        // The Date header has whole seconds: a second of skew is noise.
        Some((member, skew)) if skew.abs() > MAX_SKEW.as_secs_f64() + 1.0 => finding(
            "clock",
            Level::Warn,
            format!(
                "{skew:+.0} s from {member}'s clock: cooldowns and approval TTLs read this one"
            ),
        ),
        Some((member, skew)) => finding(
            "clock",
            Level::Ok,
            format!("within {:.0} s of {member}'s clock", skew.abs().max(1.0)),
        ),
    }
}

/// The `Date` of an etcd member's answer to `GET /version`.
async fn member_date(endpoint: &str) -> Result<SystemTime> {
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/version")
        .header(hyper::header::HOST, &authority)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let answer = sender.send_request(request).await?;
    let date = answer
        .headers()
        .get(hyper::header::DATE)
        .ok_or_else(|| anyhow::anyhow!("{endpoint} sent no Date"))?
        .to_str()?;
    Ok(httpdate::parse_http_date(date)?)
}
