//! The few HTML pages a person sees (consent, device code entry, results):
//! plain server-rendered forms, every interpolated value escaped.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} - oxirelay sandbox</title>\
         <style>body{{font-family:sans-serif;max-width:36em;margin:3em auto}}button{{margin-right:1em}}</style>\
         </head><body><h1>{title}</h1>{body}<p><small>oxirelay sandbox authorization server</small></p></body></html>",
        title = escape(title)
    )
}

/// A page with a status code (errors that must not be redirected).
pub(crate) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!("<p>{}</p>", escape(text));
    (status, Html(page(title, &body))).into_response()
}

fn user_options(users: &[String], preferred: Option<&str>) -> String {
    users
        .iter()
        .map(|u| {
            let selected = if Some(u.as_str()) == preferred {
                " selected"
            } else {
                ""
            };
            format!("<option{selected}>{}</option>", escape(u))
        })
        .collect()
}

fn scope_list(scopes: &[String]) -> String {
    scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", escape(s)))
        .collect()
}

/// The consent page of `/authorize`.
pub(crate) fn consent(
    client_id: &str,
    scopes: &[String],
    users: &[String],
    preferred_user: Option<&str>,
    form_token: &str,
) -> Response {
    let body = format!(
        "<p>The application <b>{client}</b> asks to act as the selected mailbox with:</p><ul>{scopes}</ul>\
         <form method=\"post\" action=\"/authorize\">\
         <input type=\"hidden\" name=\"form_token\" value=\"{token}\">\
         <p><label>Mailbox <select name=\"user\">{users}</select></label></p>\
         <button name=\"decision\" value=\"allow\">Allow</button>\
         <button name=\"decision\" value=\"deny\">Deny</button></form>",
        client = escape(client_id),
        scopes = scope_list(scopes),
        token = escape(form_token),
        users = user_options(users, preferred_user),
    );
    Html(page("Grant access", &body)).into_response()
}

/// The device-code entry page (`GET /device`).
pub(crate) fn device_entry(
    user_code: Option<&str>,
    request: Option<(String, Vec<String>)>,
    users: &[String],
    form_token: &str,
) -> Response {
    let what = match request {
        Some((client, scopes)) => format!(
            "<p>The device using <b>{}</b> asks for:</p><ul>{}</ul>",
            escape(&client),
            scope_list(&scopes)
        ),
        None => "<p>Enter the code shown on your device.</p>".to_string(),
    };
    let body = format!(
        "{what}<form method=\"post\" action=\"/device\">\
         <input type=\"hidden\" name=\"form_token\" value=\"{token}\">\
         <p><label>Code <input name=\"user_code\" value=\"{code}\" autocomplete=\"off\"></label></p>\
         <p><label>Mailbox <select name=\"user\">{users}</select></label></p>\
         <button name=\"decision\" value=\"allow\">Allow</button>\
         <button name=\"decision\" value=\"deny\">Deny</button></form>",
        token = escape(form_token),
        code = escape(user_code.unwrap_or("")),
        users = user_options(users, None),
    );
    Html(page("Connect a device", &body)).into_response()
}
