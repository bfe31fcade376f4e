//! `vigil simulate` against the real broker and `vigil serve` with the default rule pack:
//! every attack it injects fires the rules it names, about the subject it names, and the
//! normal traffic (with its one-off denials, drops and 403s) fires nothing else.

use std::time::Duration;

use crate::support::*;
use vigil_detect::alerts::{latest, read_revisions};

#[test]
fn every_simulated_attack_fires_its_rules_and_normal_traffic_fires_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 3);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let s = serve(&broker, "mesh", &dir, "g-sim", &[], None);

    let (sim, stdout) = simulate(
        &broker.addr,
        &[
            "--topic",
            "mesh",
            "--rate",
            "60",
            "--duration",
            "21",
            "--attack-every",
            "3",
            "--scenario",
            "all",
        ],
    );
    assert_eq!(sim.injected.len(), 6, "{stdout}");
    let total = sim
        .done
        .as_ref()
        .unwrap_or_else(|| panic!("no summary: {stdout}"))["events"]
        .as_u64()
        .unwrap();
    assert!(total > 1500, "{stdout}");
    assert!(sim.edges.len() >= 24, "{stdout}");
    let alerts = sim.wait_for_alerts(
        Duration::from_secs(90),
        || {
            latest(read_revisions(&dir).unwrap_or_default())
                .into_iter()
                .map(|a| (a.rule_id, a.group_key))
                .collect()
        },
        || stdout.clone(),
    );
    sim.assert_nothing_else(&alerts, &stdout);

    // Everything sent is stored (decoded, none rejected), then the store verifies.
    wait_stored(&[&s], &dir, total, Duration::from_secs(60));
    let rejected = sql(
        &dir,
        "SELECT count(*) FROM rejected WHERE kafka_topic = 'mesh'",
    );
    use arrow::array::AsArray;
    assert_eq!(
        rejected[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        0
    );
    assert!(s.terminate());
    // Chained, signed and anchored: valid, with the keys pinned as a verifier would.
    let pinned = tmp.path().join("pinned.keys");
    std::fs::copy(vigil_store::layout::registry(&dir), &pinned).unwrap();
    succeed(
        vigil_command()
            .args(["verify", "--data-dir"])
            .arg(&dir)
            .arg("--keys")
            .arg(&pinned)
            .args(["--anchor-kafka", &broker.addr]),
    );
}
