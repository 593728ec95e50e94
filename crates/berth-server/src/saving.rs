//! Saving deployment records under the store's compare-and-set.
//!
//! Every save names the version its copy was read with; a save that lost a
//! race is refused ([`StoreError::Stale`]) and the writer redoes its change
//! on the fresh record, or gives up when the change no longer applies. Who
//! owns what:
//! - the pipeline owns its deployment's progress (steps, stage, status,
//!   image, route); once the deployment serves, the health monitor owns its
//!   `health`, the instance's address and the instances (a replica
//!   replaced, its health);
//! - the health monitor records a health change only while the deployment
//!   is live (active or draining the previous one): a supersede, rollback or
//!   stop saved in between is never undone by a monitor holding an older
//!   copy.

use berth_core::model::Deployment;
use berth_core::state::{Event, Health, Stage};
use berth_store::{Store, StoreError};

/// Attempts before a writer gives up on a record others keep changing.
const ATTEMPTS: usize = 5;

/// What became of a save.
#[derive(Debug, PartialEq, Eq)]
pub enum Saved {
    /// Written; the copy carries the new version.
    Written,
    /// Not written: on the fresh record the change no longer applies.
    GaveUp,
}

/// Save `d`; when another writer saved first, `redo(mine, fresh)` rebuilds
/// the change on the fresh record (returning `false` when it no longer
/// applies) and the save is tried again.
pub async fn save_retrying<F>(
    store: &dyn Store,
    d: &mut Deployment,
    mut redo: F,
) -> Result<Saved, StoreError>
where
    F: FnMut(&mut Deployment, Deployment) -> bool + Send,
{
    for _ in 0..ATTEMPTS {
        match store.save_deployments(&mut [&mut *d], None).await {
            Ok(()) => return Ok(Saved::Written),
            Err(e) if e.is_stale() => {
                let fresh = store.get_deployment(&d.id).await?;
                tracing::debug!(deployment = d.id, "stale save, redone on the fresh record");
                if !redo(d, fresh) {
                    return Ok(Saved::GaveUp);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend(format!(
        "deployment {} kept changing; gave up saving after {ATTEMPTS} attempts",
        d.id
    )))
}

/// The pipeline's redo: its own progress wins, the monitor's fields (health,
/// the followed address) come from the fresh record. A deployment someone
/// else ended (cancelled, failed at restart) is not revived.
pub fn rebase_pipeline(mine: &mut Deployment, fresh: Deployment) -> bool {
    if fresh.status.is_terminal() && !mine.status.is_terminal() {
        return false;
    }
    mine.version = fresh.version;
    mine.is_active = fresh.is_active;
    if matches!(
        fresh.promotion_stage,
        Stage::Active | Stage::DrainingPrevious
    ) {
        mine.health = fresh.health;
        if let (Some(m), Some(f)) = (mine.runtime.as_mut(), fresh.runtime) {
            if m.instance_id == f.instance_id {
                m.address = f.address;
            }
        }
        // Once live, the monitor owns the instances (replaced, health).
        if !fresh.instances.is_empty() {
            mine.instances = fresh.instances;
        }
    }
    true
}

/// Whether the health monitor may record health on this record.
pub fn is_live(d: &Deployment) -> bool {
    matches!(d.promotion_stage, Stage::Active | Stage::DrainingPrevious)
}

/// Record a health change the monitor observed on `current` (its copy read
/// before the probe). Redone on the fresh record when another writer saved
/// in between, and dropped when the deployment is no longer live. Returns
/// the saved record.
pub async fn record_health(
    store: &dyn Store,
    current: &Deployment,
    health: Health,
) -> Result<Option<Deployment>, StoreError> {
    let apply = |d: &mut Deployment| -> bool {
        if !is_live(d) || d.health == health {
            return false;
        }
        match d.apply(Event::HealthChanged(health)) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(deployment = d.id, event = ?Event::HealthChanged(health), error = %e, "illegal transition");
                false
            }
        }
    };
    let mut d = current.clone();
    if !apply(&mut d) {
        return Ok(None);
    }
    let saved = save_retrying(store, &mut d, |mine, fresh| {
        *mine = fresh;
        apply(mine)
    })
    .await?;
    Ok((saved == Saved::Written).then_some(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::model::{BuildInfo, RuntimeInfo, Trigger};
    use berth_core::state::Status;
    use berth_store::{Activate, Cipher, NewProject, Slot, SqliteStore};
    use chrono::Utc;

    fn dep(id: &str) -> Deployment {
        Deployment {
            id: id.into(),
            project_name: "shop".into(),
            service_name: "web".into(),
            environment_name: "production".into(),
            status: Status::Queued,
            promotion_stage: Stage::Pending,
            health: Health::Pending,
            is_active: false,
            route_url: None,
            preview_url: None,
            failure_message: None,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            reference: "main".into(),
            commit: None,
            trigger: Trigger::Manual,
            source_deployment_id: None,
            image: None,
            build: BuildInfo::default(),
            steps: vec![],
            canary_weight: None,
            replicas: 1,
            instances: Vec::new(),
            bake_until: None,
            runtime: Some(RuntimeInfo {
                instance_id: format!("c-{id}"),
                instance_name: id.into(),
                address: Some("127.0.0.1:1000".into()),
                ..Default::default()
            }),
            source_repo: None,
            version: 0,
        }
    }

    async fn store(dir: &std::path::Path) -> SqliteStore {
        let s = SqliteStore::open(dir, Cipher::from_key([1; 32])).unwrap();
        s.create_project(NewProject {
            name: "shop".into(),
            repo: "/srv/shop".into(),
            default_branch: "main".into(),
            retain_images: 3,
            webhook_secret: None,
            deploy_key: None,
            created_at: Utc::now(),
        })
        .await
        .unwrap();
        s
    }

    /// `a` active and healthy, saved.
    async fn live(s: &SqliteStore) -> Deployment {
        let mut a = dep("a");
        s.insert_deployment(&a).await.unwrap();
        a.status = Status::Succeeded;
        a.promotion_stage = Stage::Active;
        a.health = Health::Healthy;
        let slot = Slot::of(&a);
        s.save_deployments(
            &mut [&mut a],
            Some(Activate {
                slot,
                deployment_id: Some("a".into()),
            }),
        )
        .await
        .unwrap();
        a
    }

    #[tokio::test]
    async fn a_stale_monitor_save_cannot_undo_a_supersede() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        live(&s).await;
        // The monitor reads `a` before its probe...
        let monitor_copy = s.get_deployment("a").await.unwrap();
        // ...a newer deployment supersedes it meanwhile...
        let mut b = dep("b");
        s.insert_deployment(&b).await.unwrap();
        let mut a = s.get_deployment("a").await.unwrap();
        a.apply(Event::Supersede).unwrap();
        b.status = Status::Running;
        b.promotion_stage = Stage::DrainingPrevious;
        let slot = Slot::of(&b);
        s.save_deployments(
            &mut [&mut b, &mut a],
            Some(Activate {
                slot,
                deployment_id: Some("b".into()),
            }),
        )
        .await
        .unwrap();
        // ...and the probe failed: the health change is not recorded, and
        // `a` stays superseded.
        let saved = record_health(&s, &monitor_copy, Health::Unhealthy)
            .await
            .unwrap();
        assert_eq!(saved, None);
        let a = s.get_deployment("a").await.unwrap();
        assert_eq!(a.promotion_stage, Stage::Superseded);
        assert_eq!(a.health, Health::Healthy);
        assert!(!a.is_active);
    }

    #[tokio::test]
    async fn a_monitor_redoes_its_change_on_a_fresh_live_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        live(&s).await;
        let monitor_copy = s.get_deployment("a").await.unwrap();
        // Another writer (the address follower) saved in between.
        let mut other = s.get_deployment("a").await.unwrap();
        other.runtime.as_mut().unwrap().address = Some("127.0.0.1:2000".into());
        s.save_deployments(&mut [&mut other], None).await.unwrap();
        let saved = record_health(&s, &monitor_copy, Health::Unhealthy)
            .await
            .unwrap()
            .expect("still live: recorded");
        assert_eq!(saved.health, Health::Unhealthy);
        let a = s.get_deployment("a").await.unwrap();
        assert_eq!(a.health, Health::Unhealthy);
        assert_eq!(a.promotion_stage, Stage::Active);
        assert_eq!(
            a.runtime.unwrap().address.as_deref(),
            Some("127.0.0.1:2000"),
            "the other writer's change is kept"
        );
    }

    #[tokio::test]
    async fn the_pipeline_keeps_its_progress_and_takes_the_monitors_fields() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let mut mine = live(&s).await;
        // The monitor marks it unhealthy after the pipeline read it.
        let monitor_copy = s.get_deployment("a").await.unwrap();
        record_health(&s, &monitor_copy, Health::Unhealthy)
            .await
            .unwrap()
            .unwrap();
        mine.canary_weight = Some(50);
        let saved = save_retrying(&s, &mut mine, rebase_pipeline).await.unwrap();
        assert_eq!(saved, Saved::Written);
        let a = s.get_deployment("a").await.unwrap();
        assert_eq!(a.canary_weight, Some(50));
        assert_eq!(a.health, Health::Unhealthy);
        // A deployment someone else ended is not revived.
        let mut ended = s.get_deployment("a").await.unwrap();
        ended.status = Status::Failed;
        s.save_deployments(&mut [&mut ended], None).await.unwrap();
        mine.status = Status::Running;
        assert_eq!(
            save_retrying(&s, &mut mine, rebase_pipeline).await.unwrap(),
            Saved::GaveUp
        );
        assert_eq!(s.get_deployment("a").await.unwrap().status, Status::Failed);
    }
}
