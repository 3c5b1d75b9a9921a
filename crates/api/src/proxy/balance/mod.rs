//! Choosing the peer: which endpoint of a version a call goes to, apart from moving its bytes
//! (`forward`). Per replica, nothing shared with the others.
//!
//! - Each version served gets a [`Fleet`]: the passive health of its endpoints, by their index
//!   in the version's list (see [`health`]), built when the version is first served and again
//!   when its endpoints or weights change. Fleets of versions not served for [`IDLE`] go when
//!   another is built, and there are at most [`MAX_FLEETS`].
//! - [`Fleet::pick`] takes a due trial call first (an endpoint out of rotation whose time is
//!   up), else the better of two endpoints in rotation drawn at random by weight (fewer calls in
//!   flight per unit of weight: power of two choices), else, when every endpoint is out, the
//!   one that failed least recently, so that calls are still tried.
//! - A [`Lease`] is a call's hold on its endpoint: it counts as in flight until the lease is
//!   dropped (with the answer's body), and its outcome updates the endpoint's health.
//! - Retries are allowed by the replica's [`budget`].

pub mod budget;
pub mod health;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use maas_domain::model::ModelVersion;
use maas_domain::values::EndpointUrl;
use maas_telemetry::names;
use uuid::Uuid;

use self::budget::RetryBudget;
use self::health::{Change, Ejection, EndpointHealth};
use crate::meters;
use crate::settings::UpstreamSettings;

/// Most versions whose endpoints' health is kept.
pub const MAX_FLEETS: usize = 10_000;
/// A version not served for this long has its endpoints' health forgotten.
pub const IDLE: Duration = Duration::from_secs(600);

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
    fleets: RwLock<HashMap<Uuid, Arc<Fleet>>>,
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
            fleets: RwLock::new(HashMap::new()),
        }
    }

    /// The most retries of one call.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// A call starts (its retries are not calls).
    pub fn count_call(&self, now: Instant) {
        self.budget.call(self.second(now));
    }

    /// Takes a retry of a call of `model` from the budget, if it has one (counted in
    /// `maas_upstream_retries_total`).
    pub fn try_retry(&self, model: &str, now: Instant) -> bool {
        let granted = self.budget.try_retry(self.second(now));
        if granted {
            metrics::counter!(names::UPSTREAM_RETRIES_TOTAL,
                "model" => meters::model_label(model).to_owned())
            .increment(1);
        }
        granted
    }

    /// The fleet of `version`: the one kept while its endpoints and weights are the same,
    /// else a new one, every endpoint in rotation.
    pub fn fleet(&self, version: &ModelVersion, now: Instant) -> Arc<Fleet> {
        let found = self
            .fleets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&version.id)
            .filter(|fleet| fleet.serves(version))
            .cloned();
        let fleet = match found {
            Some(fleet) => fleet,
            None => {
                let fleet = Arc::new(Fleet::new(self, version, shape_of(version)));
                let mut fleets = self.fleets.write().unwrap_or_else(PoisonError::into_inner);
                self.forget_idle(&mut fleets, now);
                fleets.insert(version.id, Arc::clone(&fleet));
                fleet
            }
        };
        fleet.used(now);
        fleet
    }

    /// Drops the fleets not used for [`IDLE`], and the least recently used while there are
    /// [`MAX_FLEETS`].
    fn forget_idle(&self, fleets: &mut HashMap<Uuid, Arc<Fleet>>, now: Instant) {
        let now = self.second(now);
        let idle = IDLE.as_secs();
        fleets.retain(|_, fleet| fleet.last_used() + idle > now);
        while fleets.len() >= MAX_FLEETS {
            let Some(oldest) = fleets
                .iter()
                .min_by_key(|(_, fleet)| fleet.last_used())
                .map(|(id, _)| *id)
            else {
                break;
            };
            fleets.remove(&oldest);
        }
    }

    /// How many fleets are kept.
    pub fn fleets(&self) -> usize {
        self.fleets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// What a fleet is built from: the endpoints' URLs and weights, in order.
fn shape_of(version: &ModelVersion) -> Vec<(EndpointUrl, u32)> {
    version
        .endpoints
        .iter()
        .map(|e| (e.url.clone(), e.weight.get()))
        .collect()
}

/// The endpoints of one version on this replica.
#[derive(Debug)]
pub struct Fleet {
    model: String,
    version: i32,
    shape: Vec<(EndpointUrl, u32)>,
    endpoints: Box<[EndpointHealth]>,
    epoch: Instant,
    ejection: Ejection,
    /// Its model has series of its own (`metrics.max_models`): the state gauge is kept.
    labelled: bool,
    /// Seconds since the epoch it was last used.
    last_used: AtomicU64,
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

impl Fleet {
    fn new(balancer: &Balancer, version: &ModelVersion, shape: Vec<(EndpointUrl, u32)>) -> Self {
        let fleet = Self {
            model: version.model.as_str().to_owned(),
            version: version.version.get(),
            endpoints: shape
                .iter()
                .map(|(_, weight)| EndpointHealth::new(*weight, balancer.ejection))
                .collect(),
            shape,
            epoch: balancer.epoch,
            ejection: balancer.ejection,
            labelled: meters::model_label(version.model.as_str()) == version.model.as_str(),
            last_used: AtomicU64::new(0),
        };
        for index in 0..fleet.endpoints.len() {
            fleet.show_state(index, true);
        }
        fleet
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

    fn used(&self, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        self.last_used.store(second, Ordering::Relaxed);
    }

    fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Milliseconds since the epoch, plus one (0 means "never").
    fn millis(&self, now: Instant) -> u64 {
        let millis = now.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(millis).unwrap_or(u64::MAX - 1) + 1
    }

    /// Sets `maas_upstream_endpoint_state` of endpoint `index`.
    fn show_state(&self, index: usize, up: bool) {
        if self.labelled {
            metrics::gauge!(names::UPSTREAM_ENDPOINT_STATE,
                "model" => self.model.clone(), "version" => self.version.to_string(),
                "endpoint" => index.to_string())
            .set(if up { 1.0 } else { 0.0 });
        }
    }

    fn record(&self, index: usize, change: Change) {
        match change {
            Change::None => {}
            Change::Ejected => {
                metrics::counter!(names::UPSTREAM_EJECTIONS_TOTAL,
                    "model" => meters::model_label(&self.model).to_owned())
                .increment(1);
                self.show_state(index, false);
            }
            Change::Reinstated => self.show_state(index, true),
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
        let in_rotation = |index: &usize| open(index) && self.endpoints[*index].is_in();
        let total: u64 = indices
            .clone()
            .filter(in_rotation)
            .map(|i| u64::from(self.endpoints[i].weight()))
            .sum();
        if total == 0 {
            let index = indices
                .filter(open)
                .min_by_key(|i| self.endpoints[*i].last_failure())?;
            return Some(self.lease(index, false));
        }
        let draw = || {
            let mut left = random() % total;
            indices
                .clone()
                .filter(in_rotation)
                .find(|i| {
                    let weight = u64::from(self.endpoints[*i].weight());
                    let here = left < weight;
                    left = left.saturating_sub(weight);
                    here
                })
                .unwrap_or(0)
        };
        let (a, b) = (draw(), draw());
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
        self.fleet.record(self.index, change);
    }

    /// The endpoint answered.
    pub fn succeeded(&mut self) {
        self.reported = true;
        let change = self.endpoint().succeeded(self.fleet.ejection);
        self.fleet.record(self.index, change);
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
