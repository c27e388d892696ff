//! What the property-test modules share: one runner that keeps each
//! module's failures in its own regressions file and counts executions.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

/// Runs `property` on values of `strategy` with the configuration from the
/// environment (`PROPTEST_CASES`...), saving failures in `regressions` (a
/// file under `proptest-regressions/`, replayed before new cases on every
/// run), and prints how many executions ran (shrinking included) under
/// `name` for `scripts/fuzz.sh`.
pub fn fuzz<S: Strategy>(
    regressions: &'static str,
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = Config {
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    };
    let executions = AtomicU64::new(0);
    let result = TestRunner::new(config).run(&strategy, |value| {
        executions.fetch_add(1, Ordering::Relaxed);
        property(value)
    });
    println!("fuzz-executions {name} {}", executions.load(Ordering::Relaxed));
    if let Err(err) = result {
        panic!("{name}: {err}");
    }
}
