//! The service API's routes, as IoT Hub has them (any `api-version`): the registry (devices
//! and modules), twins (with etags and `If-Match`), queries, automatic configurations and
//! statistics; other IoT Hub service paths answer 501, unknown ones 404. Each request is
//! authenticated first (a shared access policy token), then checked against the policy's
//! permissions; every state-changing request is written to the audit trail. Synchronous: the
//! transport runs it on a blocking thread.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use super::ServiceState;
use crate::configuration::Configuration;
use crate::hub::now_ms;
use crate::keys::generate_key;
use crate::policy::{self, Permission};
use crate::rollout;
use crate::store::{etag_of, RegistryRecord, StoreError, TwinRecord};
use crate::twin::{patched, DesiredChange};
use crate::twin_query::{Query, Source};
use twinguard_core::iothub::identity::IdentityId;
use twinguard_core::iothub::query::{decoded_pairs, percent_decode};

/// Default and largest page of a query.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// A request, read whole.
#[derive(Clone, Debug)]
pub struct ServiceRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, still percent-encoded.
    pub path: String,
    /// The query string's decoded pairs (`api-version` and others are accepted and ignored
    /// unless a route reads them).
    pub query: Vec<(String, Option<String>)>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Where it came from.
    pub peer: IpAddr,
}

impl ServiceRequest {
    /// From hyper's request parts and the body.
    pub fn from_parts(parts: &hyper::http::request::Parts, body: Vec<u8>, peer: IpAddr) -> ServiceRequest {
        let headers = parts
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned())))
            .collect();
        ServiceRequest {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts
                .uri
                .query()
                .and_then(|q| decoded_pairs(q).ok())
                .unwrap_or_default(),
            headers,
            body,
            peer,
        }
    }

    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// An answer: status, JSON body (none for 204), extra headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Option<Value>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn ok(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    fn empty() -> Answer {
        Answer {
            status: 204,
            body: None,
            headers: Vec::new(),
        }
    }

    /// An error in IoT Hub's shape: `{"Message": "ErrorCode:CODE;text", "ExceptionMessage"}`.
    pub fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer::ok(
            status,
            json!({
                "Message": format!("ErrorCode:{code};{message}"),
                "ExceptionMessage": message,
                "ErrorCode": code,
            }),
        )
    }

    /// The HTTP response.
    pub fn into_response(self) -> hyper::Response<Full<Bytes>> {
        let body = self
            .body
            .as_ref()
            .map(|b| Bytes::from(b.to_string()))
            .unwrap_or_default();
        let mut response = hyper::Response::new(Full::new(body));
        *response.status_mut() =
            hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        if self.body.is_some() {
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
            );
        }
        for (name, value) in self.headers {
            if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        response
    }
}

type Result<T> = std::result::Result<T, Answer>;

fn bad_request(message: impl std::fmt::Display) -> Answer {
    Answer::error(400, "ArgumentInvalid", &message.to_string())
}

fn store_error(e: StoreError) -> Answer {
    match &e {
        StoreError::IdentityExists(_) => Answer::error(409, "DeviceAlreadyExists", &e.to_string()),
        StoreError::NoSuchIdentity(_) => Answer::error(404, "DeviceNotFound", &e.to_string()),
        StoreError::StaleEtag { .. } => Answer::error(412, "PreconditionFailed", &e.to_string()),
        StoreError::Twin(t) => bad_request(t),
        _ => {
            warn!("service API: {e}");
            Answer::error(500, "ServerError", &e.to_string())
        }
    }
}

