//! Connection settings (SPEC §6): a small TOML file (`--settings FILE`, else
//! `/etc/twinguard/agent.toml` when it exists) whose keys mirror the `run` flags, merged with
//! the flags (flags win), then validated once into the mode to run: local, MQTT or IoT Hub.
//! Files holding secrets (a password, a connection string, a private key) are refused unless
//! they belong to the agent's user or root and give group and others no access at all; a bare
//! name (no `/`) is first looked up in systemd's `$CREDENTIALS_DIRECTORY` (`LoadCredential=`).
//!
//! ```toml
//! mqtt = "mqtts://broker.example:8883"
//! device-id = "gateway-7"
//! mqtt-prefix = "fleet/gateway-7"          # default twinguard/{device-id}
//! mqtt-ca = "/etc/twinguard/ca.pem"
//! mqtt-client-cert = "/etc/twinguard/client.pem"
//! mqtt-client-key = "/etc/twinguard/client.key"   # a secret: mode 0600
//! mqtt-username = "gateway-7"
//! mqtt-password-file = "/etc/twinguard/password"  # a secret: mode 0600
//! # or, for Azure IoT Hub:
//! # iothub = "/etc/twinguard/connection-string"   # a secret: mode 0600
//! # iothub-ca = "/etc/twinguard/hub-ca.pem"
//! ```
//!
//! A password over plain `mqtt://` is refused (it would travel in clear text) unless
//! `allow-insecure-password = true` (or `--allow-insecure-password`) accepts the risk; the
//! agent then logs a warning at every start.
//!
//! Relative paths in the file are relative to the file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::iothub::IotHubOptions;
use super::mqtt::{BrokerUrl, MqttOptions, MqttOptionsError};
use super::tls::TlsOptions;
use twinguard_os::safefile::{self, FileError};

/// The settings file read when `--settings` is not given, if it exists.
pub const DEFAULT_SETTINGS_FILE: &str = "/etc/twinguard/agent.toml";
/// Settings files are small; anything larger is refused unread.
pub const MAX_SETTINGS_BYTES: usize = 64 * 1024;

/// Why the connection settings cannot be used. Each message is one line naming the file or
/// flag it is about.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A file could not be read, or was refused (a FIFO, a secret others may read ...).
    #[error(transparent)]
    File(#[from] FileError),
    /// The settings file is not valid TOML or has unknown keys.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        message: String,
    },
    /// A value or a combination that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// The broker URL, device id or topic prefix cannot be used.
    #[error(transparent)]
    Mqtt(#[from] MqttOptionsError),
}

/// The connection settings as given: every field optional, from flags or from the file.
/// The file's keys are the flags' names without the dashes in front.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConnectionSettings {
    /// MQTT broker URL, `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub mqtt: Option<String>,
    /// Device id (MQTT mode).
    pub device_id: Option<String>,
    /// Topic prefix (MQTT mode), default `twinguard/{device-id}`.
    pub mqtt_prefix: Option<String>,
    /// A private CA to trust for the broker (PEM).
    pub mqtt_ca: Option<PathBuf>,
    /// Client certificate chain (PEM).
    pub mqtt_client_cert: Option<PathBuf>,
    /// Client private key (PEM, a secret).
    pub mqtt_client_key: Option<PathBuf>,
    /// User name for the broker.
    pub mqtt_username: Option<String>,
    /// File holding the broker password (a secret; one trailing newline is ignored).
    pub mqtt_password_file: Option<PathBuf>,
    /// File holding the IoT Hub module connection string (a secret).
    pub iothub: Option<PathBuf>,
    /// A private CA to trust for the IoT Hub endpoint (PEM).
    pub iothub_ca: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); the TWINGUARD_LOG variable wins.
    pub log_level: Option<String>,
    /// Accept a broker password over plain `mqtt://`, where anyone on the path reads it
    /// (refused unless this is `true`; a warning is logged either way).
    #[serde(alias = "allow_insecure_password")]
    pub allow_insecure_password: Option<bool>,
}

