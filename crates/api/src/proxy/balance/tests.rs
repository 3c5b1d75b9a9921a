//! The balancer's rules, on versions built here and a clock the tests move.

use std::time::{Duration, Instant};

use maas_domain::model::ModelVersion;
use maas_domain::serving::{Endpoint, EndpointWeight};
use maas_domain::test_util::{endpoint, model_name, version};

use super::*;

fn settings() -> UpstreamSettings {
    UpstreamSettings::default()
}

/// Version 1 of `m` served by endpoints of these weights.
fn fleet_of(weights: &[i64]) -> ModelVersion {
    let now = chrono::Utc::now();
    ModelVersion {
        id: Uuid::new_v4(),
        model: model_name("m"),
        version: version(1),
        source_uri: maas_domain::values::SourceUri::parse("s3://b".into()).expect("uri"),
        endpoints: weights
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint {
                url: endpoint(&format!("http://e{i}:8000/v1")),
                weight: EndpointWeight::parse_as("weight", *w).expect("weight"),
                has_upstream_api_key: false,
            })
            .collect(),
        served_model: None,
        supports_stream_usage: true,
        framework: None,
        description: None,
        metadata: maas_domain::values::Metadata::default(),
        created_at: now,
        updated_at: now,
    }
}

/// How many of `n` calls (each over before the next) each endpoint gets.
fn spread(fleet: &Arc<Fleet>, n: usize, now: Instant) -> Vec<usize> {
    let mut counts = vec![0; fleet.endpoints.len()];
    for _ in 0..n {
        let lease = fleet.pick(0, now).expect("an endpoint");
        counts[lease.index()] += 1;
    }
    counts
}

#[test]
fn calls_are_spread_by_weight() {
    let balancer = Balancer::new(&settings());
    let now = Instant::now();
    let fleet = balancer.fleet(&fleet_of(&[3, 1, 1]), now);
    let counts = spread(&fleet, 5000, now);
    // 60 %, 20 %, 20 %: far (over 10 standard deviations) from the bounds.
    assert!((2700..=3300).contains(&counts[0]), "{counts:?}");
    assert!((700..=1300).contains(&counts[1]), "{counts:?}");
    assert!((700..=1300).contains(&counts[2]), "{counts:?}");
}

#[test]
fn of_two_endpoints_drawn_the_one_with_fewer_calls_in_flight_gets_the_call() {
    let balancer = Balancer::new(&settings());
    let now = Instant::now();
    let fleet = balancer.fleet(&fleet_of(&[1, 1]), now);
    let busy: Vec<Lease> = std::iter::from_fn(|| fleet.pick(0, now))
        .filter(|l| l.index() == 0)
        .take(10)
        .collect();
    assert_eq!(fleet.endpoints[0].in_flight(), 10);
    let counts = spread(&fleet, 2000, now);
    // The busy one only when both draws are it: a quarter of the time.
    assert!(counts[1] >= 1300, "{counts:?}");
    drop(busy);
    assert_eq!(
        fleet.endpoints[0].in_flight(),
        0,
        "leases give their place back"
    );
}

#[test]
fn an_endpoint_that_keeps_failing_is_out_until_one_trial_call_brings_it_back() {
    let balancer = Balancer::new(&settings());
    let start = Instant::now();
    let fleet = balancer.fleet(&fleet_of(&[1, 1]), start);
    let mut failures = 0;
    while failures < 3 {
        let mut lease = fleet.pick(0, start).expect("an endpoint");
        if lease.index() == 1 {
            lease.failed(start);
            failures += 1;
        } else {
            lease.succeeded();
        }
    }
    assert!(!fleet.endpoints[1].is_in());
    assert_eq!(
        spread(&fleet, 500, start + Duration::from_secs(9)),
        [500, 0]
    );

    // Its time is up: the next call is its trial, and only one.
    let later = start + Duration::from_secs(10);
    let mut trial = fleet.pick(0, later).expect("an endpoint");
    assert_eq!(trial.index(), 1);
    assert_eq!(spread(&fleet, 100, later), [100, 0], "one trial at a time");
    trial.failed(later);
    drop(trial);
    // Out for twice as long now.
    assert_eq!(
        spread(&fleet, 100, later + Duration::from_secs(19)),
        [100, 0]
    );
    let again = later + Duration::from_secs(20);
    let mut trial = fleet.pick(0, again).expect("an endpoint");
    assert_eq!(trial.index(), 1);
    trial.succeeded();
    drop(trial);
    let counts = spread(&fleet, 1000, again);
    assert!(counts[1] > 300, "back in rotation: {counts:?}");
}

#[test]
fn with_every_endpoint_out_calls_go_to_the_one_that_failed_least_recently() {
    let balancer = Balancer::new(&settings());
    let start = Instant::now();
    let fleet = balancer.fleet(&fleet_of(&[1, 1, 1]), start);
    for (index, at) in [(2, 0), (0, 1), (1, 2)] {
        for n in 0..3 {
            let now = start + Duration::from_millis(at * 10 + n);
            let mut lease = fleet.lease(index, false);
            lease.failed(now);
        }
    }
    assert!(fleet.endpoints.iter().all(|e| !e.is_in()));
    let soon = start + Duration::from_secs(1);
    assert_eq!(spread(&fleet, 10, soon), [0, 0, 10]);
    // Leaving it out (a retry), the next least recently failed.
    let lease = fleet.pick(bit(2), soon).expect("an endpoint");
    assert_eq!(lease.index(), 0);
    assert!(fleet.pick(0b111, soon).is_none(), "every one tried");
}

#[test]
fn tried_endpoints_are_left_out_and_a_trial_abandoned_is_taken_again() {
    let balancer = Balancer::new(&settings());
    let now = Instant::now();
    let fleet = balancer.fleet(&fleet_of(&[1, 1]), now);
    for _ in 0..50 {
        assert_eq!(fleet.pick(bit(0), now).expect("one").index(), 1);
    }
    for _ in 0..3 {
        fleet.lease(0, false).failed(now);
    }
    let later = now + Duration::from_secs(10);
    let trial = fleet.pick(0, later).expect("the trial");
    assert_eq!(trial.index(), 0);
    drop(trial);
    assert_eq!(
        fleet.pick(0, later).expect("the trial again").index(),
        0,
        "its client went away before it told"
    );
}

#[test]
fn a_fleet_is_kept_while_its_endpoints_stay_and_forgotten_when_idle() {
    let balancer = Balancer::new(&settings());
    let now = Instant::now();
    let version = fleet_of(&[1, 2]);
    let first = balancer.fleet(&version, now);
    let mut renamed = version.clone();
    renamed.description = None;
    renamed.updated_at = chrono::Utc::now();
    assert!(Arc::ptr_eq(&first, &balancer.fleet(&renamed, now)));
    let mut reweighted = version.clone();
    reweighted.endpoints[1].weight = EndpointWeight::parse_as("weight", 3).expect("weight");
    let second = balancer.fleet(&reweighted, now);
    assert!(!Arc::ptr_eq(&first, &second), "new endpoints, new health");
    assert_eq!(balancer.fleets(), 1);

    let other = fleet_of(&[1]);
    balancer.fleet(&other, now + IDLE + Duration::from_secs(1));
    assert_eq!(balancer.fleets(), 1, "the idle one went when another came");
}

#[test]
fn only_502_503_and_504_count_against_an_endpoint() {
    for status in [200, 400, 404, 429, 500, 501, 505] {
        assert!(!is_failure_status(status), "{status}");
    }
    for status in [502, 503, 504] {
        assert!(is_failure_status(status), "{status}");
    }
}
