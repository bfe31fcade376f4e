//! Detection across instances: it runs on the lease holder and moves when the holder dies;
//! three instances, one killed and one stopped past its partitions and its lease.

use super::*;

/// The bucket's environment with a short lease and frequent state saves and follows: a
/// takeover within seconds.
fn quick_takeover_env(s3: &S3Server) -> Vec<(String, String)> {
    let mut env = s3.env();
    for (k, v) in [
        ("VIGIL_DETECT__LEASE_TTL_MS", "3000"),
        ("VIGIL_DETECT__STATE_INTERVAL_MS", "500"),
        ("VIGIL_STORE__FOLLOW_INTERVAL_MS", "300"),
    ] {
        env.push((k.into(), v.into()));
    }
    env
}

#[test]
fn detection_runs_on_the_lease_holder_and_another_instance_takes_over_when_it_dies() {
    let (broker, s3) = broker_and_bucket(2);
    let mut env = quick_takeover_env(&s3);
    env.push(("VIGIL_WEBHOOK_SECRET".into(), "k".into()));
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let producer = broker.producer();
    // A SIEM's webhook that refuses every delivery until A is gone.
    let hook = Hook::default();
    let url = format!("http://{}/hook", http_server(None, hook.router()));
    let serve = |dir: &Path| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        serve_with(
            &broker,
            "bkt",
            dir,
            "g-det",
            &env,
            None,
            &["--store", URL, "--webhook", &url],
        )
    };

    let srv_a = serve(&a);
    wait_log(&srv_a, "lease taken", 1, Duration::from_secs(60));
    wait_log(
        &srv_a,
        "log claimed in the bucket log=bkt/",
        2,
        Duration::from_secs(60),
    );
    second_dir(&a, &b);
    let srv_b = serve(&b);
    wait_log(&srv_b, "detection stands by", 1, Duration::from_secs(60));
    wait_log(
        &srv_b,
        "log claimed in the bucket log=bkt/",
        1,
        Duration::from_secs(60),
    );

    // A burst of denials over both partitions: A's detection sees B's partition through the
    // files it follows from the bucket, and raises one alert.
    produce(
        &producer,
        "bkt",
        &denials_from("10.244.2.10", 0, 60, &[0, 1]),
    );
    wait_across(&[&srv_a, &srv_b], &[&a, &b], 60, Duration::from_secs(60));
    wait_log(&srv_a, "alert fired", 1, Duration::from_secs(60));
    assert!(!srv_b.log_text().contains("alert fired"), "B stands by");
    // An analyst acknowledges it through B: B relays the change to A through the bucket.
    let log_a = srv_a.log_text();
    let id = log_a
        .split("alert fired alert_id=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let b_dir = b.to_str().unwrap().to_owned();
    let ran = crate::store_bucket::vigil_s3(
        &s3,
        &[
            "--store",
            URL,
            "alerts",
            "ack",
            &id,
            "--data-dir",
            &b_dir,
            "--note",
            "through B",
            "--json",
        ],
    );
    assert!(ran.ok(), "{ran}\n{}", srv_b.log_text());
    let acked: serde_json::Value = serde_json::from_str(ran.stdout_text().trim()).unwrap();
    assert_eq!(acked["status"], "acknowledged", "{acked}");
    assert_eq!(acked["status_note"], "through B", "{acked}");
    // B's own alert log (what its API shows) follows A's: the alert, acknowledged.
    wait_for("B's copy of the alert log", Duration::from_secs(30), || {
        let ran = run(vigil_command().args(["alerts", "--data-dir", &b_dir, "--json"]));
        ran.stdout_text()
            .lines()
            .any(|l| l.contains(&id) && l.contains("\"acknowledged\""))
            .then_some(())
    });
    // Its state saved (with the alert's group) in the bucket; its delivery refused, so
    // still in the outbox, which is in the bucket too.
    std::thread::sleep(Duration::from_millis(1500));
    let outbox = s3.keys(BUCKET, "prod/outbox/");
    assert!(
        !outbox.is_empty(),
        "the undelivered alert is in the bucket's outbox"
    );
    assert!(hook.got().is_empty());

    // A dies. B takes detection over once the lease has gone unrenewed for its 3 s, from
    // the state, the alert log and the outbox A left: the alert is not raised again, and
    // its delivery is carried on (the webhook takes deliveries from now on: only B can).
    srv_a.kill9();
    hook.accept();
    wait_log(
        &srv_b,
        "detection taken over from the state saved in the bucket",
        1,
        Duration::from_secs(60),
    );
    let log_b = srv_b.log_text();
    // (The broker never evicts the dead A, so A's partitions stay its own: what comes next
    // goes to B's.)
    let mine = assigned(&log_b);
    assert!(!mine.is_empty(), "{log_b}");
    produce(&producer, "bkt", &denials_from("10.7.7.7", 60, 60, &mine));
    wait_log(&srv_b, "alert fired", 1, Duration::from_secs(60));
    let (clean_b, log_b) = srv_b.stop();
    assert!(clean_b, "{log_b}");

    // B fired the new burst's alert, never the one A had fired (a first revision is "fired").
    let fired_by_b: Vec<&str> = log_b
        .lines()
        .filter(|l| l.contains("alert fired"))
        .collect();
    assert!(
        fired_by_b.iter().all(|l| !l.contains("10.244.2.10"))
            && fired_by_b.iter().any(|l| l.contains("10.7.7.7")),
        "{fired_by_b:?}"
    );
    wait_for("A's alert delivered by B", Duration::from_secs(60), || {
        hook.got()
            .iter()
            .any(|v| v["alert"]["group_key"]["caller_ip"] == "10.244.2.10")
            .then_some(())
    });
    let alerts = burst_alerts(&s3, &tmp.path().join("alerts"));
    let by_ip = |ip: &str| alerts.iter().filter(|(_, i)| i == ip).count();
    assert_eq!(
        by_ip("10.244.2.10"),
        1,
        "raised once, by A: {alerts:?}\n{log_b}"
    );
    assert_eq!(
        by_ip("10.7.7.7"),
        1,
        "raised by B after taking over: {alerts:?}\n{log_b}"
    );
}

