//! `berth admin copy-store`: everything in one store, written into another
//! through the [`Store`] interface (so any backend pair works, and secrets
//! are opened by the source and sealed again by the target, never written
//! in clear).
//!
//! What is copied: projects (webhook secret, repository credentials, deploy
//! key), environments, variables and secrets, deployments (history, the
//! active deployment of each slot) and their log lines in cursor order,
//! domains (with their verification), certificates, ACME accounts, external
//! routes, build manifests, the webhook deliveries seen, what is in
//! maintenance, one-off and job runs (with their kept output), volume backup records (the archives stay where they are: the
//! data dir's `backups/` or the bucket), notification endpoints (URL and
//! secret sealed again) with their delivery outbox, API tokens (their
//! hashes: the same tokens keep working), the audit log, the console
//! sessions not expired (people stay signed in) and the repositories pushed
//! with `git push` (their bundles). Edge policies are part of
//! each deployment's recorded settings. Log cursors (`seq`) are numbered
//! again by the target, in the same order; the audit log is copied only
//! into a target without one.

use crate::{Activate, NewLogLine, NewProject, Result, Slot, Store, StoreError, VarFlags};
use berth_core::model::PRODUCTION;

/// How many of each kind were copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub projects: usize,
    pub environments: usize,
    pub variables: usize,
    pub deployments: usize,
    pub log_lines: usize,
    pub domains: usize,
    pub certificates: usize,
    pub acme_accounts: usize,
    /// TSIG keys of DNS servers (ACME DNS-01).
    pub dns_update_keys: usize,
    pub routes: usize,
    pub manifests: usize,
    pub deliveries: usize,
    pub tokens: usize,
    pub audit_entries: usize,
    pub runs: usize,
    pub backups: usize,
    pub notifications: usize,
    pub notification_deliveries: usize,
    pub sessions: usize,
    /// Repositories pushed with `git push` (their bundles).
    pub pushed_repos: usize,
    /// Projects already in the target (only with `force`), left as they were.
    pub kept: usize,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} projects, {} environments, {} variables, {} deployments, {} log lines, {} domains, {} certificates, {} acme accounts, {} dns update keys, {} routes, {} manifests, {} webhook deliveries, {} tokens, {} audit entries, {} runs, {} backups, {} notification endpoints, {} notification deliveries, {} console sessions, {} pushed repositories",
            self.projects,
            self.environments,
            self.variables,
            self.deployments,
            self.log_lines,
            self.domains,
            self.certificates,
            self.acme_accounts,
            self.dns_update_keys,
            self.routes,
            self.manifests,
            self.deliveries,
            self.tokens,
            self.audit_entries,
            self.runs,
            self.backups,
            self.notifications,
            self.notification_deliveries,
            self.sessions,
            self.pushed_repos
        )?;
        if self.kept > 0 {
            write!(f, "; {} projects already in the target kept", self.kept)?;
        }
        Ok(())
    }
}

/// What the target already holds, if anything.
async fn contents(s: &dyn Store) -> Result<Option<String>> {
    let projects = s.list_projects().await?.len();
    let routes = s.list_external_routes().await?.len();
    let domains = s.list_domains(None).await?.len();
    let certs = s.list_certificates().await?.len();
    Ok((projects + routes + domains + certs > 0).then(|| {
        format!("{projects} projects, {routes} routes, {domains} domains, {certs} certificates")
    }))
}

/// Lines read and written per batch.
const LOG_BATCH: u32 = 2000;

