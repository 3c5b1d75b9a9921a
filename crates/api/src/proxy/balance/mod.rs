//! Choosing the peer: which endpoint of a version a call goes to, apart from moving its bytes
//! (`forward`). Per replica, nothing shared with the others.
//!
//! - Each version served gets a [`Fleet`]: the passive health of its endpoints, by their index
//!   in the version's list (see [`health`]), built when the version is first served and again
//!   when its endpoints or weights change. Which fleets are kept, and for how long, is the
//!   [`table`]'s business: bounded in number overall and per model, in work per new fleet, and
//!   swept of idle ones periodically ([`sweep_every`]).
//! - [`Fleet::pick`] takes a due trial call first (an endpoint out of rotation whose time is
//!   up), else the better of two endpoints in rotation drawn at random by weight (fewer calls in
//!   flight per unit of weight: power of two choices), else, when every endpoint is out, the
//!   one that failed least recently, so that calls are still tried.
//! - A [`Lease`] is a call's hold on its endpoint: it counts as in flight until the lease is
//!   dropped (with the answer's body), and its outcome updates the endpoint's health.
//! - Retries are allowed by the version's and the replica's [`budget`].
//! - The endpoints' states are rendered on `/metrics` from the kept fleets at each scrape
//!   ([`Balancer::render_states`]), so an endpoint or a fleet no longer kept has no series.

pub mod budget;
pub mod health;
mod state;
pub mod table;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use maas_domain::model::ModelVersion;
use maas_domain::values::EndpointUrl;
use maas_telemetry::names;

use self::budget::{FleetBudget, RetryBudget};
use self::health::{Change, Ejection, EndpointHealth};
use self::table::Table;
pub use self::table::{IDLE, MAX_FLEETS, MAX_FLEETS_PER_MODEL};
use super::settings::UpstreamSettings;
use crate::meters;

