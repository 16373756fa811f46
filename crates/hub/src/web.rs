//! The web console: server-rendered HTML pages on the operator API's address, outside `/v1/`.
//! No JavaScript, no external fetches; charts are inline SVG; one stylesheet served here.
//!
//! Access: the same `Host` rule as the API (against DNS rebinding). A browser cannot send the
//! API's bearer header from a plain page, so the page logs in once: `POST /login` with the
//! token makes a session, kept in a `SameSite=Strict; HttpOnly` cookie, and a CSRF token that
//! every state-changing form carries (checked in constant time, with the `Origin` header when
//! the browser sends one). Sessions live in memory, at most [`MAX_SESSIONS`] (a new one
//! evicts the oldest), each for [`SESSION_TTL_MS`]; rotating the API token ends them all.
//!
//! | method | path | page |
//! |---|---|---|
//! | GET/POST | `/login` | the token form / logs in |
//! | POST | `/logout` | ends the session |
//! | GET | `/` | fleet overview |
//! | GET | `/devices/{d}[/modules/{m}]` | one device |
//! | GET | `/alerts?state=&severity=&device=` | alerts with filters |
//! | POST | `/alerts/{id}/ack`, `/alerts/{id}/close` | state changes |
//! | POST | `/devices/{d}[/modules/{m}]/configuration` | the configuration editor: validated as the agent validates, then an etag-checked desired write |
//! | GET | `/console.css`, `/favicon.svg` | the stylesheet, the icon |

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::console::model::{utc_text, CONFIG_KEY};
use crate::console::rules::{Rule, Severity};
use crate::http::Request;
use crate::hub::{now_ms, Hub};
use crate::store::{AlertAction, AlertQuery, AlertRecord, StoreError};
use twinguard_core::iothub::identity::IdentityId;
use twinguard_core::iothub::query::{percent_decode, percent_encode, raw_pairs};

/// Sessions at once; a new login past this ends the oldest session.
pub const MAX_SESSIONS: usize = 64;
/// A session's life, milliseconds (12 hours).
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// The session cookie's name.
const COOKIE: &str = "tg_session";
/// Rows in the device page's recent events.
const RECENT_EVENTS: usize = 50;
/// Alerts listed on one page.
const ALERTS_PER_PAGE: usize = 500;

/// A web answer: status, content type, body, extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebReply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// More headers (`Location`, `Set-Cookie`).
    pub headers: Vec<(&'static str, String)>,
}

impl WebReply {
    fn html(status: u16, body: String) -> WebReply {
        WebReply {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }

    fn redirect(to: &str) -> WebReply {
        WebReply {
            status: 303,
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
            headers: vec![("location", to.to_owned())],
        }
    }
}

/// The headers every web answer carries: no script may run, nothing is fetched from
/// elsewhere, the page cannot be framed, nothing is cached.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
];

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    created_ms: i64,
}

/// The web sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session: `(cookie value, CSRF token)`, or `None` without a random source.
    fn create(&self, now: i64) -> Option<(String, String)> {
        let id = crate::token::generate().ok()?;
        let csrf = crate::token::generate().ok()?;
        let mut map = self.lock();
        map.retain(|_, s| now - s.created_ms < SESSION_TTL_MS);
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.created_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                created_ms: now,
            },
        );
        Some((id, csrf))
    }

    /// The CSRF token of a live session.
    fn csrf_of(&self, id: &str, now: i64) -> Option<String> {
        let map = self.lock();
        // Compared in constant time against each live session id.
        map.iter()
            .find(|(k, s)| crate::token::matches(k, id) && now - s.created_ms < SESSION_TTL_MS)
            .map(|(_, s)| s.csrf.clone())
    }

    fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Ends every session (the API token changed).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// What a web request needs from the API's access rules.
pub trait Login {
    /// Whether `token` is the API token.
    fn token_matches(&self, token: &str) -> bool;
    /// The sessions.
    fn sessions(&self) -> &Sessions;
}

