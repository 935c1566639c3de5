#![no_main]
//! See `runbox_tests::fuzzing::component_driver` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = runbox_tests::fuzzing::component_driver(data) {
        panic!("invariant broken: {broken}");
    }
});
