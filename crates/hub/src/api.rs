//! The operator API: JSON over HTTP/1.1 on a loopback address only (anyone who can reach it
//! manages the hub, so it is never exposed). Routes:
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

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use crate::http::{read_request, write_response, HttpError, Request};
use crate::hub::{now_ms, Hub};
use crate::identity::{connection_string, generate_key, IdentityId};
use crate::store::{IdentityRecord, MessageQuery, StoreError, StoredMessage};
use crate::twin::{DesiredChange, Twin};

/// Requests served at once; more wait in the listen backlog.
pub const MAX_API_REQUESTS: usize = 16;
/// Longest wait of a `messages` request for new messages.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most messages in one answer.
pub const MAX_PAGE: usize = 1000;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer: status and JSON body.
type Answer = (u16, Value);

fn error(status: u16, message: impl std::fmt::Display) -> Answer {
    (status, json!({ "error": message.to_string() }))
}

fn store_error(e: StoreError) -> Answer {
    match e {
        StoreError::IdentityExists(_) => error(409, e),
        StoreError::NoSuchIdentity(_) => error(404, e),
        StoreError::Twin(_) => error(400, e),
        other => {
            warn!("API: {other}");
            error(500, other)
        }
    }
}

/// Serves the API on `listener` until the process ends. `status` is the body of
/// `/v1/status`.
pub fn serve(hub: Arc<Hub>, listener: TcpListener, status: Value) {
    let active = Arc::new(AtomicUsize::new(0));
    let status = Arc::new(status);
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                debug!("API accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_API_REQUESTS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = write_response(&mut stream, 503, &json!({"error": "busy"}));
            continue;
        }
        let (hub, active, status) = (hub.clone(), active.clone(), status.clone());
        let spawned = std::thread::Builder::new().name("api".into()).spawn(move || {
            exchange(&hub, &mut stream, &status);
            active.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            warn!("API: cannot start a thread: {e}");
        }
    }
}

fn exchange(hub: &Hub, stream: &mut TcpStream, status: &Value) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (code, body) = match read_request(stream) {
        Ok(request) => route(hub, &request, status),
        Err(HttpError::Bad { status, message }) => error(status, message),
        Err(HttpError::Io(e)) => {
            debug!("API read: {e}");
            return;
        }
    };
    let _ = write_response(stream, code, &body);
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

fn route(hub: &Hub, req: &Request, status: &Value) -> Answer {
    let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let method = req.method.as_str();
    let result = match (method, segments.as_slice()) {
        ("GET", ["v1", "status"]) => Ok((200, status.clone())),
        ("GET", ["v1", "connections"]) => Ok(connections(hub)),
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
        ("GET", ["v1", "messages"]) => messages(hub, req),
        (_, ["v1", ..]) => Err(error(
            405,
            format!("{method} /{} is not a route", segments.join("/")),
        )),
        _ => Err(error(404, "no such route")),
    };
    result.unwrap_or_else(|answer| answer)
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
    let key = generate_key().map_err(|_| error(500, "no random source"))?;
    let device_key = generate_key().map_err(|_| error(500, "no random source"))?;
    hub.store()
        .add_identity(&id, &key, Some(&device_key), now_ms())
        .map_err(store_error)?;
    let record = hub
        .store()
        .identity(&id)
        .map_err(store_error)?
        .ok_or_else(|| error(500, "identity vanished"))?;
    Ok((201, identity_json(hub, &record)))
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
    let received = twinguard::event::Timestamp::from_parts(msg.received_ms, 0)
        .map(|t| t.utc_rfc3339())
        .unwrap_or_default();
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

fn messages(hub: &Hub, req: &Request) -> Result<Answer, Answer> {
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
        if !found.is_empty() || now >= deadline {
            let next = found.last().map_or(query.after, |m| m.seq);
            let list: Vec<Value> = found.iter().map(message_json).collect();
            return Ok((200, json!({ "messages": list, "next": next })));
        }
        // Wakes on any new message (perhaps another identity's): query again.
        hub.wait_for_message(last, deadline - now);
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
