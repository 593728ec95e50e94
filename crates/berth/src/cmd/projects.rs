//! `berth projects create|list|show|set`

use super::{or_dash, yes_no, Ctx};
use crate::output::{emit, emitln, timestamp, Table};
use berth_core::api::{CreateProject, UpdateProject};
use berth_core::model::mask_url;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ProjectsCmd {
    /// Create a project from a Git URL or a local repository path.
    Create {
        name: String,
        /// Git URL or path of the repository.
        #[arg(long)]
        repo: String,
        /// The production branch [default: the repository's default].
        #[arg(long)]
        branch: Option<String>,
        /// Secret of GitHub webhook signatures (POST /hooks/github/<name>).
        #[arg(long)]
        webhook_secret: Option<String>,
        /// Images kept per service and environment for instant rollback.
        #[arg(long)]
        retain_images: Option<u32>,
        /// SSH private key for an ssh:// or git@ repository (stored sealed).
        /// Credentials inside an https URL (`https://user:token@host/…`) are
        /// stored sealed too and never shown again.
        #[arg(long, value_name = "PATH")]
        deploy_key_file: Option<std::path::PathBuf>,
    },
    /// List projects.
    List,
    /// Show a project with its environments and services.
    Show { name: String },
    /// Change a project's settings.
    Set {
        name: String,
        #[arg(long)]
        retain_images: Option<u32>,
        #[arg(long)]
        webhook_secret: Option<String>,
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        /// Replace the SSH deploy key.
        #[arg(long, value_name = "PATH", conflicts_with = "remove_deploy_key")]
        deploy_key_file: Option<std::path::PathBuf>,
        /// Remove the stored SSH deploy key.
        #[arg(long)]
        remove_deploy_key: bool,
    },
}

fn read_key(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read deploy key {}: {e}", path.display()))
}

fn credentials(p: &berth_core::model::Project) -> &'static str {
    match (p.has_repo_credentials, p.has_deploy_key) {
        (true, true) => "token and deploy key",
        (true, false) => "token",
        (false, true) => "deploy key",
        (false, false) => "none",
    }
}

pub async fn run(ctx: &Ctx, cmd: ProjectsCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        ProjectsCmd::Create {
            name,
            repo,
            branch,
            webhook_secret,
            retain_images,
            deploy_key_file,
        } => {
            let body = CreateProject {
                name,
                repo,
                default_branch: branch,
                webhook_secret,
                retain_images,
                deploy_key: deploy_key_file.as_deref().map(read_key).transpose()?,
            };
            let reply = c.create_project(&body).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let p = reply.parse()?;
            emitln(&format!(
                "created project {} ({}, branch {}, keeps {} images)",
                p.name,
                mask_url(&p.repo),
                p.default_branch,
                p.retain_images
            ));
        }
        ProjectsCmd::List => {
            let reply = c.list_projects().await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let mut t = Table::new(["NAME", "REPO", "BRANCH", "RETAIN", "WEBHOOK", "CREATED"]);
            for p in reply.parse()? {
                t.row([
                    p.name,
                    mask_url(&p.repo),
                    p.default_branch,
                    p.retain_images.to_string(),
                    yes_no(p.has_webhook_secret).to_string(),
                    timestamp(p.created_at),
                ]);
            }
            if t.is_empty() {
                emitln("no projects yet: create one with `berth projects create NAME --repo URL`");
            } else {
                emit(&t.render());
            }
        }
        ProjectsCmd::Show { name } => {
            let reply = c.get_project(&name).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let d = reply.parse()?;
            let p = &d.project;
            let mut out = String::new();
            let mut kv = Table::new(["Project", p.name.as_str()]);
            kv.row(["Repo".to_string(), mask_url(&p.repo)]);
            kv.row(["Branch", p.default_branch.as_str()]);
            kv.row(["Retain images".to_string(), p.retain_images.to_string()]);
            kv.row(["Webhook secret", yes_no(p.has_webhook_secret)]);
            kv.row(["Repo credentials", credentials(p)]);
            kv.row(["Created".to_string(), timestamp(p.created_at)]);
            out.push_str(&kv.render());
            out.push_str("\nEnvironments\n");
            let mut envs = Table::new(["  NAME", "KIND", "BRANCH"]);
            for e in &d.environments {
                envs.row([
                    format!("  {}", e.name),
                    super::envs::kind_str(e.kind).to_string(),
                    or_dash(e.branch.as_deref()),
                ]);
            }
            out.push_str(&envs.render());
            out.push_str("\nServices\n");
            if d.services.is_empty() {
                out.push_str("  (none deployed yet)\n");
            } else {
                let mut svcs =
                    Table::new(["  SERVICE", "ENV", "STATUS", "HEALTH", "ACTIVE", "URL"]);
                for s in &d.services {
                    svcs.row([
                        format!("  {}", s.name),
                        s.environment_name.clone(),
                        or_dash(s.status.as_deref()),
                        or_dash(s.health.as_deref()),
                        or_dash(s.active_deployment_id.as_deref()),
                        or_dash(s.route_url.as_deref()),
                    ]);
                }
                out.push_str(&svcs.render());
            }
            emit(&out);
        }
        ProjectsCmd::Set {
            name,
            retain_images,
            webhook_secret,
            repo,
            branch,
            deploy_key_file,
            remove_deploy_key,
        } => {
            let deploy_key = match (deploy_key_file, remove_deploy_key) {
                (Some(path), _) => Some(read_key(&path)?),
                (None, true) => Some(String::new()),
                (None, false) => None,
            };
            let body = UpdateProject {
                repo,
                default_branch: branch,
                webhook_secret,
                retain_images,
                deploy_key,
            };
            if body == UpdateProject::default() {
                anyhow::bail!(
                    "nothing to change: give --retain-images, --webhook-secret, --repo, --branch, --deploy-key-file or --remove-deploy-key"
                );
            }
            let reply = c.update_project(&name, &body).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let p = reply.parse()?;
            emitln(&format!(
                "updated project {} ({}, branch {}, keeps {} images, webhook secret {})",
                p.name,
                mask_url(&p.repo),
                p.default_branch,
                p.retain_images,
                if p.has_webhook_secret { "set" } else { "unset" }
            ));
        }
    }
    Ok(())
}
