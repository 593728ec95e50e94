//! Step 10's clean-up: image retention (the last N per slot, the active and
//! unfinished deployments' images, nothing berth did not build).

use crate::deployer::Deployer;
use berth_core::model::Deployment;
use berth_store::Slot;

impl Deployer {
    /// Retention: keep the images of the last N deployments of each slot
    /// of the project's existing environments (N = the project's
    /// `retain_images`; a torn-down environment keeps none), always the
    /// active deployments' and those of unfinished ones; remove only images
    /// berth built (`berth/…`) that no kept deployment uses. Returns a note
    /// for the finalize step.
    pub(crate) async fn prune_images(&self, slot: &Slot) -> String {
        match self.prune_project_images(&slot.project).await {
            Ok(removed) if removed.is_empty() => "retention: no image to remove".into(),
            Ok(removed) => format!(
                "retention: removed {} image(s): {}",
                removed.len(),
                removed.join(", ")
            ),
            Err(e) => format!("retention: skipped ({e})"),
        }
    }

    pub(crate) async fn prune_project_images(&self, project: &str) -> anyhow::Result<Vec<String>> {
        let p = self.store.get_project(project).await?;
        let all = self
            .store
            .list_deployments(&berth_store::DeploymentQuery {
                project: Some(project.to_string()),
                ..Default::default()
            })
            .await?;
        // A torn-down environment keeps its history, not its images.
        let envs: std::collections::HashSet<String> = self
            .store
            .list_environments(project)
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect();
        let live: Vec<Deployment> = all
            .iter()
            .filter(|d| envs.contains(&d.environment_name))
            .cloned()
            .collect();
        let keep = images_to_keep(&live, p.retain_images as usize);
        let mut candidates: Vec<String> = all
            .iter()
            .filter_map(|d| d.image.as_ref().map(|i| i.reference.clone()))
            .filter(|r| r.starts_with("berth/") && !keep.contains(r))
            .collect();
        candidates.sort();
        candidates.dedup();
        let mut removed = Vec::new();
        let _exclusive = self.image_gate.write().await;
        for image in candidates {
            match self.images.exists(&image).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(image, error = %e, "cannot check image; kept");
                    continue;
                }
            }
            match self.images.remove(&image).await {
                Ok(()) => removed.push(image),
                Err(e) => tracing::info!(image, error = %e, "image kept"),
            }
        }
        Ok(removed)
    }
}

/// The image refs retention keeps: per slot, the images of the newest
/// `n` deployments that ran (succeeded), plus every active deployment's,
/// every unfinished deployment's and every warm one's (bake window) image.
pub(crate) fn images_to_keep(all: &[Deployment], n: usize) -> std::collections::HashSet<String> {
    use std::collections::{HashMap, HashSet};
    let mut keep = HashSet::new();
    let mut per_slot: HashMap<Slot, Vec<&Deployment>> = HashMap::new();
    for d in all {
        let Some(img) = &d.image else { continue };
        // A warm deployment (bake window) may be flipped back to at once.
        if d.is_active || !d.status.is_terminal() || super::bake::has_instances(d) {
            keep.insert(img.reference.clone());
        }
        if d.status == berth_core::state::Status::Succeeded {
            per_slot.entry(Slot::of(d)).or_default().push(d);
        }
    }
    for (_, mut ds) in per_slot {
        ds.sort_by_key(|d| std::cmp::Reverse(d.completed_at));
        let mut distinct = Vec::new();
        for d in ds {
            let r = d
                .image
                .as_ref()
                .map(|i| i.reference.clone())
                .unwrap_or_default();
            if !distinct.contains(&r) {
                distinct.push(r);
            }
            if distinct.len() >= n.max(1) {
                break;
            }
        }
        keep.extend(distinct);
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::model::{BuildInfo, ImageInfo, Trigger};
    use berth_core::state::{Health, Stage, Status};

    fn dep(
        id: &str,
        env: &str,
        image: &str,
        minute: i64,
        stage: Stage,
        active: bool,
    ) -> Deployment {
        let t = chrono::DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap();
        Deployment {
            id: id.into(),
            project_name: "p".into(),
            service_name: "web".into(),
            environment_name: env.into(),
            status: if stage == Stage::Building {
                Status::Running
            } else {
                Status::Succeeded
            },
            promotion_stage: stage,
            health: Health::Healthy,
            is_active: active,
            route_url: None,
            preview_url: None,
            failure_message: None,
            created_at: t,
            started_at: Some(t),
            completed_at: Some(t),
            reference: "main".into(),
            commit: None,
            trigger: Trigger::Manual,
            source_deployment_id: None,
            image: Some(ImageInfo {
                reference: image.into(),
                digest: None,
            }),
            build: BuildInfo::default(),
            steps: vec![],
            canary_weight: None,
            replicas: 1,
            instances: Vec::new(),
            bake_until: None,
            runtime: None,
            source_repo: None,
            version: 0,
        }
    }

    #[test]
    fn retention_keeps_last_n_per_slot_active_and_shared_images() {
        let all = vec![
            dep(
                "1",
                "production",
                "berth/p-web:a",
                1,
                Stage::Superseded,
                false,
            ),
            dep(
                "2",
                "production",
                "berth/p-web:b",
                2,
                Stage::Superseded,
                false,
            ),
            dep(
                "3",
                "production",
                "berth/p-web:c",
                3,
                Stage::Superseded,
                false,
            ),
            // A rollback to b: b is active again, c rolled back.
            dep("4", "production", "berth/p-web:b", 4, Stage::Active, true),
            // Staging runs image a: production's pruning must not remove it.
            dep("5", "staging", "berth/p-web:a", 5, Stage::Active, true),
            dep(
                "6",
                "production",
                "berth/p-web:d",
                6,
                Stage::Building,
                false,
            ),
        ];
        let keep = images_to_keep(&all, 2);
        assert!(keep.contains("berth/p-web:b"), "active");
        assert!(
            keep.contains("berth/p-web:c"),
            "second most recent distinct"
        );
        assert!(
            keep.contains("berth/p-web:a"),
            "used by staging's active deployment"
        );
        assert!(keep.contains("berth/p-web:d"), "in progress");
        let keep1 = images_to_keep(&all[..4], 1);
        assert_eq!(keep1.len(), 1);
        assert!(keep1.contains("berth/p-web:b"));
        // A warm deployment (bake window) keeps its image beyond the last N.
        let mut warm = all[..4].to_vec();
        warm[0].runtime = Some(berth_core::model::RuntimeInfo::default());
        warm[0].bake_until = Some(chrono::Utc::now());
        let keep1 = images_to_keep(&warm, 1);
        assert!(keep1.contains("berth/p-web:a"), "warm: {keep1:?}");
    }
}
