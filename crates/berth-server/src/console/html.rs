//! HTML building blocks through `maud`: the page frame, badges, times,
//! links and action forms.
//!
//! Invariant: pages are built with `maud::html!`, which escapes every
//! interpolated value by default; nothing in the console writes markup by
//! string formatting, and `PreEscaped` is used only for markup this crate
//! wrote itself (the chart SVG's numbers), never for a value from a user.

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

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
pub fn page(f: &Frame, body: Markup) -> String {
    let v = env!("CARGO_PKG_VERSION");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (f.title) " · berth" }
                link rel="stylesheet" href={ "/console/static/console.css?v=" (v) };
                script src={ "/console/static/console.js?v=" (v) } defer {}
            }
            body {
                header.top {
                    a.brand href="/console" { span.logo { "⚓" } " berth" }
                    nav.crumbs {
                        @if f.csrf.is_some() {
                            a href="/console" { "Projects" }
                            @for (label, link) in f.crumbs {
                                span.sep { "/" }
                                @match link {
                                    Some(l) => a href=(l) { (label) },
                                    None => span { (label) },
                                }
                            }
                        }
                    }
                    @if let Some(c) = f.csrf {
                        form.signout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(c);
                            button.btn.ghost type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
                footer { "berth " (v) }
            }
        }
    }
    .into_string()
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
pub fn badge(title: &str, word: &str) -> Markup {
    html! {
        span class={ "badge " (tone(word)) } title=(title) { (word.replace('_', " ")) }
    }
}

pub fn time(t: &DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) }
    }
}

/// `11-22 11:16:44`, the full time on hover.
pub fn short_time(t: &DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S UTC")) {
            (t.format("%m-%d %H:%M:%S"))
        }
    }
}

pub fn opt_time(t: &Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { "—" },
    }
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

/// A link that opens outside the console (only http and https URLs become
/// links).
pub fn ext_link(url: &str) -> Markup {
    html! {
        @if url.starts_with("http://") || url.starts_with("https://") {
            a href=(url) target="_blank" rel="noopener noreferrer" { (url) }
        } @else {
            (url)
        }
    }
}

/// A POST form with one button, the CSRF token and a confirmation text.
pub fn action(path: &str, csrf: &str, label: &str, class: &str, confirm: &str) -> Markup {
    html! {
        form.inline method="post" action=(path) data-confirm=(confirm) {
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" class={ "btn " (class) } { (label) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            html! {},
        );
        assert!(p.contains("<title>&lt;x&gt; · berth</title>"));
        assert!(p.contains("&lt;y&gt;"));
        assert!(p.contains("/console/projects/&quot;z"));
        assert!(!p.contains("<x>") && !p.contains("<y>"));
        assert!(p.contains(r#"name="csrf" value="tok""#));
        assert!(p.starts_with("<!DOCTYPE html>"));
    }

    #[test]
    fn only_web_urls_become_links() {
        let l = ext_link("http://a.localhost/?q=<x>").into_string();
        assert!(
            l.contains(r#"href="http://a.localhost/?q=&lt;x&gt;""#),
            "{l}"
        );
        let j = ext_link("javascript:alert(1)").into_string();
        assert!(!j.contains("<a"), "{j}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(3240), "3.2 s");
        assert_eq!(duration_ms(125_000), "2 m 05 s");
    }

    #[test]
    fn badges_have_tones() {
        assert!(badge("status", "failed")
            .into_string()
            .contains(r#"class="badge bad""#));
        assert!(badge("stage", "rolled_back")
            .into_string()
            .contains(">rolled back<"));
    }
}