/// How often [`sweep_every`] drops the fleets idle for [`IDLE`].
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Most endpoints of a version the balancer tells apart (a set of them is a `u64`; a version
/// has at most 32).
const MAX_ENDPOINTS: usize = 64;

/// The index of the endpoint a call went to, in its version's list: on the response's
/// extensions for the access log (`x-maas-endpoint` says it to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointIndex(pub usize);

/// Whether a model server's status counts against its endpoint's health.
pub fn is_failure_status(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// The endpoints' health of every version this replica serves, and its retry budget.
#[derive(Debug)]
pub struct Balancer {
    epoch: Instant,
    ejection: Ejection,
    max_retries: u32,
    budget: RetryBudget,
    fleets: RwLock<Table>,
    /// Tells a fleet from the one it replaced.
    next_serial: AtomicU64,
}

impl Balancer {
    /// A balancer with `upstream.eject_after_failures`, `eject_seconds`, `max_retries` and
    /// `retry_budget_percent`.
    pub fn new(settings: &UpstreamSettings) -> Self {
        Self {
            epoch: Instant::now(),
            ejection: Ejection {
                after: settings.eject_after_failures,
                first: Duration::from_secs(settings.eject_seconds),
            },
            max_retries: settings.max_retries,
            budget: RetryBudget::new(settings.retry_budget_percent),
            fleets: RwLock::new(Table::default()),
            next_serial: AtomicU64::new(0),
        }
    }

    /// The most retries of one call.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Takes a retry of a call of `fleet`'s version (of `model`) from the budgets, if they have
    /// one (counted in `maas_upstream_retries_total`).
    pub fn try_retry(&self, fleet: &Fleet, model: &str, now: Instant) -> bool {
        let granted = self.budget.try_retry(&fleet.budget, fleet.second(now));
        if granted {
            metrics::counter!(names::UPSTREAM_RETRIES_TOTAL,
                "model" => meters::model_label(model).to_owned())
            .increment(1);
        }
        granted
    }

    /// The fleet of `version`: the one kept while its endpoints and weights are the same,
    /// else a new one, every endpoint in rotation (kept if the [`table`] has room for it).
    pub fn fleet(&self, version: &ModelVersion, now: Instant) -> Arc<Fleet> {
        let found = self
            .fleets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&version.id)
            .filter(|fleet| fleet.serves(version))
            .cloned();
        if let Some(fleet) = found {
            fleet.used(now);
            return fleet;
        }
        let fleet = Arc::new(Fleet::new(self, version, now));
        let model = version.model.as_str();
        let label = meters::model_label(model) == model;
        self.fleets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .keep(
                version.id,
                fleet,
                label,
                meters::max_models(),
                self.second(now),
            )
    }

    /// Drops the fleets not used for [`IDLE`]; says how many.
    pub fn sweep(&self, now: Instant) -> usize {
        self.fleets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .sweep(self.second(now))
    }

    /// How many fleets are kept.
    pub fn fleets(&self) -> usize {
        self.fleets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The labelled fleets (see [`table`]), out of the lock.
    fn labelled(&self) -> Vec<Arc<Fleet>> {
        self.fleets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .labelled()
            .cloned()
            .collect()
    }
}

/// Drops `balancer`'s idle fleets every [`SWEEP_EVERY`], for as long as it runs.
pub async fn sweep_every(balancer: Arc<Balancer>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        balancer.sweep(Instant::now());
    }
}

/// The endpoints of one version on this replica.
#[derive(Debug)]
pub struct Fleet {
    model: String,
    version: i32,
    /// What it was built from: the endpoints' URLs and weights, in order.
    shape: Vec<(EndpointUrl, u32)>,
    endpoints: Box<[EndpointHealth]>,
    epoch: Instant,
    ejection: Ejection,
    /// Tells it from the fleet of the same version it replaced, or that replaced it.
    serial: u64,
    /// Kept, and one of the fleets whose endpoints' states are on `/metrics`.
    labelled: AtomicBool,
    /// Seconds since the epoch it was last used.
    last_used: AtomicU64,
    /// Its calls and retries.
    budget: FleetBudget,
}

thread_local! {
    /// This thread's random numbers (xorshift64*, seeded from the process's hash keys).
    static RANDOM: std::cell::Cell<u64> = std::cell::Cell::new({
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1
    });
}

fn random() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn bit(index: usize) -> u64 {
    1u64.checked_shl(u32::try_from(index).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// The endpoints in rotation and not tried yet, with their weights, as read once: a call's
/// draws are made from this, so that an endpoint that leaves rotation meanwhile (another call
/// failed it) cannot make a draw fall outside the list.
struct Rotation {
    entries: [(u8, u32); MAX_ENDPOINTS],
    len: usize,
    total: u64,
}

impl Rotation {
    fn of(endpoints: &[EndpointHealth], tried: u64) -> Self {
        let mut rotation = Self {
            entries: [(0, 0); MAX_ENDPOINTS],
            len: 0,
            total: 0,
        };
        for (index, endpoint) in endpoints.iter().enumerate().take(MAX_ENDPOINTS) {
            if tried & bit(index) == 0 && endpoint.is_in() {
                let weight = endpoint.weight();
                rotation.entries[rotation.len] = (index as u8, weight);
                rotation.len += 1;
                rotation.total += u64::from(weight);
            }
        }
        rotation
    }

    /// The endpoint whose range of the total weight holds `point` (taken modulo the total);
    /// `None` when the rotation is empty.
    fn draw(&self, point: u64) -> Option<usize> {
        let entries = &self.entries[..self.len];
        let mut left = point.checked_rem(self.total)?;
        for (index, weight) in entries {
            if left < u64::from(*weight) {
                return Some(usize::from(*index));
            }
            left -= u64::from(*weight);
        }
        // Not reached: the total is the entries' sum.
        entries.last().map(|(index, _)| usize::from(*index))
    }
}

impl Fleet {
    fn new(balancer: &Balancer, version: &ModelVersion, now: Instant) -> Self {
        let shape: Vec<(EndpointUrl, u32)> = version
            .endpoints
            .iter()
            .map(|e| (e.url.clone(), e.weight.get()))
            .collect();
        Self {
            model: version.model.as_str().to_owned(),
            version: version.version.get(),
            endpoints: shape
                .iter()
                .map(|(_, weight)| EndpointHealth::new(*weight, balancer.ejection))
                .collect(),
            shape,
            epoch: balancer.epoch,
            ejection: balancer.ejection,
            serial: balancer.next_serial.fetch_add(1, Ordering::Relaxed),
            labelled: AtomicBool::new(false),
            last_used: AtomicU64::new(balancer.second(now)),
            budget: FleetBudget::default(),
        }
    }

    /// Whether it was built from `version`'s endpoints and weights (compared in place: this
    /// runs on every call).
    fn serves(&self, version: &ModelVersion) -> bool {
        self.shape.len() == version.endpoints.len()
            && self
                .shape
                .iter()
                .zip(&version.endpoints)
                .all(|((url, weight), e)| *url == e.url && *weight == e.weight.get())
    }

    fn same_shape(&self, other: &Self) -> bool {
        self.shape == other.shape
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn serial(&self) -> u64 {
        self.serial
    }

    fn is_labelled(&self) -> bool {
        self.labelled.load(Ordering::Relaxed)
    }

    fn set_labelled(&self, labelled: bool) {
        self.labelled.store(labelled, Ordering::Relaxed);
    }

    fn second(&self, now: Instant) -> u32 {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(second).unwrap_or(u32::MAX)
    }

    fn used(&self, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        self.last_used.store(second, Ordering::Relaxed);
    }

    fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// A call of its version starts (its retries are not calls): counted in its retry budget.
    pub fn count_call(&self, now: Instant) {
        self.budget.call(self.second(now));
    }

    /// Milliseconds since the epoch, plus one (0 means "never").
    fn millis(&self, now: Instant) -> u64 {
        let millis = now.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(millis).unwrap_or(u64::MAX - 1) + 1
    }

    fn record(&self, change: Change) {
        if change == Change::Ejected {
            metrics::counter!(names::UPSTREAM_EJECTIONS_TOTAL,
                "model" => meters::model_label(&self.model).to_owned())
            .increment(1);
        }
    }

    /// The endpoint for a call (see the module's documentation), leaving out those in
    /// `tried` (a set of indices); `None` when none is left.
    pub fn pick(self: &Arc<Self>, tried: u64, now: Instant) -> Option<Lease> {
        let open = |index: &usize| tried & bit(*index) == 0;
        let now_ms = self.millis(now);
        let indices = 0..self.endpoints.len();
        if let Some(index) = indices
            .clone()
            .filter(open)
            .find(|i| self.endpoints[*i].claim_trial(now_ms))
        {
            return Some(self.lease(index, true));
        }
        let rotation = Rotation::of(&self.endpoints, tried);
        let (Some(a), Some(b)) = (rotation.draw(random()), rotation.draw(random())) else {
            let index = indices
                .filter(open)
                .min_by_key(|i| self.endpoints[*i].last_failure())?;
            return Some(self.lease(index, false));
        };
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        // Fewer calls in flight per unit of weight; a tie keeps the first draw.
        let load = |e: &EndpointHealth, other: &EndpointHealth| {
            u64::from(e.in_flight()) * u64::from(other.weight())
        };
        let index = if load(eb, ea) < load(ea, eb) { b } else { a };
        Some(self.lease(index, false))
    }

    fn lease(self: &Arc<Self>, index: usize, trial: bool) -> Lease {
        self.endpoints[index].enter();
        Lease {
            fleet: Arc::clone(self),
            index,
            trial,
            reported: false,
        }
    }
}

/// A call's hold on the endpoint it goes to: in flight until dropped.
#[derive(Debug)]
pub struct Lease {
    fleet: Arc<Fleet>,
    index: usize,
    trial: bool,
    reported: bool,
}

impl Lease {
    /// The endpoint's index in its version's list.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The bit of this endpoint in a set of tried ones.
    pub fn bit(&self) -> u64 {
        bit(self.index)
    }

    fn endpoint(&self) -> &EndpointHealth {
        &self.fleet.endpoints[self.index]
    }

    /// The call failed at `now` (no connection, no answer in time, 502/503/504).
    pub fn failed(&mut self, now: Instant) {
        self.reported = true;
        let now = self.fleet.millis(now);
        let change = self.endpoint().failed(now, self.trial, self.fleet.ejection);
        self.fleet.record(change);
    }

    /// The endpoint answered.
    pub fn succeeded(&mut self) {
        self.reported = true;
        let change = self.endpoint().succeeded(self.fleet.ejection);
        self.fleet.record(change);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let endpoint = self.endpoint();
        endpoint.leave();
        if self.trial && !self.reported {
            endpoint.abandon_trial();
        }
    }
}

#[cfg(test)]
mod tests;
