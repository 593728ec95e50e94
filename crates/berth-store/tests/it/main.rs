//! Store tests: the contract every backend passes ([`contract`]), run on
//! SQLite (real files) and PostgreSQL (a real server), and what is
//! particular to each backend.

mod contract;
mod copy;
mod postgres;
mod sqlite;

use berth_core::model::*;
use berth_core::state::{Health, Stage, Status};
use berth_store::*;
use chrono::Utc;
use std::path::Path;

/// One `#[tokio::test]` per contract property, on stores from `$make`
/// (`None`: the backend is missing here and the test is skipped, which only
/// happens outside CI).
#[macro_export]
macro_rules! contract_tests {
    ($make:path) => {
        $crate::contract_tests!(@each $make;
            projects_come_with_production,
            secrets_are_masked_on_read_and_never_in_clear,
            a_stale_save_is_refused_and_writes_nothing,
            log_cursor_never_skips_or_repeats_under_concurrent_writers,
            deliveries_and_manifests,
            certificate_keys_and_acme_accounts_are_sealed_and_domains_show_the_state,
            invalid_input_writes_nothing,
            repository_credentials_and_deploy_keys_are_sealed_and_given_to_fetches_only,
            build_flags_of_variables_are_kept,
            deployments_list_newest_first_and_one_active_per_slot,
            logs_are_tagged_ordered_and_resumable,
            environments_and_external_routes,
            log_retention_drops_old_lines_and_caps_each_project,
            runs_are_kept_newest_first_and_a_firing_runs_once,
            tokens_are_kept_by_hash_and_revoked,
            audit_log_lists_newest_first_by_project,
            console_sessions_survive_until_they_expire,
            backups_are_kept_per_volume_newest_first,
            notifications_are_sealed_and_each_event_is_queued_once,
            maintenance_is_kept_per_environment_and_service,
            session_records_are_the_unexpired_sessions,
            dns_update_keys_are_sealed_and_the_certificates_stamp_moves_on_every_write,
            a_deposed_leaders_writes_of_every_kind_are_refused,
            metric_minutes_are_kept_per_service_replaced_and_pruned,
            metric_minutes_of_several_members_are_summed_with_p95_of_the_merged_histogram,
            pushed_repos_are_compare_and_set_and_cancel_requests_kept_once,
        );
    };
    (@each $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(h) = $make().await else { return };
                $crate::contract::$name(&h).await;
            }
        )*
    };
}

pub fn new_project(name: &str) -> NewProject {
    NewProject {
        name: name.into(),
        repo: "/srv/repo".into(),
        default_branch: "main".into(),
        retain_images: 3,
        webhook_secret: Some("whsec-very-secret-1".into()),
        deploy_key: None,
        created_at: Utc::now(),
    }
}

pub fn deployment(id: &str, project: &str, at: chrono::DateTime<Utc>) -> Deployment {
    Deployment {
        id: id.into(),
        project_name: project.into(),
        service_name: "web".into(),
        environment_name: "production".into(),
        status: Status::Queued,
        promotion_stage: Stage::Pending,
        health: Health::Pending,
        is_active: false,
        route_url: None,
        preview_url: None,
        failure_message: None,
        created_at: at,
        started_at: None,
        completed_at: None,
        reference: "main".into(),
        commit: Some(Commit {
            sha: "0123456789abcdef".into(),
            branch: Some("main".into()),
            message: "m".into(),
            author: "a".into(),
        }),
        trigger: Trigger::Manual,
        source_deployment_id: None,
        image: None,
        build: BuildInfo::default(),
        steps: vec![Step::pending(StepName::Clone)],
        canary_weight: None,
        replicas: 1,
        instances: Vec::new(),
        bake_until: None,
        runtime: None,
        source_repo: None,
        version: 0,
    }
}

/// Every byte of every file under `dir`, for "no secret in clear" checks.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}