/// An operation of the service API.
#[derive(Clone, Debug, PartialEq)]
enum Operation {
    ListDevices,
    GetIdentity(IdentityId),
    PutIdentity(IdentityId),
    DeleteIdentity(IdentityId),
    ListModules(String),
    GetTwin(IdentityId),
    WriteTwin(IdentityId, bool),
    Query,
    ListConfigurations,
    GetConfiguration(String),
    PutConfiguration(String),
    DeleteConfiguration(String),
    DeviceStatistics,
    ServiceStatistics,
    NotImplemented(&'static str),
}

impl Operation {
    /// What it needs, and whether it is a twin read (allowed to `service` too).
    fn needs(&self) -> (Permission, bool) {
        match self {
            Operation::GetTwin(_) | Operation::Query => (Permission::RegistryRead, true),
            Operation::WriteTwin(..) | Operation::NotImplemented(_) => (Permission::ServiceConnect, false),
            Operation::PutIdentity(_)
            | Operation::DeleteIdentity(_)
            | Operation::PutConfiguration(_)
            | Operation::DeleteConfiguration(_) => (Permission::RegistryWrite, false),
            _ => (Permission::RegistryRead, false),
        }
    }

    fn changes_state(&self) -> bool {
        matches!(
            self,
            Operation::PutIdentity(_)
                | Operation::DeleteIdentity(_)
                | Operation::WriteTwin(..)
                | Operation::PutConfiguration(_)
                | Operation::DeleteConfiguration(_)
        )
    }
}

fn identity(device: &str, module: Option<&str>) -> Result<IdentityId> {
    IdentityId::new(device, module).map_err(bad_request)
}

/// The operation a method and path name; 404 for an unknown path, 405 for a known path with
/// another method.
fn route(method: &str, segments: &[String]) -> Result<Operation> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let not_allowed = || {
        Answer::error(
            405,
            "MethodNotAllowed",
            &format!("{method} is not allowed on /{}", s.join("/")),
        )
    };
    let op = match (method, s.as_slice()) {
        ("GET", ["devices"]) => Operation::ListDevices,
        ("POST", ["devices"]) => Operation::NotImplemented("bulk registry operations"),
        ("POST", ["devices", "query"]) => Operation::Query,
        ("GET", ["devices", d]) => Operation::GetIdentity(identity(d, None)?),
        ("PUT", ["devices", d]) => Operation::PutIdentity(identity(d, None)?),
        ("DELETE", ["devices", d]) => Operation::DeleteIdentity(identity(d, None)?),
        (_, ["devices", _]) => return Err(not_allowed()),
        ("GET", ["devices", d, "modules"]) => {
            identity(d, None)?;
            Operation::ListModules((*d).to_owned())
        }
        (_, ["devices", _, "modules"]) => return Err(not_allowed()),
        ("GET", ["devices", d, "modules", m]) => Operation::GetIdentity(identity(d, Some(m))?),
        ("PUT", ["devices", d, "modules", m]) => Operation::PutIdentity(identity(d, Some(m))?),
        ("DELETE", ["devices", d, "modules", m]) => Operation::DeleteIdentity(identity(d, Some(m))?),
        (_, ["devices", _, "modules", _]) => return Err(not_allowed()),
        (_, ["devices", _, "applyConfigurationContent"]) => {
            Operation::NotImplemented("IoT Edge configuration content")
        }
        (_, ["devices", _, "messages", ..]) | (_, ["messages", ..]) => {
            Operation::NotImplemented("cloud-to-device messages")
        }
        (_, ["devices", _, "files", ..]) => Operation::NotImplemented("file uploads"),
        ("GET", ["twins", d]) => Operation::GetTwin(identity(d, None)?),
        ("PATCH", ["twins", d]) => Operation::WriteTwin(identity(d, None)?, false),
        ("PUT", ["twins", d]) => Operation::WriteTwin(identity(d, None)?, true),
        (_, ["twins", _]) => return Err(not_allowed()),
        ("GET", ["twins", d, "modules", m]) => Operation::GetTwin(identity(d, Some(m))?),
        ("PATCH", ["twins", d, "modules", m]) => Operation::WriteTwin(identity(d, Some(m))?, false),
        ("PUT", ["twins", d, "modules", m]) => Operation::WriteTwin(identity(d, Some(m))?, true),
        (_, ["twins", _, "modules", _]) => return Err(not_allowed()),
        (_, ["twins", _, "methods"]) | (_, ["twins", _, "modules", _, "methods"]) => {
            Operation::NotImplemented("direct methods")
        }
        ("GET", ["configurations"]) => Operation::ListConfigurations,
        (_, ["configurations", "testQueries"]) => Operation::NotImplemented("configuration test queries"),
        ("GET", ["configurations", c]) => Operation::GetConfiguration((*c).to_owned()),
        ("PUT", ["configurations", c]) => Operation::PutConfiguration((*c).to_owned()),
        ("DELETE", ["configurations", c]) => Operation::DeleteConfiguration((*c).to_owned()),
        (_, ["configurations", ..]) => return Err(not_allowed()),
        ("GET", ["statistics", "devices"]) => Operation::DeviceStatistics,
        ("GET", ["statistics", "service"]) => Operation::ServiceStatistics,
        (_, ["jobs", ..]) => Operation::NotImplemented("jobs"),
        (_, ["digitaltwins", ..]) => Operation::NotImplemented("digital twins"),
        (_, ["faultInjection", ..]) => Operation::NotImplemented("fault injection"),
        _ => {
            return Err(Answer::error(
                404,
                "NotFound",
                &format!("no such path: {method} /{}", s.join("/")),
            ))
        }
    };
    Ok(op)
}

fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// Answers one request.
pub fn handle(state: &ServiceState, req: &ServiceRequest) -> Answer {
    if state.locked_out(req.peer) {
        let mut answer = Answer::error(
            429,
            "ThrottlingException",
            "too many failed authentications from this address: try again later",
        );
        answer
            .headers
            .push(("retry-after", super::AUTH_FAILURE_WINDOW.as_secs().to_string()));
        return answer;
    }
    let policies = match state.hub().store().policies() {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    let who = match policy::authorize(req.header("authorization"), &policies, state.hosts(), now_secs()) {
        Ok(who) => who,
        Err(e) => {
            state.record_failure(req.peer);
            debug!(peer = %req.peer, "service API: refused: {e}");
            return Answer::error(401, "IotHubUnauthorizedAccess", &e.to_string());
        }
    };
    let segments: std::result::Result<Vec<String>, _> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let Ok(segments) = segments else {
        return bad_request("the path is not percent-encoded UTF-8");
    };
    let operation = match route(&req.method, &segments) {
        Ok(op) => op,
        Err(answer) => return answer,
    };
    let (needed, twin_read) = operation.needs();
    let granted = policy::permissions(&who).unwrap_or_default();
    if !policy::allows(granted, needed, twin_read) {
        return audited(
            state,
            &who,
            req,
            &operation,
            Answer::error(
                401,
                "IotHubUnauthorizedAccess",
                &format!("the policy {who} does not have the {needed:?} permission this request needs"),
            ),
        );
    }
    let answer = run(state, req, &operation).unwrap_or_else(|a| a);
    audited(state, &who, req, &operation, answer)
}

fn audited(state: &ServiceState, who: &str, req: &ServiceRequest, op: &Operation, answer: Answer) -> Answer {
    let writes = op.changes_state() || !matches!(req.method.as_str(), "GET" | "HEAD" | "POST");
    if writes {
        let recorded = state.hub().store().record_audit(
            now_ms(),
            &format!("policy:{who}"),
            &format!("{} {}", req.method, req.path),
            &req.path,
            answer.status,
        );
        if let Err(e) = recorded {
            warn!("audit trail: {e}");
        }
    }
    answer
}

fn run(state: &ServiceState, req: &ServiceRequest, op: &Operation) -> Result<Answer> {
    let hub = state.hub();
    let if_match = req.header("if-match");
    match op {
        Operation::ListDevices => {
            let records = hub.store().registry_records(None).map_err(store_error)?;
            let top = req
                .param("top")
                .and_then(|t| t.parse::<usize>().ok())
                .unwrap_or(1000);
            Ok(Answer::ok(
                200,
                Value::Array(
                    records
                        .iter()
                        .take(top)
                        .map(|r| identity_json(r, hub.is_connected(&r.id)))
                        .collect(),
                ),
            ))
        }
        Operation::GetIdentity(id) => {
            let record = hub
                .store()
                .registry_record(id)
                .map_err(store_error)?
                .ok_or_else(|| store_error(StoreError::NoSuchIdentity(id.to_string())))?;
            Ok(Answer::ok(200, identity_json(&record, hub.is_connected(id))))
        }
        Operation::PutIdentity(id) => put_identity(state, id, &req.body, if_match),
        Operation::DeleteIdentity(id) => {
            hub.store().delete_identity(id, if_match).map_err(store_error)?;
            Ok(Answer::empty())
        }
        Operation::ListModules(device) => {
            let device_id = identity(device, None)?;
            let store = hub.store();
            if store.registry_record(&device_id).map_err(store_error)?.is_none() {
                return Err(store_error(StoreError::NoSuchIdentity(device_id.to_string())));
            }
            let records = store.registry_records(Some(device)).map_err(store_error)?;
            drop(store);
            Ok(Answer::ok(
                200,
                Value::Array(
                    records
                        .iter()
                        .map(|r| identity_json(r, hub.is_connected(&r.id)))
                        .collect(),
                ),
            ))
        }
        Operation::GetTwin(id) => {
            let record = hub
                .store()
                .twin_record(id)
                .map_err(store_error)?
                .ok_or_else(|| store_error(StoreError::NoSuchIdentity(id.to_string())))?;
            Ok(Answer::ok(200, record.document(hub.is_connected(id))))
        }
        Operation::WriteTwin(id, replace) => write_twin(state, id, *replace, &req.body, if_match),
        Operation::Query => query(state, req),
        Operation::ListConfigurations => {
            let all = hub.store().configurations().map_err(store_error)?;
            let top = req
                .param("top")
                .and_then(|t| t.parse::<usize>().ok())
                .unwrap_or(1000);
            let list: Vec<Value> = all
                .iter()
                .take(top)
                .map(|c| configuration_json(state, c))
                .collect::<Result<_>>()?;
            Ok(Answer::ok(200, Value::Array(list)))
        }
        Operation::GetConfiguration(id) => {
            let record = hub
                .store()
                .configuration(id)
                .map_err(store_error)?
                .ok_or_else(|| {
                    Answer::error(404, "ConfigurationNotFound", &format!("no configuration {id}"))
                })?;
            Ok(Answer::ok(200, configuration_json(state, &record)?))
        }
        Operation::PutConfiguration(id) => put_configuration(state, id, &req.body, if_match),
        Operation::DeleteConfiguration(id) => {
            hub.store()
                .delete_configuration(id, if_match)
                .map_err(|e| match e {
                    StoreError::NoSuchIdentity(_) => {
                        Answer::error(404, "ConfigurationNotFound", &format!("no configuration {id}"))
                    }
                    other => store_error(other),
                })?;
            // The next-highest configuration targeting a twin applies now; twins no longer
            // targeted keep what they hold.
            rollout::reconcile_all(hub).map_err(store_error)?;
            Ok(Answer::empty())
        }
        Operation::DeviceStatistics => {
            let devices = hub.store().registry_records(None).map_err(store_error)?;
            let enabled = devices.iter().filter(|d| d.status == "enabled").count();
            Ok(Answer::ok(
                200,
                json!({
                    "totalDeviceCount": devices.len(),
                    "enabledDeviceCount": enabled,
                    "disabledDeviceCount": devices.len() - enabled,
                }),
            ))
        }
        Operation::ServiceStatistics => {
            let mut devices: Vec<String> = hub
                .connections()
                .iter()
                .map(|c| c.id.device().to_owned())
                .collect();
            devices.dedup();
            Ok(Answer::ok(200, json!({ "connectedDeviceCount": devices.len() })))
        }
        Operation::NotImplemented(what) => Err(Answer::error(
            501,
            "NotImplemented",
            &format!("{what} are not implemented by twinguard-hub (see docs/hub.md)"),
        )),
    }
}

fn identity_json(r: &RegistryRecord, connected: bool) -> Value {
    let mut doc = json!({
        "deviceId": r.id.device(),
        "generationId": r.created_ms.to_string(),
        "etag": etag_of("identity", r.etag_n),
        "connectionState": if connected { "Connected" } else { "Disconnected" },
        "status": r.status,
        "statusReason": null,
        "cloudToDeviceMessageCount": 0,
        "authentication": {
            "type": "sas",
            "symmetricKey": {"primaryKey": r.primary_key, "secondaryKey": r.secondary_key},
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
        },
    });
    if let Value::Object(o) = &mut doc {
        match r.id.module() {
            Some(m) => {
                o.insert("moduleId".into(), Value::from(m));
                o.insert("managedBy".into(), Value::Null);
            }
            None => {
                o.insert("capabilities".into(), json!({"iotEdge": false}));
            }
        }
    }
    doc
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(e) => Err(bad_request(format!("the body is not JSON: {e}"))),
    }
}

