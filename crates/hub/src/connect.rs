//! IoT Hub's rules for a CONNECT: the client id names the identity (`{device}` or
//! `{device}/{module}`), the user name starts with `{host}/{client id}/` followed by any query
//! (any `api-version`, `DeviceClientType`, `model-id`, ... as the official SDKs send them), and
//! the password is a SAS token signed with the identity's key for its resource. Pure: the key
//! and the time are parameters.

use base64::Engine as _;
use twinguard_mqtt::{decode, Connect, ConnectReturnCode, Decoded, Packet, ProtocolError};

use twinguard_core::iothub::identity::IdentityId;
use twinguard_core::iothub::sas::SasToken;

/// The largest CONNECT (client id, user name, SAS token and a last will): a connection that
/// has not logged in buffers no more than this.
pub(crate) const MAX_CONNECT_BYTES: usize = 32 * 1024;

/// The first packet of a connection from the bytes received so far: a CONNECT of at most
/// [`MAX_CONNECT_BYTES`] and the bytes it took, `None` while incomplete. Any other packet is
/// an error. Pure (the fuzz target `connect` calls it).
pub fn first_connect(bytes: &[u8]) -> Result<Option<(Connect, usize)>, FirstPacketError> {
    match decode(bytes, MAX_CONNECT_BYTES)? {
        Decoded::Packet {
            packet: Packet::Connect(c),
            consumed,
        } => Ok(Some((c, consumed))),
        Decoded::Packet { packet, .. } => Err(FirstPacketError::NotConnect(packet.name())),
        Decoded::Incomplete => Ok(None),
    }
}

/// Why the first packet of a connection is refused.
#[derive(Debug, thiserror::Error)]
pub enum FirstPacketError {
    /// Not MQTT 3.1.1, too large, or malformed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Another packet type came first.
    #[error("first packet is {0}, not CONNECT")]
    NotConnect(&'static str),
}

/// A refused CONNECT: the CONNACK code and, for the hub's log, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What the CONNACK says.
    pub code: ConnectReturnCode,
    /// Why, for the log (never sent to the client, never holding a secret).
    pub reason: String,
}

fn refuse(code: ConnectReturnCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

/// The identity a CONNECT claims and its parsed token, or why it is refused before any key is
/// looked at. A client id that is not an identity -> "identifier rejected"; a missing or
/// mismatched user name, a missing or malformed password -> "not authorized" (IoT Hub answers
/// bad credentials of any kind that way).
pub fn claimed_identity(connect: &Connect, host: &str) -> Result<(IdentityId, SasToken), Refusal> {
    let (device, module) = match connect.client_id.split_once('/') {
        Some((d, m)) => (d, Some(m)),
        None => (connect.client_id.as_str(), None),
    };
    let id = IdentityId::new(device, module).map_err(|e| {
        refuse(
            ConnectReturnCode::IdentifierRejected,
            format!("client id {:?}: {e}", connect.client_id),
        )
    })?;
    let not_authorized = |reason: String| refuse(ConnectReturnCode::NotAuthorized, reason);
    let username = connect
        .username
        .as_deref()
        .ok_or_else(|| not_authorized("no user name".into()))?;
    if !username_matches(username, host, &connect.client_id) {
        return Err(not_authorized(format!(
            "user name {username:?} does not start with {host}/{}/",
            connect.client_id
        )));
    }
    let password = connect
        .password
        .as_deref()
        .ok_or_else(|| not_authorized("no password (SAS token)".into()))?;
    let password =
        std::str::from_utf8(password).map_err(|_| not_authorized("password is not UTF-8".into()))?;
    let token = SasToken::parse(password).map_err(|e| not_authorized(e.to_string()))?;
    Ok((id, token))
}

/// `{host}/{client id}/` then anything (a query string with any parameters; IoT Hub ignores
/// what it does not know). The host compares without case; `{host}/{client id}` alone is
/// accepted too, as older SDKs sent it.
fn username_matches(username: &str, host: &str, client_id: &str) -> bool {
    let Some((user_host, rest)) = username.split_once('/') else {
        return false;
    };
    if !user_host.eq_ignore_ascii_case(host) {
        return false;
    }
    match rest.strip_prefix(client_id) {
        Some("") => true,
        Some(after) => after.starts_with('/'),
        None => false,
    }
}

/// Checks the token against the identity's key (base64, `None` when the identity does not
/// exist) at `now` (Unix seconds). Every failure is "not authorized", as IoT Hub does not tell
/// an unknown identity from a wrong key.
pub fn authenticate(
    id: &IdentityId,
    token: &SasToken,
    host: &str,
    key_base64: Option<&str>,
    now: u64,
) -> Result<(), Refusal> {
    let not_authorized = |reason: String| refuse(ConnectReturnCode::NotAuthorized, reason);
    let key_base64 = key_base64.ok_or_else(|| not_authorized(format!("no identity {id}")))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_base64)
        .map_err(|_| not_authorized(format!("stored key of {id} is not base64")))?;
    token
        .verify(&id.resource(host), &key, now)
        .map_err(|e| not_authorized(e.to_string()))
}

