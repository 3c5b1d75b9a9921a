//! `maas_upstream_endpoint_state` on `/metrics`: written at each scrape from the fleets kept
//! then, so that its series are exactly the endpoints of the labelled fleets (at most
//! `metrics.max_models` versions): an endpoint taken out of its version's list, a fleet rebuilt
//! with fewer endpoints, or one forgotten leaves no series behind, and no member can grow the
//! text by creating versions.

use maas_telemetry::exposition::GaugeFamily;
use maas_telemetry::names;

use super::Balancer;

const HELP: &str = "Endpoints of the versions this replica serves: 1 in rotation, 0 taken out after failures (at most metrics.max_models versions)";

impl Balancer {
    /// Appends `maas_upstream_endpoint_state{model,version,endpoint}` of every labelled fleet
    /// to `text`, in the order of model, version and endpoint (nothing when there is none).
    pub fn render_states(&self, text: &mut String) {
        let mut fleets = self.labelled();
        fleets.sort_by(|a, b| (&a.model, a.version).cmp(&(&b.model, b.version)));
        let mut family = GaugeFamily::new(text, names::UPSTREAM_ENDPOINT_STATE, HELP);
        for fleet in &fleets {
            let version = fleet.version.to_string();
            for (i, endpoint) in fleet.endpoints.iter().enumerate() {
                let index = i.to_string();
                let labels = [
                    ("model", fleet.model.as_str()),
                    ("version", version.as_str()),
                    ("endpoint", index.as_str()),
                ];
                family.sample(&labels, if endpoint.is_in() { 1.0 } else { 0.0 });
            }
        }
    }
}