fn session_cookie(req: &Request) -> Option<String> {
    req.header_values("cookie")
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// A form body's decoded fields (`+` is a space in forms).
fn form(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(body).replace('+', " ");
    raw_pairs(&text)
        .filter_map(|(k, v)| Some((percent_decode(k).ok()?, percent_decode(v.unwrap_or("")).ok()?)))
        .collect()
}

/// Whether `Origin`, when sent, is this very site (`http://` + the request's `Host`).
fn same_origin(req: &Request) -> bool {
    match (req.header("origin"), req.header("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin.eq_ignore_ascii_case(&format!("http://{host}")),
        (Some(_), None) => false,
    }
}

/// Answers a web request (its `Host` already checked).
pub fn serve(hub: &Hub, req: &Request, login: &dyn Login) -> WebReply {
    let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let now = now_ms();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["console.css"]) => {
            return WebReply {
                status: 200,
                content_type: "text/css; charset=utf-8",
                body: STYLE.as_bytes().to_vec(),
                headers: Vec::new(),
            }
        }
        ("GET", ["favicon.svg"]) => {
            return WebReply {
                status: 200,
                content_type: "image/svg+xml",
                body: ICON.as_bytes().to_vec(),
                headers: Vec::new(),
            }
        }
        ("GET", ["favicon.ico"]) => return WebReply::redirect("/favicon.svg"),
        ("GET", ["login"]) => return WebReply::html(200, login_page(None)),
        ("POST", ["login"]) => {
            if !same_origin(req) {
                return WebReply::html(403, login_page(Some("The form came from another site.")));
            }
            let fields = form(&req.body);
            let token = fields.get("token").map(|t| t.trim()).unwrap_or("");
            if !login.token_matches(token) {
                return WebReply::html(401, login_page(Some("That is not the hub's API token.")));
            }
            let Some((id, _)) = login.sessions().create(now) else {
                return WebReply::html(500, login_page(Some("No random source for a session.")));
            };
            let mut reply = WebReply::redirect("/");
            reply.headers.push((
                "set-cookie",
                format!(
                    "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                    SESSION_TTL_MS / 1000
                ),
            ));
            return reply;
        }
        _ => {}
    }
    let session = session_cookie(req);
    let csrf = session.as_deref().and_then(|s| login.sessions().csrf_of(s, now));
    let (Some(session), Some(csrf)) = (session, csrf) else {
        return match req.method.as_str() {
            "GET" | "HEAD" => WebReply::redirect("/login"),
            _ => WebReply::html(401, login_page(Some("Your session ended: log in again."))),
        };
    };
    if req.method != "GET" && req.method != "HEAD" {
        let fields = form(&req.body);
        let given = fields.get("csrf").map(String::as_str).unwrap_or("");
        if !same_origin(req) || !crate::token::matches(&csrf, given) {
            return WebReply::html(
                403,
                message_page(
                    "Refused",
                    "The form's CSRF token or origin is wrong: reload the page and try again.",
                ),
            );
        }
        return match segments.as_slice() {
            ["logout"] => {
                login.sessions().end(&session);
                let mut reply = WebReply::redirect("/login");
                reply.headers.push((
                    "set-cookie",
                    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
                ));
                reply
            }
            ["alerts", id, action] => {
                let action = match *action {
                    "ack" => AlertAction::Acknowledge,
                    "close" => AlertAction::Close,
                    _ => return WebReply::html(404, message_page("Not found", "No such page.")),
                };
                let Ok(id) = id.parse::<i64>() else {
                    return WebReply::html(404, message_page("Not found", "No such alert."));
                };
                let changed = hub.store().change_alert(id, action, now);
                let audit = hub.store().record_audit(
                    now,
                    "web-session",
                    &format!(
                        "POST /alerts/{id}/{}",
                        if action == AlertAction::Close {
                            "close"
                        } else {
                            "ack"
                        }
                    ),
                    &format!("/alerts/{id}"),
                    if changed.is_ok() { 200 } else { 409 },
                );
                if let Err(e) = audit {
                    tracing::warn!("audit trail: {e}");
                }
                match changed {
                    Ok(_) | Err(StoreError::AlertState { .. }) => {
                        let back = fields
                            .get("back")
                            .filter(|b| b.starts_with('/') && !b.starts_with("//"));
                        WebReply::redirect(back.map_or("/alerts", String::as_str))
                    }
                    Err(StoreError::NoSuchAlert(_)) => {
                        WebReply::html(404, message_page("Not found", "No such alert."))
                    }
                    Err(e) => WebReply::html(500, message_page("Failed", &e.to_string())),
                }
            }
            ["devices", rest @ .., "configuration"] => {
                let id = match rest {
                    [d] => IdentityId::new(d, None),
                    [d, "modules", m] => IdentityId::new(d, Some(m)),
                    _ => return WebReply::html(404, message_page("Not found", "No such page.")),
                };
                let Ok(id) = id else {
                    return WebReply::html(404, message_page("Not found", "No such device."));
                };
                save_configuration(hub, &id, &fields, &csrf, now)
            }
            _ => WebReply::html(404, message_page("Not found", "No such page.")),
        };
    }
    let page = match segments.as_slice() {
        [] => overview(hub, &csrf),
        ["alerts"] => alerts_page(hub, req, &csrf),
        ["devices", rest @ ..] => {
            let id = match rest {
                [d] => IdentityId::new(d, None),
                [d, "modules", m] => IdentityId::new(d, Some(m)),
                _ => return WebReply::html(404, message_page("Not found", "No such page.")),
            };
            match id {
                Ok(id) => {
                    let editor = Editor {
                        saved: req.param("saved").and_then(|v| v.parse().ok()),
                        ..Editor::default()
                    };
                    device_page(hub, &id, &csrf, &editor)
                }
                Err(e) => return WebReply::html(400, message_page("Bad device", &e.to_string())),
            }
        }
        _ => return WebReply::html(404, message_page("Not found", "No such page.")),
    };
    match page {
        Ok(Some(html)) => WebReply::html(200, html),
        Ok(None) => WebReply::html(404, message_page("Not found", "No such device.")),
        Err(e) => {
            tracing::warn!("web console: {e}");
            WebReply::html(500, message_page("Failed", &e.to_string()))
        }
    }
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, csrf: Option<&str>, body: &str) -> String {
    let nav = match csrf {
        Some(csrf) => format!(
            r#"<nav><a href="/">Fleet</a><a href="/alerts">Alerts</a><form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{}"><button type="submit">Log out</button></form></nav>"#,
            esc(csrf)
        ),
        None => String::new(),
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} - twinguard-hub</title><link rel="stylesheet" href="/console.css"><link rel="icon" href="/favicon.svg" type="image/svg+xml"></head>
<body><header><span class="brand">twinguard-hub</span>{nav}</header><main>
{body}
</main></body></html>
"#,
        esc(title)
    )
}