/// Checks the token against a stored identity: `None` when it does not exist, else whether
/// it is enabled and its keys (primary, secondary; an empty one is skipped). IoT Hub accepts
/// a token signed with either key, and none for a disabled identity.
pub fn authenticate_identity(
    id: &IdentityId,
    token: &SasToken,
    host: &str,
    identity: Option<(bool, &str, &str)>,
    now: u64,
) -> Result<(), Refusal> {
    let Some((enabled, primary, secondary)) = identity else {
        return authenticate(id, token, host, None, now);
    };
    if !enabled {
        return Err(refuse(
            ConnectReturnCode::NotAuthorized,
            format!("identity {id} is disabled"),
        ));
    }
    authenticate(id, token, host, Some(primary), now).or_else(|first| {
        if secondary.is_empty() {
            return Err(first);
        }
        authenticate(id, token, host, Some(secondary), now).map_err(|_| first)
    })
}

/// Runs the hub's whole CONNECT path, short of the socket, over untrusted bytes: the first
/// packet cut as a CONNECT, the identity and token it claims, the signature check against a
/// fixed key, and the redaction of what would be logged. The fuzz target `connect` and its
/// corpus replay call it; it must never panic.
pub fn check_untrusted_bytes(data: &[u8]) {
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let Ok(Some((connect, consumed))) = first_connect(data) else {
        return;
    };
    assert!(consumed <= data.len() && consumed <= MAX_CONNECT_BYTES);
    let _ = redact_signature(&connect.client_id);
    if let Some(user) = &connect.username {
        let _ = redact_signature(user);
    }
    match claimed_identity(&connect, "localhost") {
        Ok((id, token)) => {
            for now in [0, 1_700_000_000, u64::MAX] {
                let _ = authenticate(&id, &token, "localhost", Some(KEY), now);
            }
        }
        Err(refusal) => {
            let _ = redact_signature(&refusal.reason);
        }
    }
}

