//! Identities (devices and modules) as IoT Hub names them: id syntax, the SAS resource of an
//! identity, its MQTT client id, symmetric keys and connection strings. Pure, except for
//! [`generate_key`], which reads the system's random source.

use std::fmt;

use base64::Engine as _;

/// The longest device or module id IoT Hub accepts.
pub const MAX_ID_LEN: usize = 128;

/// Why a device or module id is not one IoT Hub would accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or longer than [`MAX_ID_LEN`].
    #[error("a {what} id is 1 to 128 characters long (found {len})")]
    Length {
        /// `device` or `module`.
        what: &'static str,
        /// The length found.
        len: usize,
    },
    /// A character outside IoT Hub's set.
    #[error(
        "a {what} id may hold only ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ ' (found {found:?})"
    )]
    Character {
        /// `device` or `module`.
        what: &'static str,
        /// The first character that is not allowed.
        found: char,
    },
}

/// Checks a device or module id against IoT Hub's documented syntax: 1 to 128 ASCII
/// characters, letters, digits and `- . % _ * ? ! ( ) , : = @ $ '`. None of these is `/`, `+`,
/// `#` or NUL, so an id can always be placed in a topic.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(IdError::Length { what, len: id.len() });
    }
    if let Some(found) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'".contains(*c)))
    {
        return Err(IdError::Character { what, found });
    }
    Ok(())
}

/// A device identity, or a module identity of a device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityId {
    device: String,
    module: Option<String>,
}

impl IdentityId {
    /// A validated identity id.
    pub fn new(device: &str, module: Option<&str>) -> Result<IdentityId, IdError> {
        validate_id("device", device)?;
        if let Some(m) = module {
            validate_id("module", m)?;
        }
        Ok(IdentityId {
            device: device.to_owned(),
            module: module.map(str::to_owned),
        })
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The module id, for a module identity.
    pub fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    /// The MQTT client id IoT Hub expects: `{device}` or `{device}/{module}`.
    pub fn client_id(&self) -> String {
        match &self.module {
            Some(m) => format!("{}/{m}", self.device),
            None => self.device.clone(),
        }
    }

    /// The SAS resource of the identity: `{host}/devices/{device}[/modules/{module}]`.
    pub fn resource(&self, host: &str) -> String {
        format!("{host}/{}", self.topic_base())
    }

    /// `devices/{device}[/modules/{module}]`, the start of the identity's own topics.
    pub fn topic_base(&self) -> String {
        match &self.module {
            Some(m) => format!("devices/{}/modules/{m}", self.device),
            None => format!("devices/{}", self.device),
        }
    }
}

impl fmt::Display for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.client_id())
    }
}

/// A new random 256-bit symmetric key, base64 as IoT Hub prints its keys.
pub fn generate_key() -> Result<String, ring::error::Unspecified> {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

/// The connection string of an identity, in the form the Azure portal and the official SDKs
/// use: `HostName=...;DeviceId=...[;ModuleId=...];SharedAccessKey=...`.
pub fn connection_string(host: &str, id: &IdentityId, key: &str) -> String {
    match id.module() {
        Some(m) => format!(
            "HostName={host};DeviceId={};ModuleId={m};SharedAccessKey={key}",
            id.device()
        ),
        None => format!("HostName={host};DeviceId={};SharedAccessKey={key}", id.device()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_iot_hub_syntax() {
        for ok in ["dev1", "a-b.c%d_e*f?g!h(i)j,k:l=m@n$o'p", &"x".repeat(128)] {
            assert_eq!(validate_id("device", ok), Ok(()), "{ok}");
        }
        assert!(matches!(validate_id("device", ""), Err(IdError::Length { .. })));
        assert!(matches!(
            validate_id("device", &"x".repeat(129)),
            Err(IdError::Length { .. })
        ));
        for bad in ["a/b", "a+b", "a#b", "a b", "é", "a\0"] {
            assert!(
                matches!(validate_id("module", bad), Err(IdError::Character { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_of_an_identity() {
        let m = IdentityId::new("dev1", Some("azureiotsecurity")).expect("valid");
        assert_eq!(m.client_id(), "dev1/azureiotsecurity");
        assert_eq!(m.resource("hub"), "hub/devices/dev1/modules/azureiotsecurity");
        assert_eq!(
            connection_string("hub", &m, "a2V5"),
            "HostName=hub;DeviceId=dev1;ModuleId=azureiotsecurity;SharedAccessKey=a2V5"
        );
        let d = IdentityId::new("dev1", None).expect("valid");
        assert_eq!(d.client_id(), "dev1");
        assert_eq!(d.resource("hub"), "hub/devices/dev1");
        let key = generate_key().expect("random");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .map(|k| k.len()),
            Ok(32)
        );
    }
}
