//! The fuzz targets on stable Rust, over seeded deterministic inputs, so CI
//! exercises them without nightly. Long campaigns: see `fuzz/README.md`.
//! Any failure here is a finding: keep the input as a regression test.

use runbox_tests::fuzzing::{DECISION_PARTS, abi_driver, decisions, parsers, smith_module};

fn inputs(seed: u64, count: usize, max_len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(move |_| {
        let len = rng.usize(0..=max_len);
        (0..len).map(|_| rng.u8(..)).collect()
    })
}

fn run_all(
    name: &str,
    target: fn(&[u8]) -> Result<(), String>,
    inputs: impl Iterator<Item = Vec<u8>>,
) {
    let mut ran = 0;
    for input in inputs {
        if let Err(e) = target(&input) {
            panic!(
                "{name}: invariant broken by input {}:\n{e}",
                hex::encode(&input)
            );
        }
        ran += 1;
    }
    println!("{name}: {ran} inputs");
}

#[test]
fn smith_modules_over_the_abi_never_break_the_host() {
    run_all("smith_module", smith_module, inputs(0xA11CE, 3000, 4096));
}

#[test]
fn abi_driver_programs_never_break_the_host() {
    run_all("abi_driver", abi_driver, inputs(0xD21BE2, 1500, 512));
}