/// A key given in a request: absent or empty means "make one"; else base64 of 16 to 64
/// bytes, as IoT Hub requires.
fn key_or_new(given: Option<&Value>, what: &str) -> Result<Option<String>> {
    use base64::Engine as _;
    match given {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            let len = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| bad_request(format!("{what} is not base64")))?
                .len();
            if !(16..=64).contains(&len) {
                return Err(bad_request(format!(
                    "{what} must be 16 to 64 bytes (found {len})"
                )));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(bad_request(format!("{what} must be a string"))),
    }
}

fn put_identity(
    state: &ServiceState,
    id: &IdentityId,
    body: &[u8],
    if_match: Option<&str>,
) -> Result<Answer> {
    let hub = state.hub();
    let doc = parse_object(body)?;
    if doc
        .get("deviceId")
        .and_then(Value::as_str)
        .is_some_and(|d| d != id.device())
    {
        return Err(bad_request("deviceId in the body differs from the path"));
    }
    if let Some(m) = id.module() {
        if doc
            .get("moduleId")
            .and_then(Value::as_str)
            .is_some_and(|b| b != m)
        {
            return Err(bad_request("moduleId in the body differs from the path"));
        }
    }
    let auth = doc.get("authentication").cloned().unwrap_or(Value::Null);
    match auth.get("type").and_then(Value::as_str) {
        None | Some("sas") => {}
        Some("selfSigned" | "certificateAuthority") => {
            return Err(bad_request(
                "X.509 authentication is not implemented by twinguard-hub: use \"sas\"",
            ))
        }
        Some(other) => {
            return Err(bad_request(format!(
                "authentication type {other:?} is not one of sas, selfSigned, certificateAuthority"
            )))
        }
    }
    let keys = auth.get("symmetricKey");
    let primary = key_or_new(keys.and_then(|k| k.get("primaryKey")), "primaryKey")?;
    let secondary = key_or_new(keys.and_then(|k| k.get("secondaryKey")), "secondaryKey")?;
    let status = match doc.get("status") {
        None | Some(Value::Null) => "enabled",
        Some(Value::String(s)) if s == "enabled" || s == "disabled" => s.as_str(),
        Some(_) => return Err(bad_request("status must be \"enabled\" or \"disabled\"")),
    };
    let existing = hub.store().registry_record(id).map_err(store_error)?;
    let fresh = || generate_key().map_err(|_| Answer::error(500, "ServerError", "no random source"));
    let (old_primary, old_secondary) = match (&existing, if_match) {
        (Some(r), Some(_)) => (Some(r.primary_key.clone()), Some(r.secondary_key.clone())),
        _ => (None, None),
    };
    let record = RegistryRecord {
        id: id.clone(),
        primary_key: match primary.or(old_primary) {
            Some(k) => k,
            None => fresh()?,
        },
        secondary_key: match secondary.or(old_secondary) {
            Some(k) => k,
            None => fresh()?,
        },
        status: status.to_owned(),
        etag_n: 0,
        created_ms: 0,
    };
    let stored = hub
        .store()
        .put_identity(&record, if_match, now_ms())
        .map_err(store_error)?;
    if existing.is_none() {
        rollout::reconcile_one(hub, id).map_err(store_error)?;
    }
    Ok(Answer::ok(200, identity_json(&stored, hub.is_connected(id))))
}

