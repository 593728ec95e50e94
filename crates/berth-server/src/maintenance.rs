//! Maintenance mode (`berth maintenance on|off`): the hostnames of a
//! service, or of every service of an environment, answered by the edge
//! with 503, `Retry-After` and berth's maintenance page.
//!
//! What is in maintenance lives in the store (so it survives a restart and
//! every server of a cluster applies it); the edge learns it through the
//! route policies ([`berth_edge::Policy::maintenance`]): every place that
//! builds a route's policy asks [`Deployer::route_policy`] (or, for a whole
//! table, [`Deployer::desired_routes`] reads the list once), so turning it on
//! or off is one table swap ([`Deployer::sync_routes`]) and a deployment
//! that switches in while it is on stays behind the page. Health probes go
//! to the instances, not through the edge: they are unaffected.

use crate::deployer::Deployer;
use berth_core::model::{in_maintenance, Deployment, Maintenance};
use berth_edge::Policy;

impl Deployer {
    /// Whether `d`'s service is in maintenance; a store that cannot be
    /// read gives `false` (logged): a maintenance page is never made up.
    pub(crate) async fn in_maintenance(&self, d: &Deployment) -> bool {
        match self.store.list_maintenance(Some(&d.project_name)).await {
            Ok(list) => covers(&list, d),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read what is in maintenance");
                false
            }
        }
    }

    /// The policy of `d`'s routes: its `[services.<name>.edge]` with the
    /// maintenance flag of its service.
    pub(crate) async fn route_policy(&self, d: &Deployment) -> Policy {
        let mut p = crate::pipeline::replicas::policy(d, None);
        p.maintenance = self.in_maintenance(d).await;
        p
    }
}

/// Whether `list` puts `d`'s service in maintenance.
pub(crate) fn covers(list: &[Maintenance], d: &Deployment) -> bool {
    in_maintenance(list, &d.project_name, &d.environment_name, &d.service_name)
}
