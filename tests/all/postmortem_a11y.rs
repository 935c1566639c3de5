//! The HTML postmortem as a keyboard, a screen reader or a phone meets it:
//! axe-core, run inside headless Chromium, finds no serious or critical
//! violation, and at 420 px the page does not scroll sideways. The tests
//! leave screenshots at desktop (1400 px) and phone (420 px) width in
//! `<target dir>/screenshots/` (each run replaces them) and print where.
//!
//! Chromium's `--dump-dom` carries the results out: a copy of the page
//! runs axe on itself and writes what it found into its own DOM. Headless
//! Chromium will not make a window narrower than 500 px, so the phone
//! width is an iframe of 420 px in a page that copies the frame's results
//! out.

use std::path::{Path, PathBuf};

use runbox_core::records::{RecordOutcome, Status};
use runbox_store_rocksdb::RocksStore;
use runbox_tests::forge::{Attempt, Forge};
use runbox_tests::target_dir;
use serde_json::Value;

use super::postmortem::{assert_not_blank, chromium_with, hostile_incident, ok};

/// The phone's width, the issue's.
const PHONE_PX: u64 = 420;

/// axe-core, which `scripts/bootstrap.sh --tests` installs beside the
/// target dir.
fn axe_js() -> String {
    let target = target_dir();
    let path = PathBuf::from(format!(
        "{}-axe/node_modules/axe-core/axe.min.js",
        target.display()
    ));
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; scripts/bootstrap.sh --tests installs axe-core",
            path.display()
        )
    })
}

/// The script the probe page runs: axe over the whole page, then the
/// violations and the page's scroll width as JSON in `#runbox-probe`.
const PROBE_JS: &str = r#"
function runboxProbe(found) {
  var pre = document.createElement('pre');
  pre.id = 'runbox-probe';
  found.scrollWidth = document.scrollingElement.scrollWidth;
  found.innerWidth = window.innerWidth;
  pre.textContent = JSON.stringify(found);
  document.body.appendChild(pre);
}
axe.run(document, { resultTypes: ['violations'] }).then(function (r) {
  runboxProbe({ violations: r.violations.map(function (v) {
    return { id: v.id, impact: v.impact, help: v.help,
             nodes: v.nodes.slice(0, 5).map(function (n) { return n.target.join(' ') + ': ' + n.failureSummary; }) };
  }) });
}, function (e) { runboxProbe({ error: String(e) }); });
"#;

/// Copies the iframe's `#runbox-probe` into this page once it is there.
const PHONE_JS: &str = r#"
(function poll() {
  var d = document.getElementById('phone').contentDocument;
  var r = d && d.getElementById('runbox-probe');
  if (!r) { setTimeout(poll, 100); return; }
  var pre = document.createElement('pre');
  pre.id = 'runbox-probe';
  pre.textContent = r.textContent;
  document.body.appendChild(pre);
})();
"#;

/// A copy of the page that runs axe on itself. The page's own
/// Content-Security-Policy (rightly) forbids any script, so the copy
/// leaves it out.
fn probe_page(html: &str, axe: &str) -> String {
    let csp_start = html
        .find("<meta http-equiv=\"Content-Security-Policy\"")
        .expect("the page has a CSP");
    let csp_end = csp_start + html[csp_start..].find('>').unwrap() + 1;
    let without_csp = format!("{}{}", &html[..csp_start], &html[csp_end..]);
    let at = without_csp.rfind("</body>").expect("a body");
    format!(
        "{}<script>{axe}</script><script>{PROBE_JS}</script>{}",
        &without_csp[..at],
        &without_csp[at..]
    )
}

/// A page showing `src` in a phone-wide frame.
fn phone_page(src: &str, script: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{PHONE_PX} px</title></head>\
         <body style=\"margin:0;background:#555\">\
         <iframe id=\"phone\" title=\"the postmortem at {PHONE_PX} px\" src=\"{src}\" \
         style=\"display:block;border:0;background:#fff;width:{PHONE_PX}px;height:1400px\"></iframe>\
         <script>{script}</script></body></html>"
    )
}

/// What the probe wrote into the DOM Chromium dumped.
fn probe_result(dom: &str) -> Value {
    let start = dom
        .find("<pre id=\"runbox-probe\">")
        .unwrap_or_else(|| panic!("no probe result in the DOM: {}", tail(dom)))
        + "<pre id=\"runbox-probe\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("probe JSON: {e}: {text}"))
}

fn tail(s: &str) -> &str {
    &s[s.len().saturating_sub(2000)..]
}

/// Runs Chromium on `page` at `window` with `args` and long enough for
/// axe to finish (virtual time runs on while scripts are busy).
fn dump(dir: &Path, page: &Path, window: &str, args: &[&str]) -> String {
    let window = format!("--window-size={window}");
    let mut all = vec![window.as_str(), "--virtual-time-budget=60000"];
    all.extend(args);
    all.push("--dump-dom");
    chromium_with(dir, page, &all)
}

/// Violations that are serious or critical, one line each.
fn serious(found: &Value, width: &str) -> Vec<String> {
    assert!(found["error"].is_null(), "axe failed at {width}: {found}");
    let all = found["violations"].as_array().expect("violations");
    for v in all {
        eprintln!(
            "axe at {width}: {} ({}): {}",
            v["id"], v["impact"], v["help"]
        );
    }
    all.iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .map(|v| {
            format!(
                "{} ({}): {} at {}",
                v["id"], v["impact"], v["help"], v["nodes"]
            )
        })
        .collect()
}

