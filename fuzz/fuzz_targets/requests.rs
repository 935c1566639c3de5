#![no_main]
//! See `runbox_tests::fuzzing::requests` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = runbox_tests::fuzzing::requests(data) {
        panic!("invariant broken: {broken}");
    }
});