/// `doc` without `$`-members at any depth (`$metadata`, `$version`: IoT Hub ignores them in
/// what a client sends).
fn without_dollar_members(doc: &Value) -> Value {
    match doc {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_dollar_members(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn write_twin(
    state: &ServiceState,
    id: &IdentityId,
    replace: bool,
    body: &[u8],
    if_match: Option<&str>,
) -> Result<Answer> {
    let hub = state.hub();
    let doc = parse_object(body)?;
    for (field, expected) in [("deviceId", Some(id.device())), ("moduleId", id.module())] {
        if let (Some(given), Some(expected)) = (doc.get(field).and_then(Value::as_str), expected) {
            if given != expected {
                return Err(bad_request(format!("{field} in the body differs from the path")));
            }
        }
    }
    let current = hub
        .store()
        .twin_record(id)
        .map_err(store_error)?
        .ok_or_else(|| store_error(StoreError::NoSuchIdentity(id.to_string())))?;
    let tags = match doc.get("tags") {
        None if replace => Some(Map::new()),
        None => None,
        Some(Value::Null) if replace => Some(Map::new()),
        Some(Value::Null) => None,
        Some(t @ Value::Object(_)) => {
            let t = without_dollar_members(t);
            Some(if replace {
                let mut m = Map::new();
                if let Value::Object(o) = t {
                    for (k, v) in o {
                        if !v.is_null() {
                            m.insert(k, v);
                        }
                    }
                }
                m
            } else {
                patched(&current.tags, &t, "tags").map_err(bad_request)?
            })
        }
        Some(_) => return Err(bad_request("tags must be an object")),
    };
    let desired = match doc.get("properties").map(|p| p.get("desired")) {
        None | Some(None) if replace => Some(DesiredChange::Replace(json!({}))),
        None | Some(None) => None,
        Some(Some(d @ Value::Object(_))) => {
            let d = without_dollar_members(d);
            Some(if replace {
                DesiredChange::Replace(d)
            } else {
                DesiredChange::Patch(d)
            })
        }
        Some(Some(Value::Null)) => None,
        Some(Some(_)) => return Err(bad_request("properties.desired must be an object")),
    };
    let tags_changed = tags.as_ref().is_some_and(|t| *t != current.tags);
    // Without If-Match the write applies to the twin just read; another writer in between
    // makes it fail as if the client had sent that etag (412), never lose a change silently.
    let expected = if_match.map(str::to_owned).unwrap_or_else(|| current.etag());
    let record: TwinRecord = hub
        .write_twin_service(id, Some(&expected), tags, desired.as_ref())
        .map_err(store_error)?;
    if tags_changed {
        rollout::reconcile_one(hub, id).map_err(store_error)?;
    }
    let record = hub
        .store()
        .twin_record(id)
        .map_err(store_error)?
        .unwrap_or(record);
    Ok(Answer::ok(200, record.document(hub.is_connected(id))))
}

fn query(state: &ServiceState, req: &ServiceRequest) -> Result<Answer> {
    let hub = state.hub();
    let doc = parse_object(&req.body)?;
    let text = doc
        .get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("the body must be {\"query\": \"SELECT ...\"}"))?;
    let query = Query::parse(text).map_err(|e| Answer::error(400, "BadRequest", &e.to_string()))?;
    let offset = match req.header("x-ms-continuation").filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| bad_request("x-ms-continuation is not a continuation token of this hub"))?,
    };
    let page = match req.header("x-ms-max-item-count") {
        None => DEFAULT_PAGE,
        Some(n) => n
            .trim()
            .parse::<usize>()
            .map_err(|_| bad_request("x-ms-max-item-count must be a whole number"))?
            .clamp(1, MAX_PAGE),
    };
    let records = hub
        .store()
        .twin_records(query.source == Source::Modules)
        .map_err(store_error)?;
    let matching: Vec<Value> = records
        .iter()
        .map(|r| r.document(hub.is_connected(&r.id)))
        .filter(|d| query.matches(d))
        .collect();
    let items: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(page)
        .map(|d| query.project(d))
        .collect();
    let mut answer = Answer::ok(200, Value::Array(items));
    answer.headers.push((
        "x-ms-item-type",
        if query.select.is_some() { "raw" } else { "twin" }.to_owned(),
    ));
    if offset + page < matching.len() {
        answer
            .headers
            .push(("x-ms-continuation", (offset + page).to_string()));
    }
    Ok(answer)
}

