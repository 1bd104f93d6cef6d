//! The console's HTML, with maud: every value spliced in with `(...)` is
//! escaped, so a subject, an address or an audit detail written by an
//! attacker is text on the page, never markup. Nothing here uses
//! `PreEscaped`. No script and no inline style anywhere (the
//! Content-Security-Policy forbids both); the one stylesheet is
//! `/console/static/console.css`.

use super::session::Flash;
use crate::audit::AuditRecord;
use crate::clock::format_unix;
use crate::oauth::status::AccountStatus;
use crate::sandbox::inbox::InboxEntry;
use crate::store::{Event, MessageState, QueueAction, QueuedMessage, StoredEvent, WebhookStatus};
use maud::{DOCTYPE, Markup, html};

/// The links of the navigation bar, and the form that logs out.
pub struct Frame<'a> {
    pub csrf: &'a str,
    pub who: &'a str,
    pub inbox: bool,
    pub flash: Option<Flash>,
}

pub fn layout(title: &str, frame: Option<&Frame<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · oxirelay console" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body {
                header {
                    span.brand { "oxirelay" }
                    @if let Some(frame) = frame {
                        nav {
                            a href="/console/accounts" { "Accounts" }
                            a href="/console/queue" { "Queue" }
                            a href="/console/audit" { "Audit log" }
                            a href="/console/webhooks" { "Webhooks" }
                            @if frame.inbox { a href="/console/inbox" { "Sandbox inbox" } }
                        }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(frame.csrf);
                            span.who { (frame.who) }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(flash) = frame.and_then(|f| f.flash.as_ref()) {
                        p class=(if flash.error { "flash error" } else { "flash" }) role="status" { (flash.text) }
                    }
                    (body)
                }
            }
        }
    }
}

/// A page that only says something (an error, a refusal).
pub fn notice(title: &str, text: &str, frame: Option<&Frame<'_>>) -> Markup {
    layout(
        title,
        frame,
        html! {
            p.error { (text) }
            p { a href="/console/accounts" { "Back to the console" } }
        },
    )
}

pub fn login(csrf: &str, error: Option<&str>, password_configured: bool) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(error) = error { p.flash.error role="alert" { (error) } }
            form.login method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="password" {
                    @if password_configured { "Admin password or admin API key" } @else { "Admin API key" }
                }
                input #password type="password" name="password" autocomplete="current-password" required autofocus;
                button type="submit" { "Log in" }
            }
            p.hint {
                "An API key logs in when it has the admin scope: "
                code { "oxirelay apikey create ops --scope admin" }
            }
        },
    )
}

fn when(at: Option<i64>) -> String {
    at.map(format_unix).unwrap_or_else(|| "—".to_string())
}

/// A POST button with the session's CSRF token (and where to come back to).
fn action(csrf: &str, path: &str, back: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action=(path) {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="back" value=(back);
            button type="submit" { (label) }
        }
    }
}

pub struct AccountRow<'a> {
    pub status: &'a AccountStatus,
    pub validation: Option<&'a Event>,
    /// The grant is the authorization code: Connect applies.
    pub connectable: bool,
}