/// `text` with the value of every `sig=` parameter replaced by `(removed)`, for logging what
/// a client sent where a SAS token may hide (a user name, a client id): a signature is a live
/// credential until the token expires.
pub(crate) fn redact_signature(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_ignore_case(rest, "sig=") {
        let value_start = at + "sig=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("(removed)");
        let value_len = rest[value_start..]
            .find(|c: char| c == '&' || c == ';' || c == '"' || c.is_whitespace())
            .unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
    out.push_str(rest);
    out
}

fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinguard_core::iothub::sas::sign;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn connect(client_id: &str, username: Option<&str>, password: Option<String>) -> Connect {
        Connect {
            client_id: client_id.into(),
            clean_session: true,
            keep_alive_secs: 60,
            will: None,
            username: username.map(str::to_owned),
            password: password.map(String::into_bytes),
        }
    }

    fn token(resource: &str, expiry: u64) -> String {
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("base64");
        sign(resource, &key, expiry)
    }

    #[test]
    fn official_sdk_user_names_are_accepted() {
        let t = token("localhost/devices/d1/modules/azureiotsecurity", 100);
        for username in [
            "localhost/d1/azureiotsecurity/?api-version=2019-10-01&DeviceClientType=py-azure-iot-device%2F2.14.0",
            "LOCALHOST/d1/azureiotsecurity/?api-version=2021-04-12",
            "localhost/d1/azureiotsecurity/?api-version=2099-01-01&model-id=dtmi%3Ax%3B1&extra=1",
            "localhost/d1/azureiotsecurity/api-version=2016-11-14",
            "localhost/d1/azureiotsecurity",
        ] {
            let c = connect("d1/azureiotsecurity", Some(username), Some(t.clone()));
            let (id, token) = claimed_identity(&c, "localhost").expect(username);
            assert_eq!(id.client_id(), "d1/azureiotsecurity");
            assert_eq!(authenticate(&id, &token, "localhost", Some(KEY), 99), Ok(()));
        }
    }

    #[test]
    fn signatures_are_removed_from_logged_text() {
        assert_eq!(
            redact_signature("localhost/d1/?SharedAccessSignature sr=a&sig=AbC%2B%3D&se=9 x SIG=zz"),
            "localhost/d1/?SharedAccessSignature sr=a&sig=(removed)&se=9 x SIG=(removed)"
        );
        assert_eq!(redact_signature("sig="), "sig=(removed)");
        assert_eq!(redact_signature("no secret é"), "no secret é");
    }

    #[test]
    fn refusals() {
        let t = token("localhost/devices/d1", 100);
        let code = |c: Connect| claimed_identity(&c, "localhost").map(|_| ()).map_err(|r| r.code);
        assert_eq!(
            code(connect("", Some("localhost//"), Some(t.clone()))),
            Err(ConnectReturnCode::IdentifierRejected)
        );
        assert_eq!(
            code(connect("d1/m/x", Some("localhost/d1/m/x/"), Some(t.clone()))),
            Err(ConnectReturnCode::IdentifierRejected)
        );
        for username in [
            None,
            Some("otherhost/d1/?x"),
            Some("localhost/d2/?x"),
            Some("localhost/d1x"),
        ] {
            assert_eq!(
                code(connect("d1", username, Some(t.clone()))),
                Err(ConnectReturnCode::NotAuthorized),
                "{username:?}"
            );
        }
        assert_eq!(
            code(connect("d1", Some("localhost/d1/"), None)),
            Err(ConnectReturnCode::NotAuthorized)
        );
        let c = connect("d1", Some("localhost/d1/"), Some(t));
        let (id, token) = claimed_identity(&c, "localhost").expect("claims");
        assert_eq!(authenticate(&id, &token, "localhost", Some(KEY), 99), Ok(()));
        for (key, now) in [(None, 99), (Some("AAAA"), 99), (Some(KEY), 100)] {
            assert_eq!(
                authenticate(&id, &token, "localhost", key, now).map_err(|r| r.code),
                Err(ConnectReturnCode::NotAuthorized)
            );
        }
        // Either key signs; a disabled identity is refused whatever it signs.
        let other = "b3RoZXIga2V5IG9mIDMyIGJ5dGVzIGZvciB0ZXN0cyE=";
        let check =
            |identity| authenticate_identity(&id, &token, "localhost", identity, 99).map_err(|r| r.code);
        assert_eq!(check(Some((true, other, KEY))), Ok(()));
        assert_eq!(check(Some((true, KEY, ""))), Ok(()));
        assert_eq!(
            check(Some((true, other, ""))),
            Err(ConnectReturnCode::NotAuthorized)
        );
        assert_eq!(
            check(Some((false, KEY, KEY))),
            Err(ConnectReturnCode::NotAuthorized)
        );
        assert_eq!(check(None), Err(ConnectReturnCode::NotAuthorized));
    }
}