/// The members of a configuration the hub computes (never stored from a client).
const COMPUTED: [&str; 5] = [
    "etag",
    "systemMetrics",
    "createdTimeUtc",
    "lastUpdatedTimeUtc",
    "id",
];

fn put_configuration(state: &ServiceState, id: &str, body: &[u8], if_match: Option<&str>) -> Result<Answer> {
    let hub = state.hub();
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(bad_request(
            "a configuration id is 1 to 128 characters of letters, digits, - _ .",
        ));
    }
    let mut doc = parse_object(body)?;
    if doc.get("id").and_then(Value::as_str).is_some_and(|b| b != id) {
        return Err(bad_request("id in the body differs from the path"));
    }
    for key in COMPUTED {
        doc.remove(key);
    }
    if let Some(metrics) = doc.get_mut("metrics").and_then(Value::as_object_mut) {
        metrics.remove("results");
        if let Some(queries) = metrics.get("queries").and_then(Value::as_object) {
            for (name, q) in queries {
                let text = q
                    .as_str()
                    .ok_or_else(|| bad_request(format!("metrics.queries.{name} must be a string")))?;
                Query::parse(text).map_err(|e| bad_request(format!("metrics.queries.{name}: {e}")))?;
            }
        }
    }
    Configuration::from_document(id, &doc, 0, String::new()).map_err(bad_request)?;
    let record = hub
        .store()
        .put_configuration(id, &doc, if_match, now_ms())
        .map_err(|e| match e {
            StoreError::IdentityExists(_) => Answer::error(
                409,
                "ConfigurationAlreadyExists",
                &format!("configuration {id} exists: send If-Match to replace it"),
            ),
            StoreError::NoSuchIdentity(_) => {
                Answer::error(404, "ConfigurationNotFound", &format!("no configuration {id}"))
            }
            other => store_error(other),
        })?;
    rollout::reconcile_all(hub).map_err(store_error)?;
    Ok(Answer::ok(200, configuration_json(state, &record)?))
}