pub fn accounts(rows: &[AccountRow<'_>], csrf: &str, redirect_uri: &str) -> Markup {
    html! {
        @if rows.is_empty() { p { "No [[account]] in the config." } }
        table.accounts {
            thead { tr {
                th { "Account" } th { "Provider" } th { "Grant" } th { "Mailbox" } th { "State" }
                th { "Access token expires" } th { "Last success" } th { "Last validation" } th {}
            } }
            tbody {
                @for row in rows {
                    @let s = row.status;
                    tr data-account=(s.name) {
                        td { (s.name) }
                        td { (s.provider) }
                        td { (s.grant) }
                        td { (s.user) }
                        td {
                            span class={ "state " (s.state.as_str()) } { (s.state.as_str()) }
                            @if let Some(reason) = &s.reason { div.reason { (reason) } }
                        }
                        td { (s.token_expires_at.as_deref().unwrap_or("—")) }
                        td { (s.last_success_at.as_deref().unwrap_or("—")) }
                        td {
                            @match row.validation {
                                Some(event) => {
                                    (format_unix(event.at)) " "
                                    @if event.kind == "account.validated" { span.ok { "ok" } }
                                    @else { span.bad { "failed" } div.reason { (event.detail) } }
                                }
                                None => { "never" }
                            }
                        }
                        td {
                            @if row.connectable {
                                form.inline method="post" action={ "/console/accounts/" (s.name) "/connect" } {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.connect type="submit" { "Connect" }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.hint {
            "Connect signs the account's mailbox in at its provider (authorization code with PKCE) and comes back to "
            code { (redirect_uri) } ": register that redirect URI with the provider's app."
        }
    }
}

pub struct QueueView<'a> {
    pub messages: &'a [QueuedMessage],
    pub state: Option<MessageState>,
    pub account: Option<&'a str>,
    pub accounts: &'a [String],
    /// The id to list after, for the next page.
    pub next: Option<&'a str>,
    pub csrf: &'a str,
    pub back: &'a str,
}

const STATES: [MessageState; 7] = [
    MessageState::Queued,
    MessageState::InFlight,
    MessageState::Deferred,
    MessageState::Held,
    MessageState::Delivered,
    MessageState::Bounced,
    MessageState::Expired,
];

/// The buttons a message in `state` gets.
fn message_actions(csrf: &str, message: &QueuedMessage, back: &str) -> Markup {
    let id = &message.id.0;
    html! {
        @if QueueAction::Retry.applies_to().contains(&message.state) {
            (action(csrf, &format!("/console/queue/{id}/retry"), back, "Retry"))
        }
        @if matches!(message.state, MessageState::Queued | MessageState::Deferred | MessageState::Held) {
            (action(csrf, &format!("/console/queue/{id}/cancel"), back, "Cancel"))
        }
    }
}

pub fn queue(view: &QueueView<'_>) -> Markup {
    html! {
        form.filters method="get" action="/console/queue" {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for state in STATES {
                        option value=(state.as_str()) selected[view.state == Some(state)] { (state.as_str()) }
                    }
                }
            }
            label { "Account "
                select name="account" {
                    option value="" { "any" }
                    @for account in view.accounts {
                        option value=(account) selected[view.account == Some(account.as_str())] { (account) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if view.messages.is_empty() { p { "No message matches." } }
        @else {
            table.queue {
                thead { tr {
                    th { "Message" } th { "State" } th { "Account" } th { "Submitted" } th { "Tries" }
                    th { "Next attempt" } th { "From → to" } th {}
                } }
                tbody {
                    @for m in view.messages {
                        tr data-id=(m.id.0) {
                            td { a href={ "/console/messages/" (m.id.0) } { code { (m.id.0) } } }
                            td {
                                span class={ "state " (m.state.as_str()) } { (m.state.as_str()) }
                                @if let Some(error) = &m.last_error { @if !m.state.is_final() { div.reason { (error) } } }
                            }
                            td { (m.account) }
                            td { (format_unix(m.created_at)) }
                            td { (m.attempts) }
                            td {
                                @if m.state.is_final() { "—" }
                                @else if m.state == MessageState::Held { "(held)" }
                                @else { (format_unix(m.next_attempt_at)) }
                            }
                            td {
                                (m.mail_from) " → "
                                @for (i, r) in m.recipients.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    (r.address)
                                }
                            }
                            td.actions { (message_actions(view.csrf, m, view.back)) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = view.next {
            p.pager {
                a href={
                    "/console/queue?after=" (next)
                    @if let Some(state) = view.state { "&state=" (state.as_str()) }
                    @if let Some(account) = view.account { "&account=" (urlencode(account)) }
                } { "Next page →" }
            }
        }
    }
}

/// A query value, percent-encoded (maud then escapes it for the attribute).
pub fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub struct MessageView<'a> {
    pub message: &'a QueuedMessage,
    pub subject: Option<&'a str>,
    pub events: &'a [StoredEvent],
    pub tags: &'a [String],
    pub csrf: &'a str,
}

pub fn message(view: &MessageView<'_>) -> Markup {
    let m = view.message;
    let back = format!("/console/messages/{}", m.id.0);
    html! {
        dl.message {
            dt { "Subject" } dd.subject { (view.subject.unwrap_or("(none)")) }
            dt { "State" } dd { span class={ "state " (m.state.as_str()) } { (m.state.as_str()) } }
            dt { "Account" } dd { (m.account) }
            dt { "From" } dd { (m.mail_from) }
            dt { "Submitted" } dd { (format_unix(m.created_at)) " by " (m.submitted_by) }
            dt { "Attempts" } dd { (m.attempts) }
            @if let Some(error) = &m.last_error { dt { "Last error" } dd { (error) } }
            @if !view.tags.is_empty() { dt { "Tags" } dd { (view.tags.join(", ")) } }
        }
        div.actions { (message_actions(view.csrf, m, &back)) }
        h2 { "Recipients" }
        table {
            thead { tr { th { "Address" } th { "State" } th { "Last reply" } } }
            tbody {
                @for r in &m.recipients {
                    tr { td { (r.address) } td { (r.state.as_str()) } td { (r.reply.as_deref().unwrap_or("")) } }
                }
            }
        }
        h2 { "History" }
        table.events {
            thead { tr { th { "When" } th { "Event" } th { "Detail" } } }
            tbody {
                tr { td { (format_unix(m.created_at)) } td { "queued" } td {} }
                @for stored in view.events {
                    tr { td { (format_unix(stored.event.at)) } td { (stored.event.kind) } td { (stored.event.detail) } }
                }
            }
        }
    }
}

pub fn audit(records: &[AuditRecord], query: &str, truncated: bool) -> Markup {
    html! {
        form.filters method="get" action="/console/audit" {
            label { "Search " input type="search" name="q" value=(query); }
            button type="submit" { "Search" }
        }
        @if records.is_empty() { p { "No line matches." } }
        @else {
            table.audit {
                thead { tr { th { "#" } th { "When" } th { "Actor" } th { "Action" } th { "Account" } th { "Message" } th { "Detail" } } }
                tbody {
                    @for r in records {
                        tr {
                            td { (r.seq) }
                            td { (r.at) }
                            td { (r.entry.actor) }
                            td { (r.entry.action) }
                            td { (r.entry.account.as_deref().unwrap_or("")) }
                            td { (r.entry.message_id.as_deref().unwrap_or("")) }
                            td { (r.entry.detail) }
                        }
                    }
                }
            }
            @if truncated { p.hint { "Only the newest matches are shown; narrow the search to see older lines." } }
        }
    }
}

pub struct WebhookRow<'a> {
    pub name: &'a str,
    pub origin: String,
    pub status: Option<&'a WebhookStatus>,
}

pub fn webhooks(rows: &[WebhookRow<'_>]) -> Markup {
    html! {
        @if rows.is_empty() { p { "No [[webhook]] in the config." } }
        @else {
            table.webhooks {
                thead { tr {
                    th { "Endpoint" } th { "Receiver" } th { "Delivered" } th { "Last delivered" }
                    th { "Behind" } th { "Failed tries" } th { "Next try" } th { "Last error" }
                } }
                tbody {
                    @for row in rows {
                        tr {
                            td { (row.name) }
                            td { (row.origin) }
                            @match row.status {
                                Some(s) => {
                                    td { (s.cursor.delivered) }
                                    td { (when(s.cursor.last_delivered_at)) }
                                    td { (s.lag) " events" }
                                    td { (s.cursor.attempts) }
                                    td { (when(s.cursor.next_attempt_at)) }
                                    td { (s.cursor.last_error.as_deref().unwrap_or("")) }
                                }
                                None => { td colspan="6" { "nothing sent yet" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn inbox(entries: &[InboxEntry], dir: &str, total: usize) -> Markup {
    html! {
        p.hint { "The sandbox's inbox at " code { (dir) } ": " (total) " messages, newest first." }
        @if entries.is_empty() { p { "The inbox is empty." } }
        @else {
            table.inbox {
                thead { tr { th { "Received" } th { "Via" } th { "From" } th { "To" } th { "SASL" } th { "Token" } th { "Subject" } } }
                tbody {
                    @for e in entries {
                        tr {
                            td { (e.received_at) }
                            td { (e.transport) }
                            td { (e.mail_from) }
                            td { (e.rcpt_to.join(", ")) }
                            td { (e.mechanism.map(|m| m.to_string()).unwrap_or_default()) }
                            td { (e.token_fingerprint.as_deref().unwrap_or("—")) }
                            td { (e.subject.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// The page the OAuth callback answers when the browser came back from the
/// provider without the session cookie (`SameSite=Strict` keeps it off a
/// navigation that another site started): a same-site reload of the same
/// address, which carries it. A meta refresh, not a script.
pub fn bounce(target: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content={ "0;url=" (target) };
                title { "Back to the oxirelay console" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body { main { p { "Returning to the console… " a href=(target) { "continue" } } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEntry;

    #[test]
    fn hostile_values_are_text() {
        let record = AuditRecord {
            seq: 1,
            at: "2026-01-01T00:00:00Z".into(),
            entry: AuditEntry {
                actor: "relay".into(),
                action: "message.bounced".into(),
                account: None,
                token_fingerprint: None,
                message_id: None,
                detail: "<script>alert(1)</script>\" onmouseover=\"x".into(),
            },
        };
        let page = audit(&[record], "\"><img src=x>", false).into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(!page.contains("\"><img"), "{page}");
        assert!(!page.contains(" onmouseover=\"x"), "{page}");
    }

    #[test]
    fn every_form_carries_the_csrf_token() {
        let frame = Frame {
            csrf: "TOKEN",
            who: "admin",
            inbox: false,
            flash: None,
        };
        let page = layout("t", Some(&frame), html! {}).into_string();
        assert!(page.contains("name=\"csrf\" value=\"TOKEN\""), "{page}");
        assert!(!page.contains("<script"), "no script: {page}");
        assert!(!page.contains("style="), "no inline style: {page}");
    }
}
