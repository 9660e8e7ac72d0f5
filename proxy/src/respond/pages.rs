//! Portcullis's own HTML pages: the signed-in user, the deny page, errors, signed out.
//!
//! Every value that reaches a page goes through [`escape`]. No page ever shows a token.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::sessions::CachedSession;

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 28px;display:flex;align-items:center;gap:10px}
header .logo{font-weight:700;letter-spacing:.04em}
header .logo span{color:#8fb3ff}
main{max-width:760px;margin:40px auto;padding:0 20px}
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(0,0,0,.04);padding:28px 32px}
h1{font-size:22px;margin:0 0 6px}
.status{display:inline-block;font-size:12px;font-weight:600;border-radius:999px;padding:2px 10px;margin-bottom:12px}
.ok{background:#e3f6ea;color:#146c36}.warn{background:#fff4dc;color:#8a5a00}.bad{background:#fde8e8;color:#a12020}
p{margin:8px 0;color:#3c4352}
table{width:100%;border-collapse:collapse;margin-top:16px}
th,td{text-align:left;padding:8px 6px;border-bottom:1px solid #eceef2;vertical-align:top;word-break:break-word}
th{width:34%;color:#5b6272;font-weight:500}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f1f2f5;border-radius:4px;padding:1px 5px}
.tag{display:inline-block;background:#eef2ff;color:#2f4bb5;border-radius:4px;padding:0 7px;margin:2px 4px 2px 0;font-size:13px}
.actions{margin-top:22px;display:flex;gap:10px}
form{margin:0}
a.button,button{display:inline-block;background:#2f4bb5;color:#fff;text-decoration:none;border:0;border-radius:6px;padding:8px 16px;font:inherit;cursor:pointer}
a.button.secondary{background:#e8eaf0;color:#1d2330}
footer{color:#8a90a0;font-size:12px;text-align:center;margin:24px 0}
"#;

/// Escapes text for HTML element content and double-quoted attribute values (`&`, `<`, `>`,
/// `"` and `'`).
fn escape(s: &str) -> Cow<'_, str> {
    html_escape::encode_quoted_attribute(s)
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>{title} · Portcullis</title><style>{STYLE}</style></head>\
<body><header><div class=\"logo\">PORT<span>CULLIS</span></div></header><main><div class=\"card\">{body}</div>\
<footer>Portcullis identity-aware proxy</footer></main></body></html>",
        title = escape(title),
    )
}

/// A page for an error or a refusal, with optional links (label, same-host path) under it.
pub fn message(
    status: u16,
    title: &str,
    text: &str,
    request_id: &str,
    details: &[String],
    links: &[(&str, &str)],
) -> String {
    let class = if status >= 500 { "warn" } else { "bad" };
    let mut body = format!(
        "<span class=\"status {class}\">{status}</span><h1>{}</h1><p>{}</p>",
        escape(title),
        escape(text)
    );
    if !details.is_empty() {
        body.push_str("<table>");
        for d in details {
            let _ = write!(body, "<tr><td>{}</td></tr>", escape(d));
        }
        body.push_str("</table>");
    }
    let _ = write!(
        body,
        "<table><tr><th>Request id</th><td><code>{}</code></td></tr></table>",
        escape(request_id)
    );
    if !links.is_empty() {
        body.push_str("<div class=\"actions\">");
        for (i, (label, href)) in links.iter().enumerate() {
            let class = if i == 0 { "button" } else { "button secondary" };
            let _ = write!(
                body,
                "<a class=\"{class}\" href=\"{}\">{}</a>",
                escape(href),
                escape(label)
            );
        }
        body.push_str("</div>");
    }
    layout(title, &body)
}

/// The signed-in user's page (`/.portcullis/`).
pub fn user(session: &CachedSession, sign_out_url: &str, now_unix: i64) -> String {
    let s = session;
    let (email, groups) = (s.email(), s.identity.groups());
    let mut body = String::from("<span class=\"status ok\">Signed in</span>");
    let who = if s.name().is_empty() { email } else { s.name() };
    let _ = write!(
        body,
        "<h1>{}</h1><p>{}</p><table>",
        escape(who),
        escape(email)
    );
    let row = |body: &mut String, k: &str, v: &str| {
        let _ = write!(body, "<tr><th>{}</th><td>{}</td></tr>", escape(k), v);
    };
    row(&mut body, "Email", &escape(email));
    row(&mut body, "Name", &escape(s.name()));
    row(
        &mut body,
        "User (subject)",
        &format!("<code>{}</code>", escape(s.user_id())),
    );
    let groups = if groups.is_empty() {
        "<span style=\"color:#8a90a0\">none</span>".to_string()
    } else {
        groups
            .iter()
            .map(|g| format!("<span class=\"tag\">{}</span>", escape(g)))
            .collect()
    };
    row(&mut body, "Groups", &groups);
    let remaining = (s.expires_at - now_unix).max(0);
    row(
        &mut body,
        "Session expires",
        &format!(
            "{} <span style=\"color:#8a90a0\">(in {}h {}m)</span>",
            escape(&unix_to_rfc3339(s.expires_at)),
            remaining / 3600,
            remaining % 3600 / 60
        ),
    );
    row(
        &mut body,
        "Session id",
        &format!("<code>{}</code>", escape(&s.id)),
    );
    body.push_str("</table>");
    let claims = s.identity.claims_json();
    if !claims.is_empty() {
        body.push_str("<h1 style=\"font-size:16px;margin-top:26px\">Claims</h1><table>");
        for (k, v) in claims {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            row(&mut body, &k, &escape(&v));
        }
        body.push_str("</table>");
    }
    // Signing out changes state: a form's POST, never a link a GET could follow.
    let _ = write!(
        body,
        "<div class=\"actions\"><form method=\"post\" action=\"{}\">\
<button type=\"submit\">Sign out</button></form></div>",
        escape(sign_out_url)
    );
    layout("Signed in", &body)
}

/// The sign-out page (`GET /.portcullis/sign_out`): a button that POSTs to the same path,
/// which is what ends the session.
pub fn sign_out() -> String {
    layout(
        "Sign out",
        "<h1>Sign out?</h1>\
<p>This ends your session on every application behind this proxy.</p>\
<div class=\"actions\"><form method=\"post\" action=\"/.portcullis/sign_out\">\
<button type=\"submit\">Sign out</button></form></div>",
    )
}

/// The page after a sign-out when the IdP has no end-session endpoint.
pub fn signed_out() -> String {
    layout(
        "Signed out",
        "<span class=\"status ok\">Signed out</span><h1>You have signed out</h1>\
<p>Your session has ended on every application behind this proxy. You can close this window.</p>",
    )
}

/// RFC 3339 (UTC, seconds) for a Unix timestamp.
pub fn unix_to_rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn message_page_names_request_id_and_escapes() {
        let page = message(
            403,
            "Forbidden",
            "<b>no</b>",
            "req-1",
            &[],
            &[("Sign out", "/x")],
        );
        assert!(page.contains("req-1"));
        assert!(page.contains("&lt;b&gt;no&lt;/b&gt;"));
        assert!(!page.contains("<b>no</b>"));
        assert!(page.contains("href=\"/x\">Sign out</a>"));
    }

    #[test]
    fn sign_out_page_posts_to_its_own_path() {
        assert!(
            sign_out().contains("<form method=\"post\" action=\"/.portcullis/sign_out\"><button")
        );
    }
}
