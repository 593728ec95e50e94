//! Terminal output: aligned tables, relative ages and durations, and the
//! live step display of `--wait`.
//!
//! Everything here renders to a `String` from its inputs (the current time
//! is a parameter), so the human output is snapshot-tested.

use berth_core::model::{Deployment, Step, StepStatus, ALL_STEPS};
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// A table with a header row; columns are as wide as their widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Columns separated by two spaces, no trailing spaces, one `\n` per row.
    pub fn render(&self) -> String {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(display_width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i].saturating_sub(display_width(cell));
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Width in terminal columns (one per char; good enough for our output).
fn display_width(s: &str) -> usize {
    s.chars().count()
}

/// Cut `s` to at most `max` chars, ending with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// "just now", "42s ago", "5m ago", "3h ago", "2d ago".
pub fn relative_age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    if secs < 0 {
        return "just now".into();
    }
    match secs {
        0..=1 => "just now".into(),
        2..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// "850ms", "4.2s", "3m07s", "1h02m".
pub fn human_duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// `2026-04-24T10:01:00Z`
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The step's duration: its own when finished, else time since it started.
pub fn step_elapsed_ms(step: &Step, now: DateTime<Utc>) -> Option<i64> {
    if let Some(d) = step.duration_ms {
        return Some(d);
    }
    match (step.started_at, step.completed_at) {
        (Some(s), Some(c)) => Some((c - s).num_milliseconds()),
        (Some(s), None) => Some((now - s).num_milliseconds()),
        _ => None,
    }
}

/// A short one-line summary: `dep_x  running/building  http://...`.
pub fn summary_line(d: &Deployment) -> String {
    let mut s = format!(
        "{}  {}/{}  {}  {}/{}",
        d.id, d.project_name, d.service_name, d.environment_name, d.status, d.promotion_stage
    );
    if let Some(url) = d.route_url.as_deref().or(d.preview_url.as_deref()) {
        let _ = write!(s, "  {url}");
    }
    s
}

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

fn step_mark(status: StepStatus, frame: usize) -> char {
    match status {
        StepStatus::Pending => '·',
        StepStatus::Running => SPINNER[frame % SPINNER.len()],
        StepStatus::Succeeded => '✓',
        StepStatus::Failed => '✗',
        StepStatus::Skipped => '-',
        StepStatus::Cancelled => '⊘',
    }
}

/// The live block: a header line, then one line per step in pipeline
/// order (steps the server did not report are shown pending).
pub fn live_block(d: &Deployment, now: DateTime<Utc>, frame: usize) -> Vec<String> {
    let mut lines = vec![format!(
        "{} {}/{} ({})  {} · {} · {}",
        d.id,
        d.project_name,
        d.service_name,
        d.environment_name,
        d.status,
        d.promotion_stage,
        d.health
    )];
    for name in ALL_STEPS {
        let (status, elapsed) = match d.step(name) {
            Some(step) => (step.status, step_elapsed_ms(step, now)),
            None => (StepStatus::Pending, None),
        };
        let elapsed = match (status, elapsed) {
            (StepStatus::Pending | StepStatus::Skipped, _) | (_, None) => String::new(),
            (_, Some(ms)) => human_duration_ms(ms),
        };
        let line = format!(
            "  {} {:<13} {:<10} {}",
            step_mark(status, frame),
            name.as_str(),
            status.as_str(),
            elapsed
        );
        lines.push(line.trim_end().to_string());
    }
    lines
}

/// Redraws a block of lines in place on a terminal.
#[derive(Default)]
pub struct LiveRegion {
    drawn: usize,
}

impl LiveRegion {
    /// The escape sequence that replaces the previous block with `lines`.
    pub fn redraw(&mut self, lines: &[String]) -> String {
        let mut out = String::new();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for l in lines {
            let _ = writeln!(out, "\r\x1b[2K{l}");
        }
        // Clear what is left of a longer previous block.
        for _ in lines.len()..self.drawn {
            out.push_str("\r\x1b[2K\n");
        }
        if self.drawn > lines.len() {
            let _ = write!(out, "\x1b[{}A", self.drawn - lines.len());
        }
        self.drawn = lines.len();
        out
    }
}

/// Plain-line progress for a non-terminal: what changed since `prev`.
pub fn changes(prev: Option<&Deployment>, d: &Deployment, now: DateTime<Utc>) -> Vec<String> {
    let ts = timestamp(now);
    let mut out = Vec::new();
    let stage_changed = prev.is_none_or(|p| {
        p.promotion_stage != d.promotion_stage || p.status != d.status || p.health != d.health
    });
    if stage_changed {
        out.push(format!(
            "{ts} {} status: {} stage: {} health: {}",
            d.id, d.status, d.promotion_stage, d.health
        ));
    }
    for step in &d.steps {
        let before = prev.and_then(|p| p.step(step.name)).map(|s| s.status);
        let was = before.unwrap_or(StepStatus::Pending);
        if was == step.status {
            continue;
        }
        let mut line = format!(
            "{ts} {} step {}: {}",
            d.id,
            step.name.as_str(),
            step.status.as_str()
        );
        if step.status.is_finished() && step.status != StepStatus::Skipped {
            if let Some(ms) = step_elapsed_ms(step, now) {
                let _ = write!(line, " ({})", human_duration_ms(ms));
            }
        }
        out.push(line);
    }
    out
}

/// The last `n` non-empty lines of a step log.
pub fn last_lines(log: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Write to stdout; a closed pipe (`berth status | head`) ends quietly.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// [`emit`] plus a newline.
pub fn emitln(text: &str) {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    emit(&s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn table_aligns_columns_and_trims() {
        let mut t = Table::new(["ID", "NAME", "X"]);
        t.row(["1", "shop", ""]);
        t.row(["1234", "é-long-name", "y"]);
        assert_eq!(
            t.render(),
            "ID    NAME         X\n1     shop\n1234  é-long-name  y\n"
        );
    }

    #[test]
    fn table_with_ragged_rows_does_not_panic() {
        let mut t = Table::new(["A"]);
        t.row(["1", "2", "3"]);
        assert_eq!(t.render(), "A\n1  2  3\n");
    }

    #[test]
    fn truncate_marks_cut() {
        assert_eq!(truncate("hello", 5), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn ages_and_durations() {
        let now = Utc.with_ymd_and_hms(2026, 4, 24, 12, 0, 0).unwrap();
        let ago = |s: i64| relative_age(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(-5), "just now");
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(42), "42s ago");
        assert_eq!(ago(300), "5m ago");
        assert_eq!(ago(3 * 3600 + 5), "3h ago");
        assert_eq!(ago(2 * 86_400), "2d ago");
        assert_eq!(human_duration_ms(850), "850ms");
        assert_eq!(human_duration_ms(4_240), "4.2s");
        assert_eq!(human_duration_ms(187_000), "3m07s");
        assert_eq!(human_duration_ms(3_720_000), "1h02m");
        assert_eq!(human_duration_ms(-3), "0ms");
    }

    #[test]
    fn live_region_moves_up_by_what_it_drew() {
        let mut r = LiveRegion::default();
        let first = r.redraw(&["a".into(), "b".into()]);
        assert!(!first.contains("\x1b[2A"));
        let second = r.redraw(&["c".into(), "d".into()]);
        assert!(second.starts_with("\x1b[2A"));
        assert!(second.ends_with("d\n"));
    }

    #[test]
    fn last_lines_skips_blank() {
        assert_eq!(last_lines("a\nb\n\nc\n", 2), vec!["b", "c"]);
        assert!(last_lines("", 3).is_empty());
    }
}
