//! The page shell (navigation, sign-out form), HTML answers, state badges with words, a
//! value to copy, and times shown relative and absolute.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use broker_service::console::ConsoleSession;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

/// A signed-in page: navigation, the signed-in key's name and the sign-out form.
pub struct Shell<'a> {
    pub title: &'a str,
    pub key_name: &'a str,
    pub csrf: &'a str,
    /// Which navigation entry is current (`overview`, `tenants`, ...).
    pub section: &'a str,
}

const NAV: &[(&str, &str, &str)] = &[
    ("overview", "/console", "Overview"),
    ("tenants", "/console/tenants", "Tenants"),
    ("register", "/console/register", "Register a tenant"),
    ("api-keys", "/console/api-keys", "API keys"),
    ("webhooks", "/console/webhooks", "Webhooks"),
    ("audit", "/console/audit", "Audit log"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · provet-broker" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

impl<'a> Shell<'a> {
    /// The shell of a page for the operator signed in with `session`, under the navigation
    /// entry `section`.
    pub fn signed_in(title: &'a str, session: &'a ConsoleSession, section: &'a str) -> Self {
        Self {
            title,
            key_name: &session.key_name,
            csrf: &session.csrf_token,
            section,
        }
    }

    /// The whole page around `content`.
    pub fn render(&self, content: Markup) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(self.title))
                body {
                    header.top {
                        a.brand href="/console" { "provet-broker" }
                        nav {
                            @for (id, href, label) in NAV {
                                @if *id == self.section {
                                    a.current href=(href) aria-current="page" { (label) }
                                } @else {
                                    a href=(href) { (label) }
                                }
                            }
                        }
                        form.signout method="post" action="/console/sign-out" {
                            (csrf_field(self.csrf))
                            span.who { "Signed in as " strong { (self.key_name) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                    main { (content) }
                }
            }
        }
    }
}

/// A page without navigation: sign-in and error pages.
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                header.top { a.brand href="/console" { "provet-broker" } }
                main { (content) }
            }
        }
    }
}

pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// How a state reads: good, bad, pending or neutral.
#[derive(Clone, Copy)]
pub enum Tone {
    Good,
    Bad,
    Warn,
    Neutral,
}

/// A coloured badge that says its state in words.
pub fn badge(word: &str, tone: Tone) -> Markup {
    let class = match tone {
        Tone::Good => "badge good",
        Tone::Bad => "badge bad",
        Tone::Warn => "badge warn",
        Tone::Neutral => "badge neutral",
    };
    html! { span class=(class) { (word) } }
}

/// The badge of a state name as the API spells it.
pub fn state_badge(state: &str) -> Markup {
    let tone = match state {
        "ok" | "active" | "delivered" => Tone::Good,
        "rejected" | "failed" | "revoked" | "reauthorization_required" | "disabled" | "refused" => {
            Tone::Bad
        }
        "pending" | "unchecked" => Tone::Warn,
        _ => Tone::Neutral,
    };
    badge(&state.replace('_', " "), tone)
}

/// "3 min ago" with the exact UTC time beside it (and in `datetime`).
pub fn time(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339()) title=(absolute(at)) {
            (relative(at, now))
            span.abs { " · " (absolute(at)) }
        }
    }
}

pub fn maybe_time(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    match at {
        Some(at) => time(at, now),
        None => html! { span.none { "never" } },
    }
}

pub fn absolute(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A short relative time: "just now", "5 min ago", "in 2 h", "3 days ago".
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds();
    let (future, secs) = (secs < 0, secs.unsigned_abs());
    let amount = match secs {
        0..=9 => return "just now".into(),
        10..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h", secs / 3600),
        _ => {
            let days = secs / 86_400;
            format!("{days} day{}", if days == 1 { "" } else { "s" })
        }
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A page as the answer, `200 OK`.
pub fn html_page(markup: Markup) -> HttpResponse {
    html_answer(StatusCode::OK, markup)
}

/// A page as the answer, with `status` (`201` after a creation, `400` for a form to correct).
pub fn html_answer(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// A read-only field holding `value` (a key, a secret, a link) and a button that copies it.
pub fn copy_field(input_id: &str, value: &str) -> Markup {
    html! {
        div.copy {
            input type="text" id=(input_id) readonly value=(value);
            button type="button" data-copy=(input_id) { "Copy" }
        }
    }
}

/// `?notice=CODE`: the notice an action's redirect asks the page to show.
#[derive(Deserialize)]
pub struct NoticeQuery {
    pub notice: Option<String>,
}

impl NoticeQuery {
    /// `text` when the code is `code` (fixed texts: nothing from the address is shown).
    pub fn text(&self, code: &str, text: &'static str) -> Option<&'static str> {
        (self.notice.as_deref() == Some(code)).then_some(text)
    }
}

/// A notice after an action (the action's redirect names it with `?notice=`).
pub fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text {
            p.notice role="status" { (text) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let ago = |s| relative(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(3), "just now");
        assert_eq!(ago(42), "42 s ago");
        assert_eq!(ago(300), "5 min ago");
        assert_eq!(ago(7200), "2 h ago");
        assert_eq!(ago(86_400), "1 day ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
        assert_eq!(ago(-7200), "in 2 h");
    }
}
