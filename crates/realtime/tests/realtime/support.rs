//! What the property-test modules share: one runner that keeps each
//! module's failures in its own regressions file and counts executions.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::Value;

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

/// JSON that survives a text or MessagePack round trip exactly: no floats
/// (serde_json parses them best-effort by default).
pub fn exact_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}
