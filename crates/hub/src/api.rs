//! The operator API: JSON over HTTP/1.1 on a loopback address only. Every request must carry
//! the hub's token (`Authorization: Bearer ...`, from `DIR/api-token`) and a `Host` naming
//! the loopback address or a name given to `serve --api-host`; a request with a body must say
//! `Content-Type: application/json`. So a web page in a browser on the same machine can
//! neither read the API by DNS rebinding (its `Host` is its own name: 421) nor change anything
//! by a cross-site form or `text/plain` POST (no token header: 401; and no CORS answer ever
//! lets a page add one). Routes:
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/v1/status` | version, host name, listening addresses, CA file |
//! | GET | `/v1/identities` | all identities (with keys and connection strings) |
//! | POST | `/v1/identities` `{"deviceId", "moduleId"?}` | creates one (201; 409 if it exists) |
//! | GET | `/v1/identities/{d}[/modules/{m}]` | one identity |
//! | GET | `/v1/twins/{d}[/modules/{m}]` | its twin |
//! | PUT | `/v1/twins/{d}[/modules/{m}]/desired` | replaces the desired properties |
//! | PATCH | `/v1/twins/{d}[/modules/{m}]/desired` | merges a patch into them (RFC 7386) |
//! | GET | `/v1/messages?device=&module=&after=&limit=&waitMs=` | stored messages after a sequence number, waiting up to `waitMs` for one |
//! | GET | `/v1/connections` | the live connections |
//! | POST | `/v1/token` | replaces the API token (returns the new one; the old one stops working) |
//! | GET | `/v1/policies[/{name}]` | the shared access policies; one with its service connection string |
//! | GET | `/v1/audit?after=&limit=` | the audit trail after a sequence number |
//! | GET | `/v1/alerts?device=&severity=&state=&changedSince=&limit=` | the console's alerts (default: open and acknowledged, newest change first; with `changedSince` (Unix ms), oldest change first) |
//! | GET | `/v1/alerts/{id}` | one alert |
//! | POST | `/v1/alerts/{id}/ack`, `/v1/alerts/{id}/close` | changes its state (409 if it is closed) |
//! | GET | `/v1/fleet` | the devices followed on the MQTT fleet broker (`serve --mqtt-fleet`) and their status |
//! | GET | `/v1/statistics` | counters of optional parts (`alertWebhook`: delivered, retries, failed, dropped, last error) |
//! | GET | `/v1/recommendations?device=` | the recommendations from the latest snapshots |
//!
//! Any path outside `/v1/` is the web console ([`crate::web`]), which logs in with
//! the token once and then uses a session cookie and CSRF tokens instead of the header.
//!
//! The transport (hyper, and the pools that keep slow clients from blocking everyone) is
//! [`crate::api_server`]; this module is what a request meets once it is read: [`exchange`].

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use crate::console::model::utc_text;
use crate::console::rules::{Rule, Severity};
use crate::http::Request;
use crate::hub::{now_ms, Hub};
use crate::keys::generate_key;
use crate::store::{
    AlertAction, AlertQuery, AlertRecord, IdentityRecord, MessageQuery, RecommendationRecord, RegistryRecord,
    StoreError, StoredMessage,
};
use crate::twin::{DesiredChange, Twin};
use crate::web::{Login, Sessions, WebReply};
use twinguard_core::iothub::identity::{connection_string, IdentityId};

/// `messages` requests waiting for a new message at once; a newer one ends the oldest wait.
pub const MAX_LONG_POLLS: usize = 32;
/// Longest wait of a `messages` request for new messages.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most messages in one answer.
pub const MAX_PAGE: usize = 1000;

/// An answer: status and JSON body.
pub type Answer = (u16, Value);

fn error(status: u16, message: impl std::fmt::Display) -> Answer {
    (status, json!({ "error": message.to_string() }))
}

fn store_error(e: StoreError) -> Answer {
    match e {
        StoreError::IdentityExists(_) => error(409, e),
        StoreError::NoSuchIdentity(_) => error(404, e),
        StoreError::Twin(_) => error(400, e),
        StoreError::NoSuchAlert(_) => error(404, e),
        StoreError::AlertState { .. } => error(409, e),
        other => {
            warn!("API: {other}");
            error(500, other)
        }
    }
}

/// Who may use the API: the token, the names `Host` may carry, and where the token is kept.
#[derive(Debug)]
pub struct Access {
    token: RwLock<String>,
    /// Host names besides the loopback ones (`serve --api-host`), lower case.
    hosts: Vec<String>,
    /// The address the API is bound to (its literal is accepted as `Host` too).
    bound: IpAddr,
    data_dir: PathBuf,
    /// The web console's sessions (ended when the token is rotated).
    sessions: Sessions,
}

impl Access {
    /// The API's access rules: `token` (as in `data_dir`), and `hosts` accepted in `Host`
    /// besides `localhost`, `127.0.0.1`, `[::1]` and the bound address.
    pub fn new(token: String, hosts: &[String], bound: IpAddr, data_dir: PathBuf) -> Access {
        Access {
            token: RwLock::new(token),
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            bound,
            data_dir,
            sessions: Sessions::default(),
        }
    }

    /// Whether a `Host` header value names this API: a loopback name or a configured one,
    /// with any port.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let name = if let Some(rest) = host.strip_prefix('[') {
            match rest.split_once(']') {
                Some((v6, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) => {
                    format!("[{v6}]")
                }
                _ => return false,
            }
        } else {
            match host.rsplit_once(':') {
                Some((name, port)) if is_port(port) => name.to_owned(),
                Some(_) => return false,
                None => host.clone(),
            }
        };
        let bound = match self.bound {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        ["localhost", "127.0.0.1", "[::1]", bound.as_str()].contains(&name.as_str())
            || self.hosts.contains(&name)
    }

    fn token_matches(&self, given: &str) -> bool {
        let token = self
            .token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::token::matches(&token, given)
    }
}

impl Login for Access {
    fn token_matches(&self, token: &str) -> bool {
        Access::token_matches(self, token)
    }

    fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The checks every request passes before its route: `Host`, the bearer token, and the
/// content type of a body. `Err` is the answer.
fn check_access(access: &Access, req: &Request) -> Result<(), Answer> {
    check_host(access, req)?;
    check_token(access, req)
}

/// The `Host` check, which the web console passes too.
fn check_host(access: &Access, req: &Request) -> Result<(), Answer> {
    match req.header("host") {
        Some(host) if access.host_allowed(host) => {}
        Some(host) => {
            return Err(error(
                421,
                format!("Host {host:?} is not this API's name (localhost, 127.0.0.1, [::1], or a serve --api-host name)"),
            ))
        }
        None => return Err(error(400, "exactly one Host header is required")),
    }
    Ok(())
}

/// The bearer token and the content type of a body.
fn check_token(access: &Access, req: &Request) -> Result<(), Answer> {
    let token = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match token {
        Some(t) if access.token_matches(t) => {}
        Some(_) => return Err(error(401, "wrong API token")),
        None => {
            return Err(error(
                401,
                "an API token is required: Authorization: Bearer <the token in DIR/api-token>",
            ))
        }
    }
    let has_body = !req.body.is_empty() || !matches!(req.method.as_str(), "GET" | "HEAD");
    if has_body {
        let json = req.header("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(error(
                415,
                "a request with a body must be Content-Type: application/json",
            ));
        }
    }
    Ok(())
}

/// Waiting `messages` requests, oldest first, each with the flag that ends its wait early.
#[derive(Debug, Default)]
pub struct LongPolls {
    waiting: Mutex<VecDeque<(u64, Arc<AtomicBool>)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A waiting request's place; leaves the list when dropped.
struct LongPoll<'a> {
    polls: &'a LongPolls,
    id: u64,
    cancel: Arc<AtomicBool>,
}

impl LongPolls {
    /// Enters a wait, ending the oldest one if [`MAX_LONG_POLLS`] are waiting.
    fn enter<'a>(&'a self, hub: &Hub) -> LongPoll<'a> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if waiting.len() >= MAX_LONG_POLLS {
            if let Some((_, oldest)) = waiting.pop_front() {
                oldest.store(true, Ordering::SeqCst);
                hub.wake_waiters();
            }
        }
        waiting.push_back((id, cancel.clone()));
        LongPoll {
            polls: self,
            id,
            cancel,
        }
    }
}

impl Drop for LongPoll<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .polls
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        waiting.retain(|(id, _)| *id != self.id);
    }
}

/// What the API answers: JSON under `/v1/`, a web page elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The JSON API's answer.
    Json(Answer),
    /// The web console's.
    Web(WebReply),
}

/// Answers a request that has been read whole: the access checks, then a long-poll in its own
/// budget, or a route (or a web page) while `answer_slot` gives a slot of the answering pool
/// (else 503).
pub fn exchange<Slot>(
    hub: &Hub,
    request: &Request,
    status: &Value,
    access: &Access,
    polls: &LongPolls,
    answer_slot: impl FnOnce() -> Option<Slot>,
) -> Reply {
    if request.segments.first().is_none_or(|s| s != "v1") {
        return match check_host(access, request) {
            Err(answer) => Reply::Json(answer),
            Ok(()) => match answer_slot() {
                Some(_slot) => Reply::Web(crate::web::serve(hub, request, access)),
                None => Reply::Json(error(503, "busy: too many API requests at once")),
            },
        };
    }
    Reply::Json(match check_access(access, request) {
        Err(answer) => answer,
        Ok(()) if is_long_poll(request) => {
            let poll = polls.enter(hub);
            messages(hub, request, &poll.cancel).unwrap_or_else(|a| a)
        }
        Ok(()) => match answer_slot() {
            Some(_slot) => route(hub, request, status, access),
            None => error(503, "busy: too many API requests at once"),
        },
    })
}

fn is_long_poll(req: &Request) -> bool {
    req.method == "GET"
        && req.segments.len() == 2
        && req.segments[0] == "v1"
        && req.segments[1] == "messages"
        && req.param("waitMs").is_some_and(|w| w != "0")
}

/// The identity named by path segments `{d}` or `{d}/modules/{m}`.
fn identity_at(segments: &[String]) -> Result<IdentityId, Answer> {
    let parsed = match segments {
        [d] => IdentityId::new(d, None),
        [d, modules, m] if modules == "modules" => IdentityId::new(d, Some(m)),
        _ => return Err(error(404, "no such route")),
    };
    parsed.map_err(|e| error(400, e))
}

fn route(hub: &Hub, req: &Request, status: &Value, access: &Access) -> Answer {
    let answer = route_unaudited(hub, req, status, access);
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        let target = format!("/{}", req.segments.join("/"));
        let recorded = hub.store().record_audit(
            now_ms(),
            "api-token",
            &format!("{} {target}", req.method),
            &target,
            answer.0,
        );
        if let Err(e) = recorded {
            warn!("audit trail: {e}");
        }
    }
    answer
}

fn route_unaudited(hub: &Hub, req: &Request, status: &Value, access: &Access) -> Answer {
    let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let method = req.method.as_str();
    let result = match (method, segments.as_slice()) {
        ("GET", ["v1", "status"]) => Ok((200, status.clone())),
        ("GET", ["v1", "connections"]) => Ok(connections(hub)),
        ("GET", ["v1", "fleet"]) => Ok(fleet_devices(hub)),
        ("GET", ["v1", "statistics"]) => Ok((200, Value::Object(hub.statistics()))),
        ("GET", ["v1", "identities"]) => list_identities(hub),
        ("POST", ["v1", "identities"]) => add_identity(hub, &req.body),
        ("GET", ["v1", "identities", ..]) => {
            identity_at(&req.segments[2..]).and_then(|id| show_identity(hub, &id))
        }
        ("GET", ["v1", "twins", ..]) => identity_at(&req.segments[2..]).and_then(|id| show_twin(hub, &id)),
        ("PUT" | "PATCH", ["v1", "twins", .., "desired"]) => {
            identity_at(&req.segments[2..req.segments.len() - 1])
                .and_then(|id| change_desired(hub, &id, method, &req.body))
        }
        ("GET", ["v1", "messages"]) => messages(hub, req, &AtomicBool::new(false)),
        ("POST", ["v1", "token"]) => rotate_token(access),
        ("GET", ["v1", "policies"]) => policies(hub, status, None),
        ("GET", ["v1", "policies", name]) => policies(hub, status, Some(name)),
        ("GET", ["v1", "audit"]) => audit(hub, req),
        ("GET", ["v1", "alerts"]) => alerts(hub, req),
        ("GET", ["v1", "alerts", id]) => alert_number(id).and_then(|id| {
            hub.store()
                .alert(id)
                .map_err(store_error)?
                .map(|a| (200, alert_json(&a)))
                .ok_or_else(|| store_error(StoreError::NoSuchAlert(id)))
        }),
        ("POST", ["v1", "alerts", id, action]) => {
            let action = match *action {
                "ack" => AlertAction::Acknowledge,
                "close" => AlertAction::Close,
                _ => return error(404, "no such route (ack or close)"),
            };
            alert_number(id).and_then(|id| {
                let alert = hub
                    .store()
                    .change_alert(id, action, now_ms())
                    .map_err(store_error)?;
                Ok((200, alert_json(&alert)))
            })
        }
        ("GET", ["v1", "recommendations"]) => {
            let list = hub
                .store()
                .recommendations(req.param("device"))
                .map_err(store_error);
            list.map(|l| (200, Value::Array(l.iter().map(recommendation_json).collect())))
        }
        (_, ["v1", ..]) => Err(error(
            405,
            format!("{method} /{} is not a route", segments.join("/")),
        )),
        _ => Err(error(404, "no such route")),
    };
    result.unwrap_or_else(|answer| answer)
}

fn alert_number(text: &str) -> Result<i64, Answer> {
    text.parse::<i64>()
        .map_err(|_| error(400, "an alert id is a whole number"))
}

/// An alert as the API and the CLI show it.
pub fn alert_json(a: &AlertRecord) -> Value {
    let rule = Rule::parse(&a.rule);
    json!({
        "id": a.id,
        "rule": a.rule,
        "title": rule.map_or("", Rule::title),
        "severity": a.severity,
        "deviceId": a.identity.device(),
        "moduleId": a.identity.module(),
        "key": a.key,
        "state": a.state,
        "count": a.count,
        "firstSeen": utc_text(a.first_ms),
        "lastSeen": utc_text(a.last_ms),
        "changedMs": a.changed_ms,
        "evidence": a.evidence,
        "remediation": rule.map_or("", Rule::remediation),
    })
}

fn recommendation_json(r: &RecommendationRecord) -> Value {
    json!({
        "deviceId": r.identity.device(),
        "moduleId": r.identity.module(),
        "kind": r.kind,
        "key": r.key,
        "severity": r.severity,
        "title": r.title,
        "remediation": r.remediation,
        "source": r.source,
        "updated": utc_text(r.updated_ms),
    })
}

/// Most alerts in one answer.
pub const MAX_ALERTS: usize = 1000;

fn alerts(hub: &Hub, req: &Request) -> Result<Answer, Answer> {
    let severity = match req.param("severity") {
        None => None,
        Some(s) => Some(
            Severity::parse(s)
                .ok_or_else(|| error(400, "severity is high, medium, low or informational"))?
                .as_str()
                .to_owned(),
        ),
    };
    let state = match req.param("state") {
        None => None,
        Some(s @ ("open" | "acknowledged" | "closed" | "all")) => Some(s.to_owned()),
        Some(_) => return Err(error(400, "state is open, acknowledged, closed or all")),
    };
    let changed_since_ms = req
        .param("changedSince")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| error(400, "changedSince is Unix milliseconds"))
        })
        .transpose()?;
    let limit = req
        .param("limit")
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| error(400, "limit must be a whole number"))
        })
        .transpose()?
        .unwrap_or(MAX_ALERTS)
        .clamp(1, MAX_ALERTS);
    let list = hub
        .store()
        .alerts(&AlertQuery {
            device: req.param("device").map(str::to_owned),
            severity,
            state,
            changed_since_ms,
            limit,
        })
        .map_err(store_error)?;
    Ok((200, Value::Array(list.iter().map(alert_json).collect())))
}

fn identity_json(hub: &Hub, r: &IdentityRecord) -> Value {
    json!({
        "deviceId": r.id.device(),
        "moduleId": r.id.module(),
        "primaryKey": r.key,
        "connectionString": connection_string(hub.hostname(), &r.id, &r.key),
        "createdAtMs": r.created_ms,
    })
}

fn list_identities(hub: &Hub) -> Result<Answer, Answer> {
    let all = hub.store().identities().map_err(store_error)?;
    Ok((
        200,
        Value::Array(all.iter().map(|r| identity_json(hub, r)).collect()),
    ))
}

fn add_identity(hub: &Hub, body: &[u8]) -> Result<Answer, Answer> {
    let body: Value = serde_json::from_slice(body).map_err(|e| error(400, format!("body: {e}")))?;
    let device = body
        .get("deviceId")
        .and_then(Value::as_str)
        .ok_or_else(|| error(400, "deviceId (a string) is required"))?;
    let module = match body.get("moduleId") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.as_str()),
        Some(_) => return Err(error(400, "moduleId must be a string")),
    };
    let id = IdentityId::new(device, module).map_err(|e| error(400, e))?;
    let new_record = |id: &IdentityId| -> Result<RegistryRecord, Answer> {
        let key = || generate_key().map_err(|_| error(500, "no random source"));
        Ok(RegistryRecord {
            id: id.clone(),
            primary_key: key()?,
            secondary_key: key()?,
            status: "enabled".into(),
            etag_n: 0,
            created_ms: 0,
        })
    };
    // The service API's registry code: a module's device is created with it when missing.
    if id.module().is_some() {
        let device = IdentityId::new(device, None).map_err(|e| error(400, e))?;
        if hub
            .store()
            .registry_record(&device)
            .map_err(store_error)?
            .is_none()
        {
            hub.store()
                .put_identity(&new_record(&device)?, None, now_ms())
                .map_err(store_error)?;
            crate::rollout::reconcile_one(hub, &device).map_err(store_error)?;
        }
    }
    hub.store()
        .put_identity(&new_record(&id)?, None, now_ms())
        .map_err(store_error)?;
    let record = hub
        .store()
        .identity(&id)
        .map_err(store_error)?
        .ok_or_else(|| error(500, "identity vanished"))?;
    // Configurations that target the new identity apply to it at once.
    crate::rollout::reconcile_one(hub, &id).map_err(store_error)?;
    Ok((201, identity_json(hub, &record)))
}

/// The policies (names and permissions), or one with its service connection string. The
/// host name carries the service port unless it is 443, which every SDK assumes.
fn policies(hub: &Hub, status: &Value, name: Option<&str>) -> Result<Answer, Answer> {
    let all = hub.store().policies().map_err(store_error)?;
    let Some(name) = name else {
        let list: Vec<Value> = all
            .iter()
            .map(|(n, _, _)| {
                let permissions: Vec<String> = crate::policy::permissions(n)
                    .unwrap_or_default()
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect();
                json!({"name": n, "permissions": permissions})
            })
            .collect();
        return Ok((200, Value::Array(list)));
    };
    let (_, primary, secondary) = all.iter().find(|(n, _, _)| n == name).ok_or_else(|| {
        error(
            404,
            format!(
                "no shared access policy {name:?} (iothubowner, service, registryRead, registryReadWrite)"
            ),
        )
    })?;
    let port = status
        .get("service")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port());
    let host = match port {
        None | Some(443) => hub.hostname().to_owned(),
        Some(p) => format!("{}:{p}", hub.hostname()),
    };
    Ok((
        200,
        json!({
            "name": name,
            "primaryKey": primary,
            "secondaryKey": secondary,
            "connectionString": crate::policy::connection_string(&host, name, primary),
            "serviceEnabled": port.is_some(),
        }),
    ))
}

fn audit(hub: &Hub, req: &Request) -> Result<Answer, Answer> {
    let after = req
        .param("after")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| error(400, "after must be a whole number"))
        })
        .transpose()?
        .unwrap_or(0);
    let entries = hub.store().audit_after(after, MAX_PAGE).map_err(store_error)?;
    let next = entries.last().map_or(after, |e| e.seq);
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "atMs": e.at_ms,
                "who": e.who,
                "action": e.action,
                "target": e.target,
                "status": e.status,
            })
        })
        .collect();
    Ok((200, json!({"entries": list, "next": next})))
}

fn show_identity(hub: &Hub, id: &IdentityId) -> Result<Answer, Answer> {
    match hub.store().identity(id).map_err(store_error)? {
        Some(r) => Ok((200, identity_json(hub, &r))),
        None => Err(error(404, format!("no identity {id}"))),
    }
}

fn twin_json(id: &IdentityId, twin: &Twin) -> Value {
    json!({
        "deviceId": id.device(),
        "moduleId": id.module(),
        "properties": twin.get_body(),
    })
}

fn show_twin(hub: &Hub, id: &IdentityId) -> Result<Answer, Answer> {
    match hub.store().twin(id).map_err(store_error)? {
        Some(t) => Ok((200, twin_json(id, &t))),
        None => Err(error(404, format!("no identity {id}"))),
    }
}

fn change_desired(hub: &Hub, id: &IdentityId, method: &str, body: &[u8]) -> Result<Answer, Answer> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| error(400, format!("body: {e}")))?;
    let change = if method == "PUT" {
        DesiredChange::Replace(doc)
    } else {
        DesiredChange::Patch(doc)
    };
    let twin = hub.change_desired(id, &change).map_err(store_error)?;
    Ok((200, twin_json(id, &twin)))
}

fn message_json(m: &StoredMessage) -> Value {
    let msg = &m.message;
    let mut properties = Map::new();
    for (name, value) in &msg.properties {
        properties.insert(name.clone(), value.as_deref().map_or(Value::Null, Value::from));
    }
    let received = utc_text(msg.received_ms);
    let mut out = json!({
        "seq": m.seq,
        "deviceId": msg.id.device(),
        "moduleId": msg.id.module(),
        "receivedAt": received,
        "topic": msg.topic,
        "properties": properties,
        "securityMessage": msg.is_security,
        "schemaValid": msg.schema_valid,
        "schemaError": msg.schema_error,
    });
    // `body` is always the parsed JSON document (security messages are JSON), so readers
    // need no second parse; any other body goes to `bodyBase64`, so a key never changes type.
    match serde_json::from_slice::<Value>(&msg.body) {
        Ok(doc) => out["body"] = doc,
        Err(_) => {
            out["bodyBase64"] = Value::from(base64::engine::general_purpose::STANDARD.encode(&msg.body))
        }
    }
    out
}

/// Stored messages after `after`; with `waitMs`, waits for one until then or until `cancel`.
fn messages(hub: &Hub, req: &Request, cancel: &AtomicBool) -> Result<Answer, Answer> {
    let number = |name: &str| -> Result<Option<u64>, Answer> {
        req.param(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| error(400, format!("{name} must be a whole number")))
            })
            .transpose()
    };
    let query = MessageQuery {
        device: req.param("device").map(str::to_owned),
        module: req.param("module").map(str::to_owned),
        after: i64::try_from(number("after")?.unwrap_or(0)).unwrap_or(i64::MAX),
        limit: usize::try_from(number("limit")?.unwrap_or(MAX_PAGE as u64))
            .unwrap_or(MAX_PAGE)
            .clamp(1, MAX_PAGE),
    };
    let wait = Duration::from_millis(number("waitMs")?.unwrap_or(0)).min(MAX_WAIT);
    let deadline = std::time::Instant::now() + wait;
    loop {
        // Read before querying, so a message stored in between is not waited for in vain.
        let last = hub.last_message_seq();
        let found = hub.store().messages(&query).map_err(store_error)?;
        let now = std::time::Instant::now();
        if !found.is_empty() || now >= deadline || cancel.load(Ordering::SeqCst) {
            let next = found.last().map_or(query.after, |m| m.seq);
            let list: Vec<Value> = found.iter().map(message_json).collect();
            return Ok((200, json!({ "messages": list, "next": next })));
        }
        // Wakes on any new message (perhaps another identity's): query again.
        hub.wait_for_message(last, deadline - now, cancel);
    }
}

fn connections(hub: &Hub) -> Answer {
    let list: Vec<Value> = hub
        .connections()
        .iter()
        .map(|c| {
            json!({
                "deviceId": c.id.device(),
                "moduleId": c.id.module(),
                "peer": c.peer.to_string(),
                "sinceMs": c.since_ms,
            })
        })
        .collect();
    (200, Value::Array(list))
}

/// The devices followed on the MQTT fleet broker (`serve --mqtt-fleet`), with their status.
fn fleet_devices(hub: &Hub) -> Answer {
    let list: Vec<Value> = hub
        .fleet_devices()
        .into_iter()
        .map(|(id, d)| {
            json!({
                "deviceId": id.device(),
                "status": match d.online {
                    Some(true) => "online",
                    Some(false) => "offline",
                    None => "unknown",
                },
                "sinceMs": d.since_ms,
            })
        })
        .collect();
    (200, Value::Array(list))
}

/// Runs the API's request path, short of the socket and the store, over untrusted bytes: the
/// HTTP parser, the access checks (Host, token, content type), and the identity named by the
/// path. The fuzz target `http_request` and its corpus replay call it; it must never panic.
pub fn check_untrusted_request(data: &[u8]) {
    let Ok(request) = crate::http::parse_request(data) else {
        return;
    };
    let access = Access::new(
        "A".repeat(43),
        &["hub.example".into()],
        IpAddr::from([127, 0, 0, 1]),
        PathBuf::new(),
    );
    let _ = check_access(&access, &request);
    let _ = is_long_poll(&request);
    for host in request.header_values("host") {
        let _ = access.host_allowed(host);
    }
    if request.segments.len() > 2 {
        let _ = identity_at(&request.segments[2..]);
    }
}

fn rotate_token(access: &Access) -> Result<Answer, Answer> {
    let mut token = access
        .token
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let new = crate::token::rotate(&access.data_dir).map_err(|e| {
        // The whole cause chain: "DIR/.api-token.tmp: Permission denied (os error 13)".
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            cause = c.source();
        }
        warn!("API token rotation: {message}");
        error(500, message)
    })?;
    *token = new.clone();
    access.sessions.clear();
    info!("API token rotated: the previous token and every web session no longer work");
    Ok((200, json!({ "token": new })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let access = Access::new(
            "t".into(),
            &["Hub.Example".into()],
            "127.0.0.2".parse().expect("ip"),
            PathBuf::new(),
        );
        for ok in [
            "localhost",
            "LOCALHOST:8884",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:8884",
            "127.0.0.2:8884",
            "hub.example:443",
        ] {
            assert!(access.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:8884",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "127.0.0.1:x",
            "[::1]x",
            "",
            "localhost:",
        ] {
            assert!(!access.host_allowed(bad), "{bad}");
        }
    }
}