/// Checks the postmortem `html` of `name` at desktop and phone width and
/// leaves screenshots of both in `dir`.
fn check_page(dir: &Path, name: &str, html: &str) {
    let page = dir.join(format!("{name}.html"));
    std::fs::write(&page, html).unwrap();
    let probe = dir.join(format!("{name}-probe.html"));
    std::fs::write(&probe, probe_page(html, &axe_js())).unwrap();

    let desktop = probe_result(&dump(dir, &probe, "1400,1000", &[]));
    let mut problems = serious(&desktop, "1400 px");

    let phone = dir.join(format!("{name}-phone-probe.html"));
    std::fs::write(&phone, phone_page(&format!("{name}-probe.html"), PHONE_JS)).unwrap();
    let narrow = probe_result(&dump(
        dir,
        &phone,
        "500,1400",
        &["--allow-file-access-from-files"],
    ));
    assert_eq!(
        narrow["innerWidth"], PHONE_PX,
        "the frame is phone-wide: {narrow}"
    );
    problems.extend(serious(&narrow, "420 px"));
    assert!(
        problems.is_empty(),
        "{name}: axe-core found:\n{}",
        problems.join("\n")
    );
    let scroll = narrow["scrollWidth"].as_u64().unwrap();
    assert!(
        scroll <= PHONE_PX,
        "{name} scrolls sideways at {PHONE_PX} px: {scroll} px wide"
    );

    screenshots(dir, name, &page);
}

/// The page at desktop and phone width, as PNGs in the target dir's
/// `screenshots/`, where they outlive the test's temporary dir.
fn screenshots(dir: &Path, name: &str, page: &Path) {
    let shots = target_dir().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let desktop = shots.join(format!("{name}-1400.png"));
    let shot = format!("--screenshot={}", desktop.display());
    chromium_with(dir, page, &["--window-size=1400,1400", &shot]);
    assert_not_blank(&desktop);
    let view = dir.join(format!("{name}-phone.html"));
    let file_name = page.file_name().unwrap().to_string_lossy();
    std::fs::write(&view, phone_page(&file_name, "")).unwrap();
    let phone = shots.join(format!("{name}-{PHONE_PX}.png"));
    let shot = format!("--screenshot={}", phone.display());
    chromium_with(dir, &view, &["--window-size=500,1400", &shot]);
    assert_not_blank(&phone);
    eprintln!("screenshots: {} and {}", desktop.display(), phone.display());
}

#[test]
fn a_real_postmortem_passes_axe_and_fits_a_phone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    hostile_incident(d);
    let html = ok(d, &["export", "INC-1", "--format", "html"]);
    // The retry badge was a contrast failure (escalate's is in the other test).
    assert!(html.contains("badge outcome-retry"));
    for landmark in ["<header>", "<nav ", "<main>"] {
        assert!(html.contains(landmark), "landmark {landmark}");
    }
    assert!(
        html.contains("<time datetime="),
        "times are kept on one line"
    );
    check_page(d, "INC-1", &html);
}

/// A 10-minute incident of millisecond steps, of every outcome: every
/// attempt is drawn wide enough to see and every group of them has a
/// label; the axis ticks every minute; every outcome's badge is legible.
#[test]
fn a_long_incident_of_short_steps_has_labelled_bars_and_round_ticks() {
    const T0: u64 = 1_790_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    {
        let store = RocksStore::open(&d.join("data")).unwrap();
        let mut f = Forge::open(&store, "SHORT-1", "api", T0);
        for n in 0..200u32 {
            let t = T0 + u64::from(n) * 3_000;
            let all = RecordOutcome::ALL;
            let outcome = all[n as usize % all.len()];
            f.attempt(Attempt {
                step: "probe",
                attempt: n + 1,
                outcome,
                span: (t, t + 2),
                tool: None,
                error: None,
                human: None,
            });
        }
        f.end(Status::Resolved, T0 + 600_000);
        f.finish();
    }
    let html = ok(d, &["export", "SHORT-1", "--format", "html"]);
    let widths: Vec<f64> = html
        .split("<rect class=\"attempt ")
        .skip(1)
        .map(|r| {
            let w = &r[r.find(" width=\"").unwrap() + 8..];
            w[..w.find('"').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(widths.len(), 200, "one bar per attempt");
    assert!(widths.iter().all(|w| *w >= 4.0), "no sliver: {widths:?}");
    let labels = html.matches("class=\"attempt-label\"").count();
    let groups = html.matches("class=\"attempt-group\"").count();
    assert!(
        labels >= groups && groups > 0,
        "{groups} groups, {labels} labels"
    );
    for tick in ["+1m<", "+5m<", "+10m<"] {
        assert!(html.contains(tick), "a tick at {tick}");
    }
    assert!(!html.contains("+1m39s"));
    for o in RecordOutcome::ALL {
        assert!(
            html.contains(&format!("badge outcome-{o}")),
            "a badge of {o}"
        );
    }
    check_page(d, "SHORT-1", &html);
}