/// Copy everything from `from` into `to`. A target that holds anything is
/// refused unless `force`; with `force`, projects already there are kept
/// as they are (nothing of theirs is overwritten).
pub async fn copy_store(from: &dyn Store, to: &dyn Store, force: bool) -> Result<CopyReport> {
    if let Some(what) = contents(to).await? {
        if !force {
            return Err(StoreError::Invalid(format!(
                "the target store is not empty ({what}); use --force to copy into it anyway"
            )));
        }
    }
    let mut r = CopyReport::default();
    let mut copied_projects = std::collections::HashSet::new();
    for p in from.list_projects().await? {
        let access = from.repo_access(&p.name).await?;
        let created = to
            .create_project(NewProject {
                name: p.name.clone(),
                repo: access.url.clone(),
                default_branch: p.default_branch.clone(),
                retain_images: p.retain_images,
                webhook_secret: from.webhook_secret(&p.name).await?,
                deploy_key: access.deploy_key.clone(),
                created_at: p.created_at,
            })
            .await;
        match created {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) if force => {
                r.kept += 1;
                continue;
            }
            Err(e) => return Err(e),
        }
        r.projects += 1;
        copied_projects.insert(p.name.clone());
        for env in from.list_environments(&p.name).await? {
            if env.name != PRODUCTION {
                to.create_environment(env.clone()).await?;
                r.environments += 1;
            }
            let shown = from.list_variables(&p.name, &env.name).await?;
            for v in from.resolve_variables(&p.name, &env.name).await? {
                let at = shown
                    .iter()
                    .find(|s| s.key == v.key)
                    .map(|s| s.updated_at)
                    .unwrap_or_else(chrono::Utc::now);
                to.set_variable(
                    &p.name,
                    &env.name,
                    &v.key,
                    &v.value,
                    VarFlags {
                        secret: v.secret,
                        build: v.build,
                    },
                    at,
                )
                .await?;
                r.variables += 1;
            }
        }
    }

    for m in from.list_maintenance(None).await? {
        if copied_projects.contains(&m.project_name) {
            to.set_maintenance(&m).await?;
        }
    }

    // Deployments, oldest first, then each slot's active pointer.
    let mut ds = from.list_deployments(&Default::default()).await?;
    ds.retain(|d| copied_projects.contains(&d.project_name));
    ds.reverse();
    let copied_ids: std::collections::HashSet<String> = ds.iter().map(|d| d.id.clone()).collect();
    for d in &ds {
        let mut d = d.clone();
        d.is_active = false;
        d.version = 0;
        to.insert_deployment(&d).await?;
        r.deployments += 1;
    }
    for d in ds.iter().filter(|d| d.is_active) {
        let mut d = to.get_deployment(&d.id).await?;
        let slot = Slot::of(&d);
        let id = d.id.clone();
        to.save_deployments(
            &mut [&mut d],
            Some(Activate {
                slot,
                deployment_id: Some(id),
            }),
        )
        .await?;
    }

    // Runs, oldest first (a job's firing stays recorded: it does not run
    // again on the target).
    let mut projects: Vec<&String> = copied_projects.iter().collect();
    projects.sort();
    let mut runs = Vec::new();
    for p in &projects {
        runs.extend(
            from.list_runs(&crate::RunQuery {
                project: Some((*p).clone()),
                ..Default::default()
            })
            .await?,
        );
    }
    runs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    for run in &runs {
        to.insert_run(run).await?;
        r.runs += 1;
    }

    // Log lines in cursor order, across deployments.
    let mut after = None;
    loop {
        let lines = from
            .read_logs(&crate::LogQuery {
                after_seq: after,
                limit: Some(LOG_BATCH),
                ..Default::default()
            })
            .await?;
        let Some(last) = lines.last() else { break };
        after = Some(last.seq);
        let batch: Vec<NewLogLine> = lines
            .iter()
            .filter(|l| copied_ids.contains(&l.deployment_id))
            .map(|l| NewLogLine {
                deployment_id: l.deployment_id.clone(),
                ts: l.ts,
                stream: l.stream,
                step: l.step,
                text: l.text.clone(),
            })
            .collect();
        to.append_logs(&batch).await?;
        r.log_lines += batch.len();
    }

    for dom in from.list_domains(None).await? {
        if !copied_projects.contains(&dom.project_name) {
            continue;
        }
        to.add_domain(&dom).await?;
        if let Some(at) = dom.verified_at {
            to.set_domain_verified(&dom.hostname, at).await?;
        }
        r.domains += 1;
    }
    for c in from.list_certificates().await? {
        if force && to.get_certificate(&c.hostname).await?.is_some() {
            continue;
        }
        to.put_certificate(&c).await?;
        r.certificates += 1;
    }
    for dir in from.list_acme_directories().await? {
        if force && to.acme_account(&dir).await?.is_some() {
            continue;
        }
        if let Some(creds) = from.acme_account(&dir).await? {
            to.put_acme_account(&dir, &creds).await?;
            r.acme_accounts += 1;
        }
    }
    for server in from.list_dns_update_servers().await? {
        if force && to.dns_update_key(&server).await?.is_some() {
            continue;
        }
        if let Some(key) = from.dns_update_key(&server).await? {
            to.put_dns_update_key(&server, &key).await?;
            r.dns_update_keys += 1;
        }
    }
    let existing_routes: std::collections::HashSet<String> = to
        .list_external_routes()
        .await?
        .into_iter()
        .map(|r| r.hostname)
        .collect();
    for route in from.list_external_routes().await? {
        if existing_routes.contains(&route.hostname) {
            continue;
        }
        to.put_external_route(&route).await?;
        r.routes += 1;
    }
    for image in from.list_manifest_images().await? {
        if let Some(entries) = from.get_manifest(&image).await? {
            to.put_manifest(&image, &entries, chrono::Utc::now())
                .await?;
            r.manifests += 1;
        }
    }
    for (project, id, at) in from.list_deliveries().await? {
        if to.record_delivery(&project, &id, at).await? {
            r.deliveries += 1;
        }
    }
    for p in &projects {
        let mut backups = from.list_backups(p, None, None).await?;
        backups.reverse();
        for b in &backups {
            to.insert_backup(b).await?;
            r.backups += 1;
        }
    }
    for n in from.list_notifications(None).await? {
        if !copied_projects.contains(&n.project_name) {
            continue;
        }
        let target = from.notification_target(&n.id).await?;
        to.add_notification(&n, &target).await?;
        r.notifications += 1;
        let mut deliveries = from.notification_deliveries(&n.id, u32::MAX).await?;
        deliveries.reverse();
        for d in &deliveries {
            if to.queue_delivery(d).await? {
                r.notification_deliveries += 1;
            }
        }
    }
    for t in from.token_records().await? {
        match to.create_token(&t).await {
            Ok(()) => r.tokens += 1,
            Err(StoreError::Conflict { .. }) if force => {}
            Err(e) => return Err(e),
        }
    }
    // Oldest first, so the target lists them in the same order; a target
    // with an audit log of its own (`force`) keeps it as it is.
    let target_has_audit = !to
        .list_audit(&crate::AuditQuery {
            project: None,
            limit: Some(1),
        })
        .await?
        .is_empty();
    if !target_has_audit {
        let mut audit = from.list_audit(&crate::AuditQuery::default()).await?;
        audit.reverse();
        for e in &audit {
            to.append_audit(e).await?;
            r.audit_entries += 1;
        }
    }
    for session in from.session_records(chrono::Utc::now()).await? {
        to.put_session(&session).await?;
        r.sessions += 1;
    }
    for p in from.pushed_repo_projects().await? {
        if !copied_projects.contains(&p) {
            continue;
        }
        if let Some((_, bundle)) = from.pushed_repo(&p).await? {
            if to.put_pushed_repo(&p, 0, &bundle).await?.is_some() {
                r.pushed_repos += 1;
            }
        }
    }
    Ok(r)
}
