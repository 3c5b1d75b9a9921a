//! The fleets a replica keeps, and which one goes when there is no room: bookkeeping that runs
//! under the balancer's write lock, so every step of it is bounded, whatever members do.
//!
//! - A fleet is kept by its version's id; a version whose endpoints change gets a new fleet in
//!   the old one's place.
//! - At most [`MAX_FLEETS`] are kept, and at most [`MAX_FLEETS_PER_MODEL`] of one model. A new
//!   fleet past either bound takes the place of one not used for [`BUSY`]: of its own model's
//!   the least recently used, of all the oldest kept that was not used since (a queue in the
//!   order fleets were kept, each looked at is either dropped or, used meanwhile, put back at
//!   its end; at most [`EXAMINE`] of them per new fleet). When none may go, the new fleet
//!   serves its call without being kept. So a member who cycles through versions of its models
//!   costs each new fleet a bounded amount of work, pushes out only its own model's fleets or
//!   ones nobody used for a minute, and never the endpoint health of a version in use.
//! - Fleets not used for [`IDLE`] are dropped by [`Table::sweep`], which runs periodically
//!   (see [`super::sweep_every`]), never on a call.
//! - At most `metrics.max_models` kept fleets are *labelled*: their endpoints' states are
//!   rendered on `/metrics`; a fleet that goes gives its place to the next one kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::Fleet;

/// Most versions whose endpoints' health is kept.
pub const MAX_FLEETS: usize = 10_000;
/// Most versions of one model whose endpoints' health is kept.
pub const MAX_FLEETS_PER_MODEL: usize = 64;
/// A fleet used this recently is not dropped to make room for another.
pub const BUSY: Duration = Duration::from_secs(60);
/// A version not served for this long has its endpoints' health forgotten (by the sweep).
pub const IDLE: Duration = Duration::from_secs(600);
/// Most kept fleets looked at for one that may go, per new fleet (those replaced meanwhile,
/// met in the queue and dropped from it, are not counted: each was put there by one fleet).
pub const EXAMINE: usize = 8;

/// The kept fleets.
#[derive(Debug, Default)]
pub(super) struct Table {
    by_id: HashMap<Uuid, Arc<Fleet>>,
    /// Each kept fleet's version id and serial, in the order they were kept (or last looked at
    /// and found in use); an entry whose fleet is no longer kept is dropped when met.
    order: VecDeque<(Uuid, u64)>,
    /// The versions kept of each model (at most [`MAX_FLEETS_PER_MODEL`]).
    by_model: HashMap<String, Vec<Uuid>>,
    /// How many kept fleets are labelled.
    labelled: usize,
}

impl Table {
    /// The fleet kept for version `id`.
    pub fn get(&self, id: &Uuid) -> Option<&Arc<Fleet>> {
        self.by_id.get(id)
    }

    /// How many fleets are kept.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The labelled fleets.
    pub fn labelled(&self) -> impl Iterator<Item = &Arc<Fleet>> {
        self.by_id.values().filter(|fleet| fleet.is_labelled())
    }

    /// Keeps `fleet`, new for version `id`, if there is room or room can be made (see the
    /// module's documentation), labelled when `label` and fewer than `max_labelled` are; at
    /// second `now`. Hands back the fleet the call is to use: the one kept for `id` already
    /// when it has the same endpoints (another call built it meanwhile), else `fleet`, kept or
    /// not.
    pub fn keep(
        &mut self,
        id: Uuid,
        fleet: Arc<Fleet>,
        label: bool,
        max_labelled: usize,
        now: u64,
    ) -> Arc<Fleet> {
        if let Some(current) = self.by_id.get(&id) {
            if current.same_shape(&fleet) {
                return Arc::clone(current);
            }
            // Its endpoints changed: the new fleet takes the old one's place, and label.
            let label = current.is_labelled();
            self.drop_fleet(&id);
            self.insert(id, &fleet, label, usize::MAX);
            return fleet;
        }
        let of_model = self.by_model.get(fleet.model()).map_or(0, Vec::len);
        if of_model >= MAX_FLEETS_PER_MODEL && !self.make_room_in_model(fleet.model(), now) {
            return fleet;
        }
        if self.by_id.len() >= MAX_FLEETS && !self.make_room(now) {
            return fleet;
        }
        self.insert(id, &fleet, label, max_labelled);
        fleet
    }

    fn insert(&mut self, id: Uuid, fleet: &Arc<Fleet>, label: bool, max_labelled: usize) {
        if label && self.labelled < max_labelled {
            fleet.set_labelled(true);
            self.labelled += 1;
        }
        self.by_id.insert(id, Arc::clone(fleet));
        self.order.push_back((id, fleet.serial()));
        self.by_model
            .entry(fleet.model().to_owned())
            .or_default()
            .push(id);
        // Entries of fleets replaced since are dropped when met; should replacements pile
        // them up faster than that, once in a while all at once (a pass per as many entries).
        if self.order.len() > 2 * self.by_id.len() + 2 * EXAMINE {
            self.compact();
        }
    }

    /// Stops keeping the fleet of version `id` (its entry in the queue is dropped when met).
    fn drop_fleet(&mut self, id: &Uuid) {
        let Some(fleet) = self.by_id.remove(id) else {
            return;
        };
        if fleet.is_labelled() {
            fleet.set_labelled(false);
            self.labelled -= 1;
        }
        if let Some(ids) = self.by_model.get_mut(fleet.model()) {
            ids.retain(|kept| kept != id);
            if ids.is_empty() {
                self.by_model.remove(fleet.model());
            }
        }
    }

    fn may_go(fleet: &Fleet, now: u64) -> bool {
        fleet.last_used() + BUSY.as_secs() <= now
    }

    /// Drops `model`'s least recently used fleet, unless it is in use.
    fn make_room_in_model(&mut self, model: &str, now: u64) -> bool {
        let oldest = self.by_model.get(model).and_then(|ids| {
            ids.iter()
                .filter_map(|id| self.by_id.get(id).map(|fleet| (*id, fleet.last_used())))
                .min_by_key(|(_, last_used)| *last_used)
        });
        match oldest {
            Some((id, last_used)) if last_used + BUSY.as_secs() <= now => {
                self.drop_fleet(&id);
                true
            }
            _ => false,
        }
    }

    /// Drops the first fleet of the queue not used for [`BUSY`], looking at [`EXAMINE`] at most.
    fn make_room(&mut self, now: u64) -> bool {
        let mut examined = 0;
        while examined < EXAMINE {
            let Some((id, serial)) = self.order.pop_front() else {
                return false;
            };
            let Some(fleet) = self.by_id.get(&id).filter(|f| f.serial() == serial) else {
                continue;
            };
            examined += 1;
            if Self::may_go(fleet, now) {
                self.drop_fleet(&id);
                return true;
            }
            self.order.push_back((id, serial));
        }
        false
    }

    /// Drops the queue's entries of fleets no longer kept.
    fn compact(&mut self) {
        let by_id = &self.by_id;
        self.order
            .retain(|(id, serial)| by_id.get(id).is_some_and(|fleet| fleet.serial() == *serial));
    }

    /// Drops the fleets not used for [`IDLE`] at second `now`; says how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let idle: Vec<Uuid> = self
            .by_id
            .iter()
            .filter(|(_, fleet)| fleet.last_used() + IDLE.as_secs() <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &idle {
            self.drop_fleet(id);
        }
        self.compact();
        idle.len()
    }

    /// Queue entries, kept fleets' and stale ones (for the tests' bounds).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.order.len()
    }
}