fn login_page(problem: Option<&str>) -> String {
    let problem = problem.map_or_else(String::new, |p| {
        format!(r#"<p class="problem" role="alert">{}</p>"#, esc(p))
    });
    layout(
        "Log in",
        None,
        &format!(
            r#"<h1>Log in</h1>{problem}
<form method="post" action="/login" class="login">
<label for="token">API token (<code>twinguard-hub token show</code>)</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
</form>"#
        ),
    )
}

fn message_page(title: &str, text: &str) -> String {
    layout(
        title,
        None,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/\">Back to the fleet</a></p>",
            esc(title),
            esc(text)
        ),
    )
}

fn device_href(id: &IdentityId) -> String {
    match id.module() {
        Some(m) => format!(
            "/devices/{}/modules/{}",
            percent_encode(id.device()),
            percent_encode(m)
        ),
        None => format!("/devices/{}", percent_encode(id.device())),
    }
}

/// The configuration state of a twin: `(applied|pending|rejected|unknown, reason)`.
fn config_state(desired: &Map<String, Value>, reported: &Map<String, Value>) -> (&'static str, String) {
    let Some(status) = reported.get("twinguard") else {
        return ("unknown", "the agent has not reported".into());
    };
    let desired_version = desired.get("$version").and_then(Value::as_i64);
    let seen = status
        .get("lastDesiredVersion")
        .or_else(|| status.get("desiredVersion"))
        .and_then(Value::as_i64);
    let errors: Vec<&str> = status
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if desired_version.is_some() && seen.is_some() && desired_version > seen {
        return (
            "pending",
            format!(
                "desired version {} not yet seen by the agent",
                desired_version.unwrap_or(0)
            ),
        );
    }
    match status.get("configurationStatus").and_then(Value::as_str) {
        Some("rejected") => ("rejected", errors.join("; ")),
        Some("applied") => ("applied", String::new()),
        _ => ("unknown", String::new()),
    }
}

