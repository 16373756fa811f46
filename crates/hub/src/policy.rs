//! Shared access policies, as IoT Hub has them: `iothubowner` (everything), `service` (twins
//! and service connect), `registryRead` and `registryReadWrite`, each with its own two keys,
//! made at the hub's first start. A service request carries `Authorization:
//! SharedAccessSignature sr={host}&sig=...&se=...&skn={policy}`; [`authorize`] checks it
//! exactly. Pure, except for [`new_policy_keys`], which reads the random source.

use base64::Engine as _;

use twinguard_core::iothub::sas::{SasError, SasToken};

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Read identities, twins, queries, configurations, statistics.
    RegistryRead,
    /// Create, change and delete identities and configurations.
    RegistryWrite,
    /// Change twins (tags, desired), as IoT Hub's ServiceConnect allows.
    ServiceConnect,
}

/// The policies every hub has, with their permissions.
pub const POLICIES: &[(&str, &[Permission])] = &[
    (
        "iothubowner",
        &[
            Permission::RegistryRead,
            Permission::RegistryWrite,
            Permission::ServiceConnect,
        ],
    ),
    ("service", &[Permission::ServiceConnect]),
    ("registryRead", &[Permission::RegistryRead]),
    (
        "registryReadWrite",
        &[Permission::RegistryRead, Permission::RegistryWrite],
    ),
];

/// The permissions of policy `name`, if it is one.
pub fn permissions(name: &str) -> Option<&'static [Permission]> {
    POLICIES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// Whether a policy with `granted` may do what needs `needed`. IoT Hub lets ServiceConnect
/// read twins and run queries too (the `service` policy is what SDK samples use for twins).
pub fn allows(granted: &[Permission], needed: Permission, twin_read: bool) -> bool {
    granted.contains(&needed) || (twin_read && granted.contains(&Permission::ServiceConnect))
}

/// Why a service request is not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("an Authorization: SharedAccessSignature header is required")]
    Missing,
    /// A token without `skn`: a device's or module's, which the service API never takes.
    #[error(
        "a device or module token cannot be used on the service API: sign with a shared access policy (skn)"
    )]
    DeviceToken,
    /// `skn` names no policy of this hub.
    #[error("no shared access policy {0:?}")]
    UnknownPolicy(String),
    /// The token itself is refused.
    #[error(transparent)]
    Token(#[from] SasError),
}

/// New keys for a policy: two random 256-bit keys, base64.
pub fn new_policy_keys() -> Result<(String, String), ring::error::Unspecified> {
    Ok((crate::keys::generate_key()?, crate::keys::generate_key()?))
}

/// Checks an `Authorization` value against the stored policies (name, primary, secondary),
/// for a request that reached the hub as one of `hosts` (the host name with and without the
/// service port). Returns the policy name.
pub fn authorize(
    header: Option<&str>,
    policies: &[(String, String, String)],
    hosts: &[String],
    now: u64,
) -> Result<String, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let token = SasToken::parse(header.trim())?;
    let name = token.key_name.clone().ok_or(AuthError::DeviceToken)?;
    let (_, primary, secondary) = policies
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| AuthError::UnknownPolicy(name.clone()))?;
    let resource = hosts
        .iter()
        .find(|h| token.resource.trim_end_matches('/').eq_ignore_ascii_case(h))
        .cloned()
        .unwrap_or_else(|| hosts.first().cloned().unwrap_or_default());
    let mut last = AuthError::Token(SasError::BadSignature);
    for key in [primary, secondary] {
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(key) else {
            continue;
        };
        match token.verify_signed(&resource, &key, now) {
            Ok(()) => return Ok(name),
            Err(e) => last = AuthError::Token(e),
        }
    }
    Err(last)
}

/// The service connection string of a policy: `HostName={host};SharedAccessKeyName={name};
/// SharedAccessKey={key}`.
pub fn connection_string(host: &str, name: &str, key: &str) -> String {
    format!("HostName={host};SharedAccessKeyName={name};SharedAccessKey={key}")
}

/// A service token for `host` signed by policy `name` with `key` (base64): what a client
/// sends. Used by tests and by nothing that serves.
pub fn sign(host: &str, name: &str, key: &str, expiry: u64) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap_or_default();
    format!(
        "{}&skn={name}",
        twinguard_core::iothub::sas::sign(host, &key, expiry)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn policies() -> Vec<(String, String, String)> {
        vec![("registryRead".into(), "b3RoZXI=".into(), KEY.into())]
    }

    #[test]
    fn policy_tokens_are_checked_exactly() {
        let hosts = vec!["localhost".to_owned(), "localhost:8443".to_owned()];
        let ok = sign("localhost:8443", "registryRead", KEY, 1000);
        assert_eq!(
            authorize(Some(&ok), &policies(), &hosts, 10),
            Ok("registryRead".into()),
            "the secondary key signs too"
        );
        let no_port = sign("LOCALHOST", "registryRead", KEY, 1000);
        assert!(authorize(Some(&no_port), &policies(), &hosts, 10).is_ok());
        assert!(matches!(
            authorize(Some(&ok), &policies(), &hosts, 1000),
            Err(AuthError::Token(SasError::Expired { .. }))
        ));
        let other_host = sign("evil:8443", "registryRead", KEY, 1000);
        assert!(matches!(
            authorize(Some(&other_host), &policies(), &hosts, 10),
            Err(AuthError::Token(SasError::WrongResource { .. }))
        ));
        let unknown = sign("localhost", "iothubowner", KEY, 1000);
        assert_eq!(
            authorize(Some(&unknown), &policies(), &hosts, 10),
            Err(AuthError::UnknownPolicy("iothubowner".into()))
        );
        let device = twinguard_core::iothub::sas::sign("localhost/devices/d", &[1, 2], 1000);
        assert_eq!(
            authorize(Some(&device), &policies(), &hosts, 10),
            Err(AuthError::DeviceToken)
        );
        let wrong = sign("localhost", "registryRead", "d3Jvbmc=", 1000);
        assert_eq!(
            authorize(Some(&wrong), &policies(), &hosts, 10),
            Err(AuthError::Token(SasError::BadSignature))
        );
        assert_eq!(authorize(None, &policies(), &hosts, 10), Err(AuthError::Missing));
    }

    #[test]
    fn permissions_follow_iot_hub() {
        let read = permissions("registryRead").unwrap_or_default();
        assert!(allows(read, Permission::RegistryRead, false));
        assert!(!allows(read, Permission::RegistryWrite, false));
        let service = permissions("service").unwrap_or_default();
        assert!(allows(service, Permission::RegistryRead, true));
        assert!(!allows(service, Permission::RegistryRead, false));
        assert!(permissions("nobody").is_none());
    }
}
