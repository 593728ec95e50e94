//! HTML building blocks: escaping, the page frame, badges, times.
//!
//! Invariant: every value that did not come from this file goes through
//! [`esc`] before it reaches a page.

use chrono::{DateTime, Utc};

/// Escape text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Escape one path segment of a URL (names here are already restricted to
/// DNS-like characters, but ids and keys come from requests).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the frame of a page needs.
pub struct Frame<'a> {
    pub title: &'a str,
    /// Breadcrumbs after "Projects": (label, link).
    pub crumbs: &'a [(&'a str, Option<String>)],
    /// The session's CSRF token (for the sign-out form); `None` when signed out.
    pub csrf: Option<&'a str>,
}

/// A complete page around `body`.
pub fn page(f: &Frame, body: &str) -> String {
    let mut nav = String::new();
    if f.csrf.is_some() {
        nav.push_str(r#"<a href="/console">Projects</a>"#);
        for (label, link) in f.crumbs {
            nav.push_str(r#"<span class="sep">/</span>"#);
            match link {
                Some(l) => nav.push_str(&format!(r#"<a href="{}">{}</a>"#, esc(l), esc(label))),
                None => nav.push_str(&format!("<span>{}</span>", esc(label))),
            }
        }
    }
    let signout = match f.csrf {
        Some(c) => format!(
            r#"<form method="post" action="/logout" class="signout"><input type="hidden" name="csrf" value="{}"><button type="submit" class="btn ghost">Sign out</button></form>"#,
            esc(c)
        ),
        None => String::new(),
    };
    let v = env!("CARGO_PKG_VERSION");
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · berth</title>
<link rel="stylesheet" href="/console/static/console.css?v={v}">
<script src="/console/static/console.js?v={v}" defer></script>
</head>
<body>
<header class="top"><a class="brand" href="/console"><span class="logo">⚓</span> berth</a><nav class="crumbs">{nav}</nav>{signout}</header>
<main>
{body}
</main>
<footer>berth {v}</footer>
</body>
</html>
"#,
        title = esc(f.title),
    )
}

/// Colour family of a status, stage or health word.
fn tone(word: &str) -> &'static str {
    match word {
        "succeeded" | "active" | "healthy" => "ok",
        "failed" | "unhealthy" => "bad",
        "running" | "building" | "releasing" | "starting_candidate" | "checking_readiness" => {
            "busy"
        }
        "switching_route" | "canary" | "draining_previous" => "warn",
        "cancelled" | "rolled_back" | "superseded" | "stopped" | "skipped" => "muted",
        _ => "idle",
    }
}

/// A coloured badge; `title` says which track it is.
pub fn badge(title: &str, word: &str) -> String {
    format!(
        r#"<span class="badge {}" title="{}">{}</span>"#,
        tone(word),
        esc(title),
        esc(&word.replace('_', " "))
    )
}

pub fn time(t: &DateTime<Utc>) -> String {
    format!(
        r#"<time datetime="{}">{}</time>"#,
        t.to_rfc3339(),
        t.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// `11-22 11:16:44`, the full time on hover.
pub fn short_time(t: &DateTime<Utc>) -> String {
    format!(
        r#"<time datetime="{}" title="{}">{}</time>"#,
        t.to_rfc3339(),
        t.format("%Y-%m-%d %H:%M:%S UTC"),
        t.format("%m-%d %H:%M:%S")
    )
}

pub fn opt_time(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map(time).unwrap_or_else(|| "—".into())
}

/// `850 ms`, `3.2 s`, `2 m 05 s`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} m {:02} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// A link that opens outside the console.
pub fn ext_link(url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        format!(
            r#"<a href="{u}" target="_blank" rel="noopener noreferrer">{u}</a>"#,
            u = esc(url)
        )
    } else {
        esc(url)
    }
}

/// A POST form with one button, the CSRF token and a confirmation text.
pub fn action(path: &str, csrf: &str, label: &str, class: &str, confirm: &str) -> String {
    format!(
        r#"<form method="post" action="{}" class="inline" data-confirm="{}"><input type="hidden" name="csrf" value="{}"><button type="submit" class="btn {}">{}</button></form>"#,
        esc(path),
        esc(confirm),
        esc(csrf),
        esc(class),
        esc(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(seg("web-1_a.b"), "web-1_a.b");
        assert_eq!(seg("a/b c?"), "a%2Fb%20c%3F");
    }

    #[test]
    fn page_escapes_title_and_crumbs() {
        let p = page(
            &Frame {
                title: "<x>",
                crumbs: &[("<y>", Some("/console/projects/\"z".into()))],
                csrf: Some("tok"),
            },
            "",
        );
        assert!(p.contains("<title>&lt;x&gt; · berth</title>"));
        assert!(p.contains("&lt;y&gt;"));
        assert!(p.contains("/console/projects/&quot;z"));
        assert!(!p.contains("<x>") && !p.contains("<y>"));
        assert!(p.contains(r#"name="csrf" value="tok""#));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(3240), "3.2 s");
        assert_eq!(duration_ms(125_000), "2 m 05 s");
    }

    #[test]
    fn badges_have_tones() {
        assert!(badge("status", "failed").contains(r#"class="badge bad""#));
        assert!(badge("stage", "rolled_back").contains(">rolled back<"));
    }
}