/// Generated modules must mostly load and run, or the target tests only the validator.
#[test]
fn smith_modules_mostly_load_and_run() {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for input in inputs(0xBEEF, 600, 4096) {
        let key = match runbox_tests::fuzzing::smith_module_report(&input).unwrap() {
            None => "no module".to_string(),
            Some(r) => match (&r.error, r.step_outcome) {
                (Some(e), _) => e.category.as_str().to_string(),
                (None, Some(o)) => format!("finished {o}"),
                (None, None) => "?".into(),
            },
        };
        *seen.entry(key).or_default() += 1;
    }
    println!("{seen:#?}");
    let refused: usize = ["no module", "invalid-module", "denied-import"]
        .iter()
        .map(|k| seen.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(refused < 300, "most generated modules never ran: {seen:#?}");
}

/// The driver must reach the interesting paths, or the target tests nothing.
#[test]
fn abi_driver_reaches_grants_denials_limits_and_tools() {
    assert_driver_reaches(runbox_tests::fuzzing::abi_driver_report, 0xC0DE);
}

#[test]
fn component_driver_programs_never_break_the_host() {
    use runbox_tests::fuzzing::component_driver;
    run_all(
        "component_driver",
        component_driver,
        inputs(0xC0C0, 1500, 512),
    );
}

/// The component driver reaches the same paths through the canonical ABI.
#[test]
fn component_driver_reaches_grants_denials_limits_and_tools() {
    assert_driver_reaches(runbox_tests::fuzzing::component_driver_report, 0xC0DE);
}

/// Runs a driver over 1500 seeded programs: each path below was reached.
fn assert_driver_reaches(report_of: fn(&[u8]) -> runbox_sandbox::StepReport, seed: u64) {
    use runbox_sandbox::ErrorCategory as C;
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for input in inputs(seed, 1500, 512) {
        let report = report_of(&input);
        let mut see = |what| *seen.entry(what).or_default() += 1;
        if !report.kv_writes.is_empty() {
            see("kept KV write");
        }
        if !report.discarded_kv_writes.is_empty() {
            see("discarded KV write");
        }
        if !report.tool_calls.is_empty() {
            see("tool call");
        }
        for v in &report.violations {
            see(match v.category {
                C::DeniedKey => "denied key",
                C::DeniedTool => "denied tool",
                C::Limit => "limit violation",
                _ => "other violation",
            });
        }
        if let Some(e) = &report.error {
            see(e.category.as_str());
        }
        if report.step_outcome.is_some() {
            see("finished");
        }
    }
    println!("{seen:#?}");
    for path in [
        "kept KV write",
        "discarded KV write",
        "tool call",
        "denied key",
        "denied tool",
        "trap",
        "finished",
    ] {
        assert!(
            seen.get(path).copied().unwrap_or(0) > 0,
            "the driver never reached `{path}`: {seen:#?}"
        );
    }
}

/// `edits` random edits of `bytes`: a byte flipped, the tail cut, or one
/// of `punct` inserted, so inputs stay close to the valid seed.
fn mutate(rng: &mut fastrand::Rng, bytes: &mut Vec<u8>, edits: usize, punct: &[u8]) {
    for _ in 0..edits {
        match rng.u8(..3) {
            0 if !bytes.is_empty() => {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
            1 if !bytes.is_empty() => bytes.truncate(rng.usize(..bytes.len())),
            _ => {
                let i = rng.usize(..=bytes.len());
                bytes.insert(i, punct[rng.usize(..punct.len())]);
            }
        }
    }
}

/// Valid files with bytes flipped, cut and spliced: inputs that get past the
/// first few characters of each parser.
fn mutated_examples(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
    let root = runbox_tests::repo_root();
    let seeds: Vec<Vec<u8>> = [
        "examples/api-outage/runbook.toml",
        "examples/api-outage/tools.toml",
    ]
    .iter()
    .map(|p| std::fs::read(root.join(p)).unwrap())
    .chain([b"[grants]\nkv_read = [\"svc/{service}/*\"]\n[limits]\ntimeout_ms = 5\n".to_vec()])
    .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(move |_| {
        let mut bytes = seeds[rng.usize(..seeds.len())].clone();
        let edits = rng.usize(1..8);
        mutate(&mut rng, &mut bytes, edits, b"[]{}=\"\n,.*-_0");
        bytes
    })
}

#[test]
fn parsers_survive_arbitrary_and_mutated_input() {
    run_all(
        "parsers",
        parsers,
        inputs(0x9A25E, 1000, 512).chain(mutated_examples(0xF11E, 3000)),
    );
}

/// A real signed decision and its allowed_signers, then bytes flipped, cut
/// and spliced into each part.
fn mutated_decisions(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let humans = runbox_trust::testing::TestHumans::new(dir.path().join("allowed_signers"));
    let mut statement = runbox_trust::Statement::new(
        runbox_trust::Action::Approve,
        "alice",
        std::time::Duration::from_secs(60),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    statement.incident = Some("INC-7".into());
    statement.step = Some("restart".into());
    statement.attempt = Some(1);
    let decision = humans.sign("alice", &statement.to_text());
    let signers = std::fs::read_to_string(humans.path()).unwrap();
    let real = format!(
        "{}{DECISION_PARTS}{}{DECISION_PARTS}{signers}",
        decision.statement, decision.signature
    );
    assert!(decisions(real.as_bytes()).is_ok());
    let list = runbox_trust::AllowedSigners::parse(&signers, std::path::Path::new("s")).unwrap();
    assert!(list.verify(&decision).is_ok(), "the seed verifies");
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(move |_| {
        let mut bytes = real.clone().into_bytes();
        for _ in 0..rng.usize(1..6) {
            let i = rng.usize(..bytes.len());
            match rng.u8(..3) {
                0 => bytes[i] = rng.u8(..),
                1 => bytes.truncate(i),
                _ => {
                    const PUNCT: &[u8] = b"{}\",:=-+/ \n";
                    bytes.insert(i, PUNCT[rng.usize(..PUNCT.len())]);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        bytes
    })
}

#[test]
fn decision_parsers_survive_arbitrary_and_mutated_input() {
    run_all(
        "decisions",
        decisions,
        inputs(0xDEC1, 1000, 512).chain(mutated_decisions(0x5167, 2000)),
    );
}

/// Valid requests for each route, mutated: bodies that get past the JSON
/// parser and into the service's checks.
fn mutated_requests(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
    use runbox_tests::fuzzing::REQUEST_ROUTES;
    let bodies: Vec<&str> = vec![
        r#"{"runbook": "ok", "id": "INC-1"}"#,
        r#"{}"#,
        r#"{"statement": "runbox.decision/v1\naction approve\n", "signature": "-----BEGIN SSH SIGNATURE-----\n"}"#,
        r#"{"action": "approve", "signer": "alice", "step": "one"}"#,
        r#"{"text": "a note"}"#,
        r#"{"reason": "unsure"}"#,
        "",
        r#"{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "0"}}}"#,
    ];
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(move |_| {
        let route = rng.usize(..REQUEST_ROUTES.len());
        let mut bytes = bodies[route].as_bytes().to_vec();
        let edits = rng.usize(0..6);
        mutate(&mut rng, &mut bytes, edits, b"[]{}:\"\n,0-tnf\\");
        let mut input = vec![route as u8];
        input.extend(bytes);
        input
    })
}

#[test]
fn requests_through_the_service_layer_never_break_the_server() {
    use runbox_tests::fuzzing::requests;
    run_all("requests (random)", requests, inputs(0x5EB7E, 600, 512));
    run_all(
        "requests (mutated)",
        requests,
        mutated_requests(0xB0D1E5, 1200),
    );
}