impl ConnectionSettings {
    /// Parses a settings file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<ConnectionSettings, SettingsError> {
        let bytes = safefile::read_regular(path, MAX_SETTINGS_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| SettingsError::Parse {
            path: path.to_owned(),
            message: "not UTF-8".into(),
        })?;
        let mut settings: ConnectionSettings = toml::from_str(&text).map_err(|e| SettingsError::Parse {
            path: path.to_owned(),
            // toml's message spans several lines (a source excerpt); keep it on one.
            message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let secrets = [
            &mut settings.mqtt_client_key,
            &mut settings.mqtt_password_file,
            &mut settings.iothub,
        ];
        for p in secrets.into_iter().flatten() {
            // A bare name that is a systemd credential stays a name (read from
            // $CREDENTIALS_DIRECTORY); otherwise it is relative to this file like the others.
            if p.is_relative() && !safefile::secret_location(p).1 {
                *p = base.join(&*p);
            }
        }
        for p in [
            &mut settings.mqtt_ca,
            &mut settings.mqtt_client_cert,
            &mut settings.iothub_ca,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(settings)
    }

    /// `self` (the flags) over `file`: a flag wins over the same key in the file.
    pub fn over(self, file: ConnectionSettings) -> ConnectionSettings {
        ConnectionSettings {
            mqtt: self.mqtt.or(file.mqtt),
            device_id: self.device_id.or(file.device_id),
            mqtt_prefix: self.mqtt_prefix.or(file.mqtt_prefix),
            mqtt_ca: self.mqtt_ca.or(file.mqtt_ca),
            mqtt_client_cert: self.mqtt_client_cert.or(file.mqtt_client_cert),
            mqtt_client_key: self.mqtt_client_key.or(file.mqtt_client_key),
            mqtt_username: self.mqtt_username.or(file.mqtt_username),
            mqtt_password_file: self.mqtt_password_file.or(file.mqtt_password_file),
            iothub: self.iothub.or(file.iothub),
            iothub_ca: self.iothub_ca.or(file.iothub_ca),
            log_level: self.log_level.or(file.log_level),
            allow_insecure_password: self.allow_insecure_password.or(file.allow_insecure_password),
        }
    }

    /// The flags merged with the settings file: `explicit` (from `--settings`) must exist;
    /// without it the default file is read when it exists.
    pub fn resolve(self, explicit: Option<&Path>) -> Result<ConnectionSettings, SettingsError> {
        let file = match explicit {
            Some(path) => ConnectionSettings::load(path)?,
            None if Path::new(DEFAULT_SETTINGS_FILE).exists() => {
                ConnectionSettings::load(Path::new(DEFAULT_SETTINGS_FILE))?
            }
            None => ConnectionSettings::default(),
        };
        Ok(self.over(file))
    }

    /// Validates the merged settings into the mode to run.
    pub fn mode(&self) -> Result<Mode, SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_owned()));
        let mqtt_only = [
            ("device-id", self.device_id.is_some()),
            ("mqtt-prefix", self.mqtt_prefix.is_some()),
            ("mqtt-ca", self.mqtt_ca.is_some()),
            ("mqtt-client-cert", self.mqtt_client_cert.is_some()),
            ("mqtt-client-key", self.mqtt_client_key.is_some()),
            ("mqtt-username", self.mqtt_username.is_some()),
            ("mqtt-password-file", self.mqtt_password_file.is_some()),
        ];
        match (&self.mqtt, &self.iothub) {
            (Some(_), Some(_)) => invalid("--mqtt and --iothub exclude each other: choose one transport"),
            (None, None) => {
                if let Some((name, _)) = mqtt_only.iter().find(|(_, set)| *set) {
                    return Err(SettingsError::Invalid(format!(
                        "--{name} is an MQTT setting: it needs --mqtt URL"
                    )));
                }
                if self.iothub_ca.is_some() {
                    return invalid("--iothub-ca needs --iothub FILE");
                }
                Ok(Mode::Local)
            }
            (None, Some(file)) => {
                if let Some((name, _)) = mqtt_only.iter().find(|(_, set)| *set) {
                    return Err(SettingsError::Invalid(format!(
                        "--{name} is an MQTT setting; in IoT Hub mode the connection string says everything"
                    )));
                }
                Ok(Mode::IotHub(IotHubOptions::new(
                    file.clone(),
                    self.iothub_ca.clone(),
                )))
            }
            (Some(url), None) => {
                if self.iothub_ca.is_some() {
                    return invalid("--iothub-ca is an IoT Hub setting; for a broker's CA use --mqtt-ca");
                }
                let broker = BrokerUrl::parse(url).map_err(MqttOptionsError::from)?;
                let Some(device_id) = self.device_id.clone() else {
                    return invalid("MQTT mode needs --device-id ID");
                };
                let client_auth = match (&self.mqtt_client_cert, &self.mqtt_client_key) {
                    (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                    (None, None) => None,
                    _ => return invalid("--mqtt-client-cert and --mqtt-client-key go together"),
                };
                if !broker.tls && (self.mqtt_ca.is_some() || client_auth.is_some()) {
                    return invalid("--mqtt-ca and client certificates need an mqtts:// URL");
                }
                if self.mqtt_password_file.is_some() && self.mqtt_username.is_none() {
                    return invalid("--mqtt-password-file needs --mqtt-username (MQTT 3.1.1 has no password without a user name)");
                }
                if !broker.tls
                    && self.mqtt_password_file.is_some()
                    && self.allow_insecure_password != Some(true)
                {
                    return Err(SettingsError::Invalid(format!(
                        "--mqtt {url}: a password over plain mqtt:// travels in clear text; use mqtts:// (TLS), or accept the risk with --allow-insecure-password (settings key allow-insecure-password = true)"
                    )));
                }
                let options = MqttOptions::new(
                    broker,
                    device_id,
                    self.mqtt_prefix.clone(),
                    TlsOptions {
                        ca: self.mqtt_ca.clone(),
                        client_auth,
                    },
                    self.mqtt_username.clone(),
                    self.mqtt_password_file.clone(),
                )?;
                Ok(Mode::Mqtt(options))
            }
        }
    }
}