#[test]
fn three_instances_one_killed_one_stopped_past_its_partitions_and_lease_no_fork_every_record_once()
{
    // B, A and C in one group on one bucket; B holds the detection lease. C is killed with
    // kill -9 mid-stream; B is stopped (SIGSTOP) while it holds partitions and the lease. The
    // test broker never evicts a group member, so the group cannot hand C's and B's
    // partitions on by itself: A is started again (after a kill -9 of its own) in a second
    // group — the stand-in for the rebalance a real broker makes after `session.timeout.ms`
    // — which gives it every partition. It claims every log, takes the lease once B's has gone unrenewed, and
    // carries on. B, continued, still believes it holds its partitions and the lease: it is
    // fenced off both.
    let (broker, s3) = broker_and_bucket(6);
    let env = quick_takeover_env(&s3);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let producer = broker.producer();
    let all: Vec<i32> = (0..6).collect();

    let srv_b = serve_on_bucket(&broker, &b, "g-three", &env, URL);
    wait_log(&srv_b, "lease taken", 1, Duration::from_secs(60));
    second_dir(&b, &a);
    second_dir(&b, &c);
    let srv_a = serve_on_bucket(&broker, &a, "g-three", &env, URL);
    let srv_c = serve_on_bucket(&broker, &c, "g-three", &env, URL);
    wait_for(
        "the partitions dealt to all three",
        Duration::from_secs(90),
        || {
            let dealt: Vec<Vec<i32>> = [&srv_a, &srv_b, &srv_c]
                .iter()
                .map(|s| assigned(&s.log_text()))
                .collect();
            (dealt.iter().all(|d| !d.is_empty()) && dealt.iter().map(Vec::len).sum::<usize>() == 6)
                .then_some(())
        },
    );

    // A burst B alerts on, seen across all three instances' partitions.
    produce(&producer, "bkt", &denials_from("10.244.2.10", 0, 60, &all));
    wait_across(
        &[&srv_a, &srv_b, &srv_c],
        &[&a, &b, &c],
        60,
        Duration::from_secs(60),
    );
    wait_log(&srv_b, "alert fired", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1500)); // B's state, with the alert, saved

    // Mid-stream: C killed, B stopped.
    produce(&producer, "bkt", &records(60, 300, 6));
    std::thread::sleep(Duration::from_millis(300));
    srv_c.kill9();
    signal(&srv_b, libc::SIGSTOP);

    // A again, in a group of its own: every partition, every log claimed, the lease taken.
    // (Killed too rather than stopped: a clean stop leaves the group, whose rebalance would
    // deal B's partitions to B again the moment it continues — B would not be stale.)
    srv_a.kill9();
    let srv_a = serve_on_bucket(&broker, &a, "g-three-after", &env, URL);
    wait_log(
        &srv_a,
        "detection taken over from the state saved in the bucket",
        1,
        Duration::from_secs(60),
    );
    wait_for("A stores the 360", Duration::from_secs(60), || {
        (stored_bkt(&a) == 360).then_some(())
    });
    produce(&producer, "bkt", &denials_from("10.7.7.7", 360, 60, &all));
    produce(&producer, "bkt", &records(420, 200, 6));
    wait_log(&srv_a, "alert fired", 1, Duration::from_secs(60));

    // B continued: it writes what it had consumed and what it reads now — refused by the
    // logs' heads, it gives its partitions up — and its detection learns it lost the lease.
    signal(&srv_b, libc::SIGCONT);
    wait_log(&srv_b, "given up by this one", 1, Duration::from_secs(60));
    wait_log(&srv_b, "detection lease lost", 1, Duration::from_secs(60));
    produce(&producer, "bkt", &records(620, 100, 6));
    wait_for("A stores all 720", Duration::from_secs(60), || {
        (stored_bkt(&a) == 720).then_some(())
    });
    let (clean_a, log_a) = srv_a.stop();
    let (clean_b, log_b) = srv_b.stop();
    assert!(clean_a && clean_b, "{log_a}\n----\n{log_b}");

    // No fork, every record once, the bucket verifies.
    assert_bucket_verifies_with_each_record_once(&s3, &broker, tmp.path(), &a, 720);
    // Detection failed over without duplicates: each burst raised once, by its holder.
    let fired = |log: &str, ip: &str| {
        log.lines()
            .filter(|l| l.contains("alert fired") && l.contains(ip))
            .count()
    };
    assert_eq!(fired(&log_a, "10.244.2.10"), 0, "{log_a}");
    assert_eq!(fired(&log_b, "10.7.7.7"), 0, "{log_b}");
    let alerts = burst_alerts(&s3, &tmp.path().join("alerts"));
    let by_ip = |ip: &str| alerts.iter().filter(|(_, i)| i == ip).count();
    assert_eq!(
        (by_ip("10.244.2.10"), by_ip("10.7.7.7")),
        (1, 1),
        "{alerts:?}"
    );
}