fn count_matching(state: &ServiceState, text: &str) -> Result<usize> {
    let Ok(query) = Query::parse(text) else {
        return Ok(0);
    };
    let hub = state.hub();
    let records = hub
        .store()
        .twin_records(query.source == Source::Modules)
        .map_err(store_error)?;
    Ok(records
        .iter()
        .filter(|r| query.matches(&r.document(hub.is_connected(&r.id))))
        .count())
}

fn configuration_json(state: &ServiceState, record: &crate::store::ConfigurationRecord) -> Result<Value> {
    let hub = state.hub();
    let mut doc = record.body.clone();
    doc.insert("id".into(), Value::from(record.id.clone()));
    doc.insert("etag".into(), Value::from(record.etag()));
    doc.entry("schemaVersion").or_insert_with(|| Value::from("1.0"));
    doc.entry("priority").or_insert_with(|| Value::from(0));
    let (mut targeted, mut applied) = (0usize, 0usize);
    if let Ok(config) =
        Configuration::from_document(&record.id, &record.body, record.created_ms, String::new())
    {
        let prefix = format!("{}@", record.id);
        if let Some((source, _)) = &config.target {
            let records = hub
                .store()
                .twin_records(*source == Source::Modules)
                .map_err(store_error)?;
            for r in &records {
                if config.targets(*source, &r.document(false)) {
                    targeted += 1;
                }
                if r.applied_config
                    .as_deref()
                    .is_some_and(|a| a.starts_with(&prefix))
                {
                    applied += 1;
                }
            }
        }
    }
    doc.insert(
        "systemMetrics".into(),
        json!({
            "queries": {"targetedCount": "twins the targetCondition selects", "appliedCount": "twins holding this configuration's content"},
            "results": {"targetedCount": targeted, "appliedCount": applied},
        }),
    );
    let queries = doc
        .get("metrics")
        .and_then(|m| m.get("queries"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut results = Map::new();
    for (name, q) in &queries {
        results.insert(
            name.clone(),
            Value::from(count_matching(state, q.as_str().unwrap_or_default())?),
        );
    }
    doc.insert("metrics".into(), json!({"queries": queries, "results": results}));
    Ok(Value::Object(doc))
}

/// Runs the service API's request path, short of the socket and the store, over untrusted
/// bytes (an HTTP/1.1 request as the `http` module parses it): path decoding and routing, the
/// SAS check against fixed policies, and the pure rules a body meets (twin writes with tags,
/// queries, configurations). The fuzz target `service_request` and its corpus replay call it;
/// it must never panic.
pub fn check_untrusted_request(data: &[u8]) {
    let Ok(request) = crate::http::parse_request(data) else {
        return;
    };
    let policies = vec![(
        "iothubowner".to_owned(),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned(),
        String::new(),
    )];
    let hosts = vec!["localhost".to_owned(), "localhost:8443".to_owned()];
    let _ = policy::authorize(request.header("authorization"), &policies, &hosts, 1_790_000_000);
    let Ok(operation) = route(&request.method, &request.segments) else {
        return;
    };
    let _ = operation.needs();
    let Ok(doc) = parse_object(&request.body) else {
        return;
    };
    match operation {
        Operation::WriteTwin(..) => {
            let mut twin = crate::twin::Twin::default();
            if let Some(tags) = doc.get("tags") {
                let tags = without_dollar_members(tags);
                if let Ok(merged) = patched(&Map::new(), &tags, "tags") {
                    let _ = crate::twin::check_tags(&merged);
                }
            }
            if let Some(desired) = doc.get("properties").and_then(|p| p.get("desired")) {
                let desired = without_dollar_members(desired);
                let _ = twin.change_desired(&DesiredChange::Patch(desired.clone()));
                let _ = twin.change_desired(&DesiredChange::Replace(desired));
            }
        }
        Operation::Query => {
            if let Some(Ok(query)) = doc.get("query").and_then(Value::as_str).map(Query::parse) {
                let twin = Value::Object(doc.clone());
                if query.matches(&twin) {
                    let _ = query.project(&twin);
                }
            }
        }
        Operation::PutConfiguration(id) => {
            if let Ok(config) = Configuration::from_document(&id, &doc, 0, String::new()) {
                let twin =
                    json!({"deviceId": "d", "moduleId": "azureiotsecurity", "tags": doc.get("labels")});
                for source in [Source::Devices, Source::Modules] {
                    if config.targets(source, &twin) {
                        let _ = config.apply(&Map::new(), Some("azureiotsecurity"));
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn routes() {
        assert_eq!(route("POST", &seg("/devices/query")), Ok(Operation::Query));
        assert!(matches!(
            route("PUT", &seg("/devices/d1/modules/m")),
            Ok(Operation::PutIdentity(_))
        ));
        assert!(matches!(
            route("PATCH", &seg("/twins/d1")),
            Ok(Operation::WriteTwin(_, false))
        ));
        assert!(matches!(
            route("POST", &seg("/twins/d1/methods")),
            Ok(Operation::NotImplemented(_))
        ));
        assert_eq!(route("GET", &seg("/nothing")).map_err(|a| a.status), Err(404));
        assert_eq!(route("POST", &seg("/twins/d1")).map_err(|a| a.status), Err(405));
        let spaced = vec!["devices".to_owned(), "a b".to_owned()];
        assert_eq!(route("GET", &spaced).map_err(|a| a.status), Err(400));
    }
}