/// Which transport `twinguard run` uses.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Files (the default).
    Local,
    /// Any MQTT 3.1.1 broker.
    Mqtt(MqttOptions),
    /// Azure IoT Hub (or `twinguard-hub`).
    IotHub(IotHubOptions),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("twinguard-settings-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_keys_mirror_flags_and_flags_win() {
        let dir = temp("merge");
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            "mqtt = \"mqtt://file:1883\"\ndevice-id = \"d1\"\nmqtt-ca = \"ca.pem\"\nmqtt-username = \"u\"\n",
        )
        .unwrap();
        let file = ConnectionSettings::load(&path).unwrap();
        assert_eq!(file.mqtt_ca, Some(dir.join("ca.pem")));
        let flags = ConnectionSettings {
            mqtt: Some("mqtts://flag:8883".into()),
            ..Default::default()
        };
        let merged = flags.resolve(Some(&path)).unwrap();
        assert_eq!(merged.mqtt.as_deref(), Some("mqtts://flag:8883"));
        assert_eq!(merged.device_id.as_deref(), Some("d1"));
        assert_eq!(merged.mqtt_username.as_deref(), Some("u"));

        std::fs::write(&path, "mqtt = \"x\"\nmqtt-pasword-file = \"p\"\n").unwrap();
        let err = ConnectionSettings::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml") && err.contains("mqtt-pasword-file") && !err.contains('\n'),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_readable_by_others_are_refused() {
        let dir = temp("secret");
        let path = dir.join("password");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = safefile::read_secret(&path, safefile::MAX_SECRET_BYTES)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("password") && err.contains("0644") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        assert!(!err.contains("hunter2"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(safefile::read_secret(&path, safefile::MAX_SECRET_BYTES).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            safefile::read_secret(&path, safefile::MAX_SECRET_BYTES).unwrap(),
            b"hunter2\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_password_over_plain_mqtt_needs_the_opt_in() {
        let plain = ConnectionSettings {
            mqtt: Some("mqtt://h".into()),
            device_id: Some("d".into()),
            mqtt_username: Some("u".into()),
            mqtt_password_file: Some("p".into()),
            ..Default::default()
        };
        let err = plain.mode().unwrap_err().to_string();
        assert!(
            err.contains("clear text") && err.contains("--allow-insecure-password"),
            "{err}"
        );
        let allowed = ConnectionSettings {
            allow_insecure_password: Some(true),
            ..plain.clone()
        };
        assert!(matches!(allowed.mode(), Ok(Mode::Mqtt(_))));
        // TLS needs no opt-in; no password needs none either.
        let tls = ConnectionSettings {
            mqtt: Some("mqtts://h".into()),
            ..plain.clone()
        };
        assert!(matches!(tls.mode(), Ok(Mode::Mqtt(_))));
        let anonymous = ConnectionSettings {
            mqtt_password_file: None,
            ..plain
        };
        assert!(matches!(anonymous.mode(), Ok(Mode::Mqtt(_))));
        // The settings-file key, in the file's spelling and in snake case.
        for key in ["allow-insecure-password", "allow_insecure_password"] {
            let s: ConnectionSettings = toml::from_str(&format!("{key} = true")).unwrap();
            assert_eq!(s.allow_insecure_password, Some(true));
        }
    }

    #[test]
    fn modes_and_their_errors() {
        assert!(matches!(ConnectionSettings::default().mode(), Ok(Mode::Local)));
        let err = |s: ConnectionSettings| s.mode().unwrap_err().to_string();
        assert!(err(ConnectionSettings {
            mqtt_ca: Some("x".into()),
            ..Default::default()
        })
        .contains("--mqtt-ca"));
        assert!(err(ConnectionSettings {
            mqtt: Some("mqtt://h".into()),
            ..Default::default()
        })
        .contains("--device-id"));
        assert!(err(ConnectionSettings {
            mqtt: Some("mqtt://h".into()),
            iothub: Some("f".into()),
            ..Default::default()
        })
        .contains("choose one"));
        assert!(err(ConnectionSettings {
            mqtt: Some("mqtt://h".into()),
            device_id: Some("d".into()),
            mqtt_ca: Some("ca".into()),
            ..Default::default()
        })
        .contains("mqtts://"));
        let Ok(Mode::Mqtt(m)) = (ConnectionSettings {
            mqtt: Some("mqtts://h".into()),
            device_id: Some("d".into()),
            ..Default::default()
        })
        .mode() else {
            panic!("MQTT mode expected");
        };
        assert_eq!(m.prefix, "twinguard/d");
        assert!(matches!(
            (ConnectionSettings {
                iothub: Some("cs".into()),
                ..Default::default()
            })
            .mode(),
            Ok(Mode::IotHub(_))
        ));
    }
}