fn severity_badge(severity: &str) -> String {
    format!(r#"<span class="sev sev-{0}">{0}</span>"#, esc(severity))
}

/// A horizontal bar chart as inline SVG (presentation attributes only: the page's CSP allows
/// no inline styles).
fn bar_chart(title: &str, bars: &[(String, i64)]) -> String {
    if bars.is_empty() {
        return format!("<p class=\"muted\">{}: nothing yet.</p>", esc(title));
    }
    let max = bars.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let row = 22;
    let height = row * bars.len() + 8;
    let mut svg = format!(
        r#"<figure><figcaption>{}</figcaption><svg class="chart" viewBox="0 0 400 {height}" width="100%" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    for (i, (label, n)) in bars.iter().enumerate() {
        let y = 4 + i * row;
        let width = (220 * n / max).max(1);
        let _ = write!(
            svg,
            r##"<text x="0" y="{}" font-size="12" fill="#222">{}</text><rect x="160" y="{}" width="{width}" height="14" fill="#2f6db5"></rect><text x="{}" y="{}" font-size="12" fill="#222">{n}</text>"##,
            y + 12,
            esc(label),
            y + 1,
            164 + width,
            y + 12
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

fn alert_forms(a: &AlertRecord, csrf: &str, back: &str) -> String {
    let form = |action: &str, label: &str| {
        format!(
            r#"<form method="post" action="/alerts/{}/{action}" class="inline"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="back" value="{}"><button type="submit">{label}</button></form>"#,
            a.id,
            esc(csrf),
            esc(back)
        )
    };
    match a.state.as_str() {
        "open" => form("ack", "Acknowledge") + &form("close", "Close"),
        "acknowledged" => form("close", "Close"),
        _ => String::new(),
    }
}

fn alerts_table(alerts: &[AlertRecord], csrf: &str, back: &str, with_device: bool) -> String {
    if alerts.is_empty() {
        return "<p class=\"muted\">No alerts.</p>".into();
    }
    let mut out =
        String::from("<div class=\"scroll\"><table><thead><tr><th>#</th><th>Severity</th><th>Alert</th>");
    if with_device {
        out.push_str("<th>Device</th>");
    }
    out.push_str("<th>Count</th><th>Last seen</th><th>State</th><th></th></tr></thead><tbody>");
    for a in alerts {
        let rule = Rule::parse(&a.rule);
        let evidence = serde_json::to_string_pretty(&a.evidence).unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td><details><summary>{} <span class=\"muted\">{}</span></summary><p>{}</p><pre>{}</pre><p class=\"muted\">First seen {}</p></details></td>",
            a.id,
            severity_badge(&a.severity),
            esc(rule.map_or(a.rule.as_str(), |r| r.title())),
            esc(&a.key),
            esc(rule.map_or("", Rule::remediation)),
            esc(&evidence),
            esc(&utc_text(a.first_ms)),
        );
        if with_device {
            let _ = write!(
                out,
                "<td><a href=\"{}\">{}</a></td>",
                esc(&device_href(&a.identity)),
                esc(&a.identity.to_string())
            );
        }
        let _ = write!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.count,
            esc(&utc_text(a.last_ms)),
            esc(&a.state),
            alert_forms(a, csrf, back)
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

fn overview(hub: &Hub, csrf: &str) -> Result<Option<String>, StoreError> {
    let (identities, agents, counts) = {
        let store = hub.store();
        (store.identities()?, store.agents()?, store.open_alert_counts()?)
    };
    // From the hub's running summary, not a count over a day of events per request.
    let events = hub.fleet_event_counts(now_ms() - 24 * 3600 * 1000);
    let agents: HashMap<IdentityId, (String, i64)> = agents
        .into_iter()
        .map(|a| (a.identity, (a.agent_version, a.last_message_ms)))
        .collect();
    let mut by_severity: BTreeMap<&str, i64> = BTreeMap::new();
    let mut per_identity: HashMap<IdentityId, BTreeMap<String, i64>> = HashMap::new();
    for (id, severity, n) in &counts {
        *by_severity.entry(severity.as_str()).or_default() += n;
        *per_identity
            .entry(id.clone())
            .or_default()
            .entry(severity.clone())
            .or_default() += n;
    }
    let shown: Vec<IdentityId> = identities
        .iter()
        .map(|r| r.id.clone())
        .filter(|id| {
            agents.contains_key(id)
                || id.module() == Some("azureiotsecurity")
                // A device followed on the MQTT fleet broker (`serve --mqtt-fleet`).
                || hub.fleet_device(id).is_some()
        })
        .collect();
    let online = shown.iter().filter(|id| hub.is_connected(id)).count();
    let mut body = format!(
        "<h1>Fleet</h1><section class=\"cards\"><div class=\"card\"><b>{}</b> agents</div><div class=\"card\"><b>{online}</b> online</div>",
        shown.len()
    );
    for s in Severity::ALL {
        let _ = write!(
            body,
            "<div class=\"card\"><a href=\"/alerts?severity={0}\"><b>{1}</b> {0}</a></div>",
            s.as_str(),
            by_severity.get(s.as_str()).copied().unwrap_or(0)
        );
    }
    body.push_str("</section><h2>Devices</h2>");
    if shown.is_empty() {
        body.push_str("<p class=\"muted\">No agent has connected yet: <code>twinguard-hub identity add DEVICE --module azureiotsecurity</code>, then run the agent with its connection string.</p>");
    } else {
        body.push_str("<div class=\"scroll\"><table><thead><tr><th>Device</th><th>Connection</th><th>Agent</th><th>Configuration</th><th>Open alerts</th><th>Last message</th></tr></thead><tbody>");
        for id in &shown {
            let twin = hub.store().twin(id)?;
            let (state, reason) = twin.as_ref().map_or(("unknown", String::new()), |t| {
                config_state(&t.desired, &t.reported)
            });
            let (version, last) = agents.get(id).cloned().unwrap_or_default();
            let alerts = per_identity.get(id).map_or_else(
                || "0".to_owned(),
                |m| {
                    Severity::ALL
                        .iter()
                        .filter_map(|s| {
                            m.get(s.as_str())
                                .map(|n| format!("{} {n}", severity_badge(s.as_str())))
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                },
            );
            let connected = hub.is_connected(id);
            let _ = write!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td><span class=\"{}\">{}</span></td><td>{}</td><td><span class=\"cfg cfg-{state}\">{state}</span> <span class=\"muted\">{}</span></td><td>{alerts}</td><td>{}</td></tr>",
                esc(&device_href(id)),
                esc(&id.to_string()),
                if connected { "online" } else { "offline" },
                if connected { "online" } else { "offline" },
                esc(if version.is_empty() { "-" } else { &version }),
                esc(&reason),
                esc(&if last > 0 { utc_text(last) } else { "-".into() }),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str(&bar_chart("Events in the last 24 hours, by type", &events));
    Ok(Some(layout("Fleet", Some(csrf), &body)))
}

fn json_text(v: Option<&Value>) -> String {
    v.map_or_else(String::new, |v| v.get("value").unwrap_or(v).to_string())
}

/// What the configuration editor shows besides the twin: the text that was submitted and its
/// problems (nothing saved), or the desired version just saved.
#[derive(Debug, Default)]
struct Editor {
    text: Option<String>,
    errors: Vec<String>,
    saved: Option<i64>,
}

/// Largest configuration text the editor takes, bytes.
const MAX_EDITOR_BYTES: usize = 64 * 1024;

/// `POST .../configuration`: `config` (the configuration object as JSON) and `etag` (the
/// twin's etag the form was made from). Checked with the agent's own validation; a document
/// with errors is shown back with them and nothing is written; a good one replaces the
/// configuration member of the desired section, if the twin has not changed since.
fn save_configuration(
    hub: &Hub,
    id: &IdentityId,
    fields: &BTreeMap<String, String>,
    csrf: &str,
    now: i64,
) -> WebReply {
    let text = fields.get("config").cloned().unwrap_or_default();
    // The twin's etag when the form was made: required, so a write never goes unchecked.
    let etag = Some(fields.get("etag").map_or("\"missing\"", String::as_str));
    let show = |errors: Vec<String>| {
        let editor = Editor {
            text: Some(text.clone()),
            errors,
            saved: None,
        };
        match device_page(hub, id, csrf, &editor) {
            // The page itself answers the form (200: it is the page to read, not a failure
            // of the request).
            Ok(Some(html)) => WebReply::html(200, html),
            Ok(None) => WebReply::html(404, message_page("Not found", "No such device.")),
            Err(e) => WebReply::html(500, message_page("Failed", &e.to_string())),
        }
    };
    if text.len() > MAX_EDITOR_BYTES {
        return show(vec![format!(
            "the text is {} bytes; at most {MAX_EDITOR_BYTES}",
            text.len()
        )]);
    }
    let value: Value = match serde_json::from_str(if text.trim().is_empty() { "{}" } else { &text }) {
        Ok(v) => v,
        Err(e) => return show(vec![format!("not JSON: {e}")]),
    };
    let pointer = format!("/{CONFIG_KEY}");
    let validation = twinguard_core::config::validate_config_object(Some(&value), &pointer);
    let errors: Vec<String> = validation.errors().map(ToString::to_string).collect();
    if !errors.is_empty() {
        return show(errors);
    }
    let current = match hub.store().twin(id) {
        Ok(Some(t)) => t,
        Ok(None) => return WebReply::html(404, message_page("Not found", "No such device.")),
        Err(e) => return WebReply::html(500, message_page("Failed", &e.to_string())),
    };
    let mut desired = current.desired.clone();
    desired.insert(CONFIG_KEY.to_owned(), value);
    let written = hub.write_twin_service(
        id,
        etag,
        None,
        Some(&crate::twin::DesiredChange::Replace(Value::Object(desired))),
    );
    let audit = hub.store().record_audit(
        now,
        "web-session",
        &format!("POST {}/configuration", device_href(id)),
        &device_href(id),
        if written.is_ok() { 200 } else { 412 },
    );
    if let Err(e) = audit {
        tracing::warn!("audit trail: {e}");
    }
    match written {
        Ok(record) => WebReply::redirect(&format!(
            "{}?saved={}",
            device_href(id),
            record.twin.desired_version
        )),
        Err(StoreError::StaleEtag { .. }) => show(vec![
            "the twin changed since this page was loaded (someone else saved): nothing was saved; the form below shows your text, the table the current state".into(),
        ]),
        Err(e) => show(vec![format!("not saved: {e}")]),
    }
}

/// The configuration editor's form.
fn editor_form(
    id: &IdentityId,
    csrf: &str,
    etag: &str,
    desired: &Map<String, Value>,
    editor: &Editor,
) -> String {
    let text = editor.text.clone().unwrap_or_else(|| {
        serde_json::to_string_pretty(&Value::Object(desired.clone())).unwrap_or_else(|_| "{}".into())
    });
    let mut out = String::from("<h3 id=\"editor\">Edit the desired configuration</h3>");
    if let Some(v) = editor.saved {
        let _ = write!(
            out,
            "<p class=\"saved\" role=\"status\">Saved as desired version {v}. The agent applies it when it gets it; the table above shows what it reports.</p>"
        );
    }
    if !editor.errors.is_empty() {
        out.push_str("<div class=\"errors\" role=\"alert\"><p>Not saved:</p><ul>");
        for e in &editor.errors {
            let _ = write!(out, "<li>{}</li>", esc(e));
        }
        out.push_str("</ul></div>");
    }
    let _ = write!(
        out,
        r#"<form method="post" action="{}/configuration" class="editor"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="etag" value="{}"><label for="config">The <code>{}</code> object (JSON; properties left out take their defaults), checked as the agent checks it before saving</label><textarea id="config" name="config" rows="12" spellcheck="false">{}</textarea><button type="submit">Validate and save</button></form>"#,
        esc(&device_href(id)),
        esc(csrf),
        esc(etag),
        esc(CONFIG_KEY),
        esc(&text)
    );
    out
}

/// Most rows a snapshot table shows.
const MAX_TABLE_ROWS: usize = 200;

/// A table of snapshot items (or event rows): a column per field, `ExtraDetails` as one.
fn items_table(title: &str, when: Option<i64>, items: &[Value]) -> String {
    let mut out = format!("<h3>{}</h3>", esc(title));
    if items.is_empty() {
        let _ = write!(
            out,
            "<p class=\"muted\">{}</p>",
            if when.is_some() {
                "The latest snapshot is empty."
            } else {
                "No snapshot yet."
            }
        );
        return out;
    }
    let mut columns: Vec<String> = Vec::new();
    for item in items.iter().take(MAX_TABLE_ROWS) {
        for key in item.as_object().map(|o| o.keys()).into_iter().flatten() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    if let Some(t) = when {
        let _ = write!(out, "<p class=\"muted\">As of {}.</p>", esc(&utc_text(t)));
    }
    out.push_str("<div class=\"scroll\"><table><thead><tr>");
    for c in &columns {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr></thead><tbody>");
    for item in items.iter().take(MAX_TABLE_ROWS) {
        out.push_str("<tr>");
        for c in &columns {
            let cell = match item.get(c) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => o
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                    .collect::<Vec<_>>()
                    .join("; "),
                Some(v) => v.to_string(),
            };
            let _ = write!(out, "<td>{}</td>", esc(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    if items.len() > MAX_TABLE_ROWS {
        let _ = write!(
            out,
            "<p class=\"muted\">{} more not shown.</p>",
            items.len() - MAX_TABLE_ROWS
        );
    }
    out
}

fn device_page(
    hub: &Hub,
    id: &IdentityId,
    csrf: &str,
    editor: &Editor,
) -> Result<Option<String>, StoreError> {
    let (twin, etag, snapshots, activity, agent, alerts, recs, events, counts) = {
        let store = hub.store();
        let Some(record) = store.twin_record(id)? else {
            return Ok(None);
        };
        let etag = record.etag();
        let twin = record.twin;
        let mut snapshots = Vec::new();
        for (name, title) in SNAPSHOT_TABLES {
            snapshots.push((title, store.latest_snapshot(id, name)?));
        }
        let mut activity = Vec::new();
        for (name, title) in ACTIVITY_TABLES {
            activity.push((title, store.recent_events(Some(id), Some(name), ACTIVITY_ROWS)?));
        }
        let agent = store.agents()?.into_iter().find(|a| &a.identity == id);
        let alerts: Vec<AlertRecord> = store
            .alerts(&AlertQuery {
                device: Some(id.device().to_owned()),
                limit: ALERTS_PER_PAGE,
                ..AlertQuery::default()
            })?
            .into_iter()
            .filter(|a| &a.identity == id)
            .collect();
        let recs: Vec<_> = store
            .recommendations(Some(id.device()))?
            .into_iter()
            .filter(|r| &r.identity == id)
            .collect();
        let events = store.recent_events(Some(id), None, RECENT_EVENTS)?;
        let counts = store.event_counts(Some(id), now_ms() - 24 * 3600 * 1000)?;
        (
            twin, etag, snapshots, activity, agent, alerts, recs, events, counts,
        )
    };
    let connected = hub.is_connected(id);
    let (state, reason) = config_state(&twin.desired, &twin.reported);
    let mut body = format!(
        "<h1>{}</h1><p><span class=\"{}\">{}</span> · agent {} · last message {} · configuration <span class=\"cfg cfg-{state}\">{state}</span> <span class=\"muted\">{}</span></p>",
        esc(&id.to_string()),
        if connected { "online" } else { "offline" },
        if connected { "online" } else { "offline" },
        esc(agent.as_ref().map_or("-", |a| a.agent_version.as_str())),
        esc(&agent.as_ref().map_or_else(|| "-".to_owned(), |a| utc_text(a.last_message_ms))),
        esc(&reason),
    );

    body.push_str("<h2>Alerts</h2>");
    body.push_str(&alerts_table(&alerts, csrf, &device_href(id), false));

    body.push_str("<h2>Configuration: desired and reported</h2>");
    let empty = Map::new();
    let desired = twin
        .desired
        .get(CONFIG_KEY)
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let reported = twin
        .reported
        .get(CONFIG_KEY)
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let names: BTreeSet<&String> = desired.keys().chain(reported.keys()).collect();
    if names.is_empty() {
        body.push_str("<p class=\"muted\">Neither desired nor reported configuration yet.</p>");
    } else {
        body.push_str("<div class=\"scroll\"><table><thead><tr><th>Property</th><th>Desired</th><th>Reported</th></tr></thead><tbody>");
        for name in names {
            let d = desired.get(name.as_str());
            let r = reported.get(name.as_str());
            let differs = d.is_some_and(|d| !d.is_null() && Some(d) != r);
            let _ = write!(
                body,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td></tr>",
                if differs { " class=\"differs\"" } else { "" },
                esc(name),
                esc(&if d.is_some() {
                    json_text(d)
                } else {
                    "(default)".into()
                }),
                esc(&json_text(r)),
            );
        }
        body.push_str(
            "</tbody></table></div><p class=\"muted\">Highlighted: desired but not (yet) in force.</p>",
        );
    }
    body.push_str(&editor_form(id, csrf, &etag, desired, editor));

    body.push_str("<h2>Recommendations</h2>");
    if recs.is_empty() {
        body.push_str("<p class=\"muted\">None from the latest snapshots.</p>");
    } else {
        body.push_str("<ul class=\"recs\">");
        for r in &recs {
            let _ = write!(
                body,
                "<li>{} {}<br><span class=\"muted\">{}</span></li>",
                severity_badge(&r.severity),
                esc(&r.title),
                esc(&r.remediation)
            );
        }
        body.push_str("</ul>");
    }

    body.push_str("<h2>Activity</h2>");
    for (title, rows) in &activity {
        let items: Vec<Value> = rows
            .iter()
            .map(|e| serde_json::json!({"Time": utc_text(e.row.time_ms), "Summary": e.row.summary}))
            .collect();
        body.push_str(&items_table(title, None, &items).replace("No snapshot yet.", "None recently."));
    }
    body.push_str("<h2>Latest snapshots</h2>");
    for (title, snapshot) in &snapshots {
        let (when, items) = match snapshot {
            Some((t, Value::Array(items))) => (Some(*t), items.as_slice()),
            _ => (None, &[][..]),
        };
        body.push_str(&items_table(title, when, items));
    }

    body.push_str("<h2>Events</h2>");
    body.push_str(&bar_chart("Last 24 hours, by type", &counts));
    if !events.is_empty() {
        body.push_str("<div class=\"scroll\"><table><thead><tr><th>Time</th><th>Event</th><th>Summary</th></tr></thead><tbody>");
        for e in &events {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&utc_text(e.row.time_ms)),
                esc(&e.row.name),
                esc(&e.row.summary)
            );
        }
        body.push_str("</tbody></table></div>");
    }
    Ok(Some(layout(&id.to_string(), Some(csrf), &body)))
}

/// The snapshot kinds the device page shows as tables, with their titles.
const SNAPSHOT_TABLES: [(&str, &str); 6] = [
    ("ListeningPorts", "Listening ports"),
    ("LocalUsers", "Users"),
    ("FirewallConfiguration", "Firewall rules"),
    ("OSBaseline", "Baseline results"),
    ("SystemInformation", "System information"),
    ("ConnectedHardware", "Hardware"),
];

/// The event kinds the device page lists as recent activity.
const ACTIVITY_TABLES: [(&str, &str); 2] = [
    ("ProcessCreate", "Processes started"),
    ("ConnectionCreate", "Connections"),
];

/// Rows of each activity table.
const ACTIVITY_ROWS: usize = 25;

fn alerts_page(hub: &Hub, req: &Request, csrf: &str) -> Result<Option<String>, StoreError> {
    let severity = req.param("severity").and_then(Severity::parse);
    let state = req
        .param("state")
        .filter(|s| matches!(*s, "open" | "acknowledged" | "closed" | "all"))
        .map(str::to_owned);
    let device = req
        .param("device")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned);
    let alerts = hub.store().alerts(&AlertQuery {
        device: device.clone(),
        severity: severity.map(|s| s.as_str().to_owned()),
        state: state.clone(),
        changed_since_ms: None,
        limit: ALERTS_PER_PAGE,
    })?;
    let option = |value: &str, label: &str, selected: bool| {
        format!(
            "<option value=\"{}\"{}>{}</option>",
            esc(value),
            if selected { " selected" } else { "" },
            esc(label)
        )
    };
    let mut body = String::from("<h1>Alerts</h1><form method=\"get\" action=\"/alerts\" class=\"filters\"><label for=\"state\">State</label><select id=\"state\" name=\"state\">");
    body.push_str(&option("", "open and acknowledged", state.is_none()));
    for s in ["open", "acknowledged", "closed", "all"] {
        body.push_str(&option(s, s, state.as_deref() == Some(s)));
    }
    body.push_str(
        "</select><label for=\"severity\">Severity</label><select id=\"severity\" name=\"severity\">",
    );
    body.push_str(&option("", "any", severity.is_none()));
    for s in Severity::ALL {
        body.push_str(&option(s.as_str(), s.as_str(), severity == Some(s)));
    }
    let _ = write!(
        body,
        "</select><label for=\"device\">Device</label><input id=\"device\" name=\"device\" value=\"{}\"><button type=\"submit\">Filter</button></form>",
        esc(device.as_deref().unwrap_or(""))
    );
    let mut back = String::from("/alerts?");
    for (k, v) in [
        ("state", state.as_deref()),
        ("severity", severity.map(Severity::as_str)),
        ("device", device.as_deref()),
    ] {
        if let Some(v) = v {
            let _ = write!(back, "{k}={}&", percent_encode(v));
        }
    }
    body.push_str(&alerts_table(
        &alerts,
        csrf,
        back.trim_end_matches(['&', '?']),
        true,
    ));
    Ok(Some(layout("Alerts", Some(csrf), &body)))
}

/// The stylesheet: readable at phone width (tables scroll sideways inside their box).
const STYLE: &str = "
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;background:#f6f7f9}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1rem;padding:.6rem 1rem;background:#1d2a3a;color:#fff}
header a{color:#fff;margin-right:1rem}
.brand{font-weight:600;margin-right:1rem}
nav{display:flex;flex-wrap:wrap;align-items:center}
main{padding:1rem;max-width:72rem;margin:0 auto}
h1{font-size:1.4rem;margin:.2rem 0 .8rem}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
a{color:#1a56a0}
a:focus,button:focus,input:focus,select:focus,summary:focus{outline:3px solid #f0b400;outline-offset:1px}
.scroll{overflow-x:auto;background:#fff;border:1px solid #dde1e6;border-radius:6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #eceff2;vertical-align:top}
th{background:#eef1f5;font-weight:600}
tr.differs td{background:#fff4d6}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.5rem .8rem;min-width:7rem}
.sev{display:inline-block;padding:0 .4rem;border-radius:4px;font-size:.85em;color:#fff;background:#666}
.sev-high{background:#b3261e}.sev-medium{background:#c25e00}.sev-low{background:#3b6ea5}.sev-informational{background:#5f6b76}
.cfg-applied{color:#1d7a33}.cfg-rejected{color:#b3261e;font-weight:600}.cfg-pending{color:#c25e00}
.online{color:#1d7a33}.offline{color:#8a8f96}
.muted{color:#5f6b76}
.problem{color:#b3261e;font-weight:600}
pre{white-space:pre-wrap;word-break:break-all;background:#f3f4f6;padding:.4rem;font-size:.85em}
form.inline{display:inline}
button{font:inherit;padding:.25rem .7rem;border:1px solid #1a56a0;background:#fff;color:#1a56a0;border-radius:4px;cursor:pointer;margin:.1rem}
header button{background:transparent;color:#fff;border-color:#fff}
.login{display:flex;flex-direction:column;gap:.5rem;max-width:24rem}
.login input{font:inherit;padding:.4rem}
.filters{display:flex;flex-wrap:wrap;gap:.4rem;align-items:center;margin-bottom:.8rem}
.filters input,.filters select{font:inherit;padding:.2rem}
.recs li{margin-bottom:.4rem}
h3{font-size:1rem;margin:1rem 0 .4rem}
.editor{display:flex;flex-direction:column;gap:.4rem;max-width:48rem}
.editor label code{overflow-wrap:anywhere}
.editor textarea{font:13px/1.4 ui-monospace,monospace;width:100%;padding:.4rem}
textarea:focus{outline:3px solid #f0b400;outline-offset:1px}
.errors{border:1px solid #b3261e;background:#fdecea;color:#8c1d18;border-radius:6px;padding:.2rem .8rem;margin:.4rem 0}
.saved{border:1px solid #1d7a33;background:#e7f5ea;color:#14561f;border-radius:6px;padding:.4rem .8rem}
figure{margin:1rem 0}
figcaption{font-weight:600;margin-bottom:.3rem}
.chart{max-width:40rem;background:#fff;border:1px solid #dde1e6;border-radius:6px}
";

/// The icon: a shield.
const ICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><path d="M8 1 2 3v5c0 3.5 2.6 6 6 7 3.4-1 6-3.5 6-7V3z" fill="#2f6db5"/></svg>"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_forms_and_origins() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let f = form(b"token=a%2Bb+c&csrf=x&back=%2Falerts%3Fstate%3Dall");
        assert_eq!(f.get("token").map(String::as_str), Some("a+b c"));
        assert_eq!(f.get("back").map(String::as_str), Some("/alerts?state=all"));
        let req = |origin: Option<&str>| {
            let mut headers = vec![("host".to_owned(), "127.0.0.1:8884".to_owned())];
            if let Some(o) = origin {
                headers.push(("origin".to_owned(), o.to_owned()));
            }
            crate::http::request_from("POST", "/login", headers).expect("request")
        };
        assert!(same_origin(&req(None)));
        assert!(same_origin(&req(Some("http://127.0.0.1:8884"))));
        assert!(!same_origin(&req(Some("http://evil.example"))));
        assert!(!same_origin(&req(Some("null"))));
    }

    #[test]
    fn sessions_are_bounded_and_end() {
        let sessions = Sessions::default();
        let (first, csrf) = sessions.create(0).expect("session");
        assert_eq!(sessions.csrf_of(&first, 1).as_deref(), Some(csrf.as_str()));
        assert!(sessions.csrf_of(&first, SESSION_TTL_MS).is_none(), "expired");
        assert!(sessions.csrf_of("nope", 1).is_none());
        for i in 0..MAX_SESSIONS {
            sessions
                .create(i64::try_from(i).unwrap_or(0) + 1)
                .expect("session");
        }
        assert!(sessions.csrf_of(&first, 2).is_none(), "the oldest was evicted");
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        sessions.clear();
        assert!(sessions.lock().is_empty());
    }

    #[test]
    fn configuration_state() {
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        let desired = obj(serde_json::json!({"$version": 3}));
        let applied = obj(
            serde_json::json!({"twinguard": {"configurationStatus": "applied", "lastDesiredVersion": 3, "errors": []}}),
        );
        assert_eq!(config_state(&desired, &applied).0, "applied");
        let old = obj(
            serde_json::json!({"twinguard": {"configurationStatus": "applied", "lastDesiredVersion": 2}}),
        );
        assert_eq!(config_state(&desired, &old).0, "pending");
        let rejected = obj(
            serde_json::json!({"twinguard": {"configurationStatus": "rejected", "lastDesiredVersion": 3, "errors": ["maxMessageSizeInBytes: too small"]}}),
        );
        assert_eq!(
            config_state(&desired, &rejected),
            ("rejected", "maxMessageSizeInBytes: too small".to_owned())
        );
        assert_eq!(config_state(&desired, &Map::new()).0, "unknown");
    }
}
