//! Persistent volumes (`[services.<name>.volumes]`) and their backups: the
//! engine name a volume gets, and the records the store keeps and the API
//! returns (JSON in camelCase).
//!
//! A volume belongs to one environment of one project: its engine name is
//! derived from the project, the environment, the volume's name and the
//! server's identity on the engine, so two environments (or two berths on
//! one engine) never share one, and every deployment of the environment —
//! a rollback to an old one included — mounts the same one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The engine's name of volume `volume` of `project`'s `environment`, for
/// the berth whose engine identity is `instance`:
/// `berth.<project>.<environment>.<volume>.<instance>`. None of the parts
/// holds a `.` (they are DNS labels), so two different tuples never make
/// one name.
pub fn engine_name(project: &str, environment: &str, volume: &str, instance: &str) -> String {
    format!("berth.{project}.{environment}.{volume}.{instance}")
}

/// A volume as `berth volumes list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeInfo {
    /// The name in `berth.toml`.
    pub name: String,
    pub project_name: String,
    pub environment_name: String,
    /// The engine's name of the volume.
    pub engine_name: String,
    /// Services whose active deployment mounts it, with the path.
    pub mounts: Vec<VolumeMountInfo>,
    pub created_at: Option<DateTime<Utc>>,
}

/// Where a service mounts a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMountInfo {
    pub service_name: String,
    pub path: String,
}

/// Where a backup is in its life. A backup is `succeeded` only once its
/// archive has been read back and its checksum matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    Running,
    Succeeded,
    Failed,
}

impl BackupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Running => "running",
            BackupStatus::Succeeded => "succeeded",
            BackupStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BackupStatus::Running,
            BackupStatus::Succeeded,
            BackupStatus::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a backup was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupTrigger {
    /// `berth volumes backup`.
    Manual,
    /// The content a restore replaced, kept before the restore.
    PreRestore,
    /// `[services.<name>.backups]` schedule.
    Scheduled,
}

/// One backup of one volume: a gzip-compressed tar archive of the volume's
/// content and the SHA-256 of the archive file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    pub id: String,
    pub project_name: String,
    pub environment_name: String,
    /// The volume's name in `berth.toml`.
    pub volume: String,
    pub status: BackupStatus,
    pub trigger: BackupTrigger,
    /// Size of the compressed archive in bytes.
    pub size_bytes: Option<u64>,
    /// `sha256:<hex>` of the compressed archive, verified by reading the
    /// stored archive back.
    pub checksum: Option<String>,
    /// Where the archive is: a path under `<data-dir>/backups/`.
    pub location: Option<String>,
    /// Who asked: the API token's name, or `scheduler`.
    pub requested_by: String,
    /// Why it failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/projects/{name}/volumes/{volume}/restore`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreRequest {
    pub backup_id: String,
}

/// Whether a scheduled backup of a volume is due at `now`: the firing
/// [`Schedule::due`] gives (not before `not_before`, when the schedule
/// came to exist), unless a scheduled backup was already made at or after
/// it (`last`: the newest scheduled backup's `createdAt`).
///
/// [`Schedule::due`]: crate::schedule::Schedule::due
pub fn backup_due(
    schedule: &crate::schedule::Schedule,
    now: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let firing = schedule.due(now, not_before)?;
    match last {
        Some(t) if t >= firing => None,
        _ => Some(firing),
    }
}

/// The scheduled backups retention removes: `backups` are one volume's,
/// newest first; the newest `keep` succeeded scheduled ones stay, and every
/// scheduled one older than the oldest of those goes (succeeded or
/// failed). Manual and pre-restore backups are never removed.
pub fn backups_to_prune(backups: &[Backup], keep: u32) -> Vec<&Backup> {
    let mut kept = 0u32;
    let mut out = Vec::new();
    for b in backups
        .iter()
        .filter(|b| b.trigger == BackupTrigger::Scheduled)
    {
        if kept >= keep {
            if b.status != BackupStatus::Running {
                out.push(b);
            }
        } else if b.status == BackupStatus::Succeeded {
            kept += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: &str, trigger: BackupTrigger, status: BackupStatus) -> Backup {
        Backup {
            id: id.into(),
            project_name: "shop".into(),
            environment_name: "production".into(),
            volume: "uploads".into(),
            status,
            trigger,
            size_bytes: None,
            checksum: None,
            location: None,
            requested_by: "scheduler".into(),
            error: None,
            created_at: Utc::now(),
            completed_at: None,
        }
    }

    #[test]
    fn retention_keeps_the_newest_succeeded_scheduled_backups() {
        use BackupStatus::*;
        use BackupTrigger::*;
        // Newest first.
        let list = vec![
            b("s6", Scheduled, Succeeded),
            b("s5", Scheduled, Failed),
            b("m4", Manual, Succeeded),
            b("s3", Scheduled, Succeeded),
            b("p2", PreRestore, Succeeded),
            b("s2", Scheduled, Failed),
            b("s1", Scheduled, Succeeded),
            b("s0", Scheduled, Succeeded),
        ];
        let ids = |v: Vec<&Backup>| v.into_iter().map(|b| b.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(backups_to_prune(&list, 2)), ["s2", "s1", "s0"]);
        assert_eq!(
            ids(backups_to_prune(&list, 1)),
            ["s5", "s3", "s2", "s1", "s0"]
        );
        assert_eq!(ids(backups_to_prune(&list, 4)), Vec::<String>::new());
    }

    #[test]
    fn a_firing_is_backed_up_once() {
        let s = crate::schedule::Schedule::parse("0 3 * * *").unwrap();
        let at = |h: u32, m: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 11, 29)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap()
                .and_utc()
        };
        let firing = at(3, 0);
        assert_eq!(backup_due(&s, at(3, 1), None, None), Some(firing));
        // Already made for this firing: not again.
        assert_eq!(backup_due(&s, at(3, 2), None, Some(at(3, 1))), None);
        // The last one is from yesterday's firing: due.
        assert_eq!(
            backup_due(&s, at(3, 2), None, Some(firing - chrono::Duration::days(1))),
            Some(firing)
        );
        // The schedule appeared after today's firing: nothing until tomorrow.
        assert_eq!(backup_due(&s, at(4, 0), Some(at(3, 30)), None), None);
    }

    #[test]
    fn engine_names_keep_the_parts_apart() {
        assert_eq!(
            engine_name("shop", "production", "uploads", "01abc"),
            "berth.shop.production.uploads.01abc"
        );
        // '-' inside a part cannot make two tuples collide: '.' separates.
        assert_ne!(
            engine_name("a-b", "c", "d", "i"),
            engine_name("a", "b-c", "d", "i")
        );
    }

    #[test]
    fn status_words_round_trip() {
        for s in [
            BackupStatus::Running,
            BackupStatus::Succeeded,
            BackupStatus::Failed,
        ] {
            assert_eq!(BackupStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(BackupStatus::parse("done"), None);
    }
}
