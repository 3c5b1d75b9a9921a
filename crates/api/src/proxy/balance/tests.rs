//! The balancer's rules, on versions built here and a clock the tests move.

use std::time::{Duration, Instant};

use maas_domain::model::ModelVersion;
use maas_domain::serving::{Endpoint, EndpointWeight};
use maas_domain::test_util::{endpoint, model_name, version};

use uuid::Uuid;

use super::table::{BUSY, EXAMINE, Table};
use super::*;

fn settings() -> UpstreamSettings {
    UpstreamSettings::default()
}

/// Version 1 of `m` served by endpoints of these weights.
fn fleet_of(weights: &[i64]) -> ModelVersion {
    version_of("m", 1, weights)
}

/// Version `n` of `model` served by endpoints of these weights.
fn version_of(model: &str, n: i64, weights: &[i64]) -> ModelVersion {
    let now = chrono::Utc::now();
    ModelVersion {
        id: Uuid::new_v4(),
        model: model_name(model),
        version: version(n),
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
    let later = now + IDLE - Duration::from_secs(1);
    balancer.fleet(&other, later);
    assert_eq!(
        balancer.fleets(),
        2,
        "a new fleet drops none while there is room"
    );
    assert_eq!(balancer.sweep(later), 0, "not idle yet");
    assert_eq!(
        balancer.sweep(now + IDLE),
        1,
        "the sweep drops the idle one"
    );
    assert_eq!(balancer.fleets(), 1);
    assert!(Arc::ptr_eq(
        &balancer.fleet(&other, later),
        &balancer.fleet(&other, now + IDLE)
    ));
}

#[test]
fn a_draw_falls_only_on_the_endpoints_read_into_the_rotation() {
    let balancer = Balancer::new(&settings());
    let now = Instant::now();
    let fleet = balancer.fleet(&fleet_of(&[1, 2, 3]), now);
    let rotation = Rotation::of(&fleet.endpoints, bit(0));
    // Another call takes endpoint 2 out after this call read the rotation: its draws still
    // fall on the endpoints it read, by their weights, never on the one it tried.
    for _ in 0..3 {
        fleet.lease(2, false).failed(now);
    }
    assert!(!fleet.endpoints[2].is_in());
    let drawn: Vec<Option<usize>> = (0..10).map(|point| rotation.draw(point)).collect();
    let expected = [1, 1, 2, 2, 2, 1, 1, 2, 2, 2].map(Some);
    assert_eq!(drawn, expected);
    let next = Rotation::of(&fleet.endpoints, bit(0));
    assert!(
        (0..10).all(|point| next.draw(point) == Some(1)),
        "read again"
    );
    assert_eq!(
        Rotation::of(&fleet.endpoints, bit(0) | bit(1)).draw(7),
        None
    );
}

/// A fleet of `version` as the balancer builds it, at `now`.
fn built(balancer: &Balancer, version: &ModelVersion, now: Instant) -> Arc<Fleet> {
    Arc::new(Fleet::new(balancer, version, now))
}

fn kept(table: &Table, fleet: &Arc<Fleet>, version: &ModelVersion) -> bool {
    table
        .get(&version.id)
        .is_some_and(|k| Arc::ptr_eq(k, fleet))
}

#[test]
fn a_models_fleets_are_bounded_and_only_its_own_idle_ones_make_room() {
    let balancer = Balancer::new(&settings());
    let start = Instant::now();
    let at = |s: u64| start + Duration::from_secs(s);
    let mut table = Table::default();
    let neighbour = version_of("neighbour", 1, &[1]);
    let neighbours = built(&balancer, &neighbour, at(0));
    table.keep(neighbour.id, Arc::clone(&neighbours), false, 0, 0);
    let versions: Vec<ModelVersion> = (1..=MAX_FLEETS_PER_MODEL as i64 + 1)
        .map(|n| version_of("cycled", n, &[1]))
        .collect();
    let fleets: Vec<Arc<Fleet>> = versions
        .iter()
        .map(|v| built(&balancer, v, at(0)))
        .collect();
    for (v, f) in versions.iter().zip(&fleets).take(MAX_FLEETS_PER_MODEL) {
        table.keep(v.id, Arc::clone(f), false, 0, 0);
    }
    assert_eq!(table.len(), MAX_FLEETS_PER_MODEL + 1);
    // All in use: one more serves its call but is not kept.
    let (extra, extra_fleet) = (
        &versions[MAX_FLEETS_PER_MODEL],
        &fleets[MAX_FLEETS_PER_MODEL],
    );
    let used = table.keep(
        extra.id,
        Arc::clone(extra_fleet),
        false,
        0,
        BUSY.as_secs() - 1,
    );
    assert!(Arc::ptr_eq(&used, extra_fleet));
    assert!(!kept(&table, extra_fleet, extra));
    assert_eq!(table.len(), MAX_FLEETS_PER_MODEL + 1);
    // A minute on, version 1 was used again and the others were not: the least recently used
    // of the model's own (version 2) makes room; the other model's, idle as long, stays.
    let later = BUSY.as_secs() + 5;
    fleets[0].used(at(later));
    table.keep(extra.id, Arc::clone(extra_fleet), false, 0, later);
    assert!(kept(&table, extra_fleet, extra));
    assert!(kept(&table, &fleets[0], &versions[0]));
    assert!(!kept(&table, &fleets[1], &versions[1]));
    assert!(kept(&table, &neighbours, &neighbour));
    assert_eq!(table.len(), MAX_FLEETS_PER_MODEL + 1);
}

#[test]
fn a_full_table_makes_room_only_from_fleets_not_in_use_looking_at_few_per_new_fleet() {
    let balancer = Balancer::new(&settings());
    let start = Instant::now();
    let mut table = Table::default();
    let versions: Vec<ModelVersion> = (0..MAX_FLEETS)
        .map(|i| {
            let model = format!("full-{}", i / MAX_FLEETS_PER_MODEL);
            version_of(&model, (i % MAX_FLEETS_PER_MODEL) as i64 + 1, &[1])
        })
        .collect();
    let fleets: Vec<Arc<Fleet>> = versions
        .iter()
        .map(|v| {
            let fleet = built(&balancer, v, start);
            table.keep(v.id, Arc::clone(&fleet), false, 0, 0);
            fleet
        })
        .collect();
    assert_eq!(table.len(), MAX_FLEETS);
    let newcomer = |n: i64| version_of("newcomer", n, &[1]);
    // Everything was used within the minute: a new fleet is not kept (the first EXAMINE
    // looked at go to the end of the queue).
    let early = newcomer(1);
    let early_fleet = built(&balancer, &early, start);
    table.keep(
        early.id,
        Arc::clone(&early_fleet),
        false,
        0,
        BUSY.as_secs() - 1,
    );
    assert!(!kept(&table, &early_fleet, &early));
    // Later, the next ones of the queue are in use again, the rest idle: a new fleet looks at
    // EXAMINE of them, all in use, and is not kept; the next one finds the first idle one.
    let now = BUSY.as_secs() + 1;
    let in_use = EXAMINE..2 * EXAMINE + 2;
    for fleet in &fleets[in_use.clone()] {
        fleet.used(start + Duration::from_secs(now));
    }
    let late = [newcomer(2), newcomer(3)];
    let late_fleets = late.clone().map(|v| built(&balancer, &v, start));
    table.keep(late[0].id, Arc::clone(&late_fleets[0]), false, 0, now);
    assert!(
        !kept(&table, &late_fleets[0], &late[0]),
        "{EXAMINE} looked at"
    );
    table.keep(late[1].id, Arc::clone(&late_fleets[1]), false, 0, now);
    assert!(kept(&table, &late_fleets[1], &late[1]));
    assert!(
        in_use
            .clone()
            .all(|i| kept(&table, &fleets[i], &versions[i])),
        "those in use stay"
    );
    assert!(!kept(&table, &fleets[in_use.end], &versions[in_use.end]));
    assert_eq!(table.len(), MAX_FLEETS);
}

#[test]
fn replaced_fleets_leave_a_bounded_trail_and_the_sweep_clears_it() {
    let balancer = Balancer::new(&settings());
    let now = Instant::now();
    let mut table = Table::default();
    let mut version = fleet_of(&[1]);
    for weight in 1..=1000 {
        version.endpoints[0].weight = EndpointWeight::parse_as("weight", weight).expect("weight");
        let fleet = built(&balancer, &version, now);
        table.keep(version.id, Arc::clone(&fleet), false, 0, 0);
        assert!(kept(&table, &fleet, &version));
        assert!(table.queued() <= 2 + 2 * EXAMINE + 1, "{}", table.queued());
    }
    assert_eq!(table.len(), 1);
    assert_eq!(table.sweep(0), 0);
    assert_eq!(table.queued(), 1);
}

#[test]
fn at_most_max_models_kept_fleets_are_labelled_and_a_label_passes_on_when_one_goes() {
    let balancer = Balancer::new(&settings());
    let now = Instant::now();
    let mut table = Table::default();
    let versions: Vec<ModelVersion> = (1..=3).map(|n| version_of("l", n, &[1])).collect();
    let fleets: Vec<Arc<Fleet>> = versions
        .iter()
        .map(|v| {
            let fleet = built(&balancer, v, now);
            table.keep(v.id, Arc::clone(&fleet), true, 2, 0);
            fleet
        })
        .collect();
    let labelled =
        |fleets: &[Arc<Fleet>]| fleets.iter().map(|f| f.is_labelled()).collect::<Vec<_>>();
    assert_eq!(labelled(&fleets), [true, true, false]);
    assert_eq!(table.labelled().count(), 2);
    // The first is used later; the sweep drops the other two, and their labels go with them.
    fleets[0].used(now + IDLE);
    assert_eq!(table.sweep(IDLE.as_secs()), 2);
    let fourth = version_of("l", 4, &[1]);
    let fourth_fleet = built(&balancer, &fourth, now);
    table.keep(
        fourth.id,
        Arc::clone(&fourth_fleet),
        true,
        2,
        IDLE.as_secs(),
    );
    assert!(fourth_fleet.is_labelled(), "a place was free");
    // A rebuilt fleet keeps its version's label.
    let mut changed = versions[0].clone();
    changed.endpoints[0].weight = EndpointWeight::parse_as("weight", 5).expect("weight");
    let rebuilt = built(&balancer, &changed, now);
    table.keep(changed.id, Arc::clone(&rebuilt), true, 2, IDLE.as_secs());
    assert!(rebuilt.is_labelled() && !fleets[0].is_labelled());
    assert_eq!(table.labelled().count(), 2);
}

/// The `maas_upstream_endpoint_state` lines of `balancer` for `model`.
fn state_lines(balancer: &Balancer, model: &str) -> Vec<String> {
    let mut text = String::new();
    balancer.render_states(&mut text);
    text.lines()
        .filter(|l| l.contains(&format!("model=\"{model}\"")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn endpoint_states_are_those_of_the_fleets_kept_now() {
    let balancer = Balancer::new(&settings());
    let now = Instant::now();
    let version = version_of("shown", 2, &[1, 1, 1]);
    let fleet = balancer.fleet(&version, now);
    for _ in 0..3 {
        fleet.lease(2, false).failed(now);
    }
    assert_eq!(
        state_lines(&balancer, "shown"),
        [
            r#"maas_upstream_endpoint_state{model="shown",version="2",endpoint="0"} 1"#,
            r#"maas_upstream_endpoint_state{model="shown",version="2",endpoint="1"} 1"#,
            r#"maas_upstream_endpoint_state{model="shown",version="2",endpoint="2"} 0"#,
        ]
    );
    // Its third endpoint is taken out of the list: no series is left of it.
    let mut fewer = version.clone();
    fewer.endpoints.truncate(2);
    let rebuilt = balancer.fleet(&fewer, now);
    for _ in 0..3 {
        fleet.lease(2, false).failed(now);
        fleet.lease(1, false).failed(now);
    }
    assert_eq!(
        state_lines(&balancer, "shown"),
        [
            r#"maas_upstream_endpoint_state{model="shown",version="2",endpoint="0"} 1"#,
            r#"maas_upstream_endpoint_state{model="shown",version="2",endpoint="1"} 1"#,
        ],
        "the replaced fleet's calls no longer show"
    );
    drop(rebuilt);
    // Forgotten: no series at all.
    balancer.sweep(now + IDLE);
    assert!(state_lines(&balancer, "shown").is_empty());
    let mut text = String::new();
    balancer.render_states(&mut text);
    assert!(text.is_empty(), "{text}");
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
