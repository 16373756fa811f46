//! IoT Hub's MQTT topics for one connected identity: what a client may publish to (device-to-
//! cloud messages with their property bag, twin GET, reported PATCH, direct method answers),
//! what it may subscribe to, and the topics the hub publishes on. Pure.

use crate::identity::IdentityId;
use crate::query::{decoded_pairs, raw_pairs};

/// Twin responses (`$iothub/twin/res/{status}/?$rid=...`).
pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
/// Desired-property notifications.
pub const TWIN_DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Direct method requests.
pub const METHODS: &str = "$iothub/methods/POST/#";

/// What a client's PUBLISH asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A device-to-cloud message with its decoded property bag, in order.
    Telemetry {
        /// `(name, value)`; a member without `=` has no value.
        properties: Vec<(String, Option<String>)>,
    },
    /// GET the full twin; the answer goes to `$iothub/twin/res/200/?$rid={rid}`.
    TwinGet {
        /// The request id, echoed as given.
        rid: String,
    },
    /// PATCH the reported properties; the answer is 204 with the new `$version`.
    TwinPatchReported {
        /// The request id, echoed as given.
        rid: String,
    },
    /// The answer to a direct method call.
    MethodResponse,
    /// Anything else (another identity's topics, unknown topics, a property bag that does not
    /// decode): IoT Hub closes the connection.
    Unsupported(String),
}

/// Classifies the topic of a PUBLISH from `id`.
pub fn classify_publish(topic: &str, id: &IdentityId) -> Inbound {
    let events = format!("{}/messages/events", id.topic_base());
    if let Some(rest) = topic.strip_prefix(&events) {
        let bag = match rest {
            "" => "",
            _ => match rest.strip_prefix('/') {
                Some(bag) => bag,
                None => return Inbound::Unsupported(format!("{topic:?} is not {events}/...")),
            },
        };
        return match decoded_pairs(bag) {
            Ok(properties) => Inbound::Telemetry { properties },
            Err(e) => Inbound::Unsupported(format!("property bag of {topic:?}: {e}")),
        };
    }
    if let Some(query) = topic.strip_prefix("$iothub/twin/GET/") {
        return Inbound::TwinGet { rid: rid_of(query) };
    }
    if let Some(query) = topic.strip_prefix("$iothub/twin/PATCH/properties/reported/") {
        return Inbound::TwinPatchReported { rid: rid_of(query) };
    }
    if topic.starts_with("$iothub/methods/res/") {
        return Inbound::MethodResponse;
    }
    Inbound::Unsupported(format!("{topic:?} is not a topic {id} may publish to"))
}

/// Removes the properties a device may not set: IoT Hub's own system properties, named
/// `iothub-...` (any case), such as `iothub-connection-device-id` or `iothub-MessageType`.
/// IoT Hub sets these itself, so a device must not be able to forge them. Returns how many
/// were removed.
pub fn drop_system_properties(properties: &mut Vec<(String, Option<String>)>) -> usize {
    let before = properties.len();
    properties.retain(|(name, _)| !name.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("iothub-")));
    before - properties.len()
}

/// The `$rid` of a `?$rid=...` query, as given (empty when there is none).
fn rid_of(query: &str) -> String {
    let query = query.strip_prefix('?').unwrap_or(query);
    raw_pairs(query)
        .find(|(name, _)| *name == "$rid")
        .and_then(|(_, v)| v)
        .unwrap_or("")
        .to_owned()
}

/// Whether `filter` lies within the topic spaces IoT Hub lets `id` subscribe to: twin
/// responses, desired-property notifications, direct methods, and cloud-to-device messages
/// (a device's `devicebound`, a module's `inputs`). The official SDKs subscribe to
/// `{space}#`; narrower filters inside a space (`$iothub/methods/POST/reboot/#`) are accepted
/// too, and each counts towards the limit of five. A filter whose wildcard comes before the
/// end of the space's fixed prefix (`$iothub/#`) could match other identities' or the hub's
/// own topics and is refused.
pub fn subscription_allowed(filter: &str, id: &IdentityId) -> bool {
    let own = match id.module() {
        Some(_) => format!("{}/inputs/", id.topic_base()),
        None => format!("{}/messages/devicebound/", id.topic_base()),
    };
    [TWIN_RESPONSES, TWIN_DESIRED, METHODS, own.as_str()]
        .iter()
        .map(|space| space.trim_end_matches('#'))
        .any(|prefix| filter.len() > prefix.len() && filter.starts_with(prefix))
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={version}]`.
pub fn twin_response(status: u16, rid: &str, version: Option<i64>) -> String {
    match version {
        Some(v) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={v}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// `$iothub/twin/PATCH/properties/desired/?$version={version}`.
pub fn desired_notification(version: i64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module() -> IdentityId {
        IdentityId::new("d1", Some("azureiotsecurity")).expect("valid")
    }

    #[test]
    fn telemetry_with_property_bags() {
        let m = module();
        let agent_topic = "devices/d1/modules/azureiotsecurity/messages/events/%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=abc";
        let Inbound::Telemetry { properties } = classify_publish(agent_topic, &m) else {
            panic!("not telemetry");
        };
        assert_eq!(
            properties,
            [
                ("$.ifid", "urn:azureiot:Security:SecurityAgent:1"),
                ("$.ct", "application/json"),
                ("$.ce", "utf-8"),
                ("$.mid", "abc"),
            ]
            .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
        );
        for bare in [
            "devices/d1/modules/azureiotsecurity/messages/events",
            "devices/d1/modules/azureiotsecurity/messages/events/",
        ] {
            assert_eq!(
                classify_publish(bare, &m),
                Inbound::Telemetry { properties: vec![] }
            );
        }
        for other in [
            "devices/d2/modules/azureiotsecurity/messages/events/",
            "devices/d1/messages/events/",
            "devices/d1/modules/azureiotsecurity/messages/eventsx",
            "devices/d1/modules/azureiotsecurity/messages/events/%zz=1",
            "some/topic",
        ] {
            assert!(
                matches!(classify_publish(other, &m), Inbound::Unsupported(_)),
                "{other}"
            );
        }
        let d = IdentityId::new("d1", None).expect("valid");
        assert!(matches!(
            classify_publish("devices/d1/messages/events/a=b", &d),
            Inbound::Telemetry { .. }
        ));
    }

    #[test]
    fn device_supplied_system_properties_are_dropped() {
        let mut p: Vec<(String, Option<String>)> = [
            "iothub-connection-device-id",
            "IOTHUB-MessageType",
            "custom",
            "$.ct",
            "iothub",
            "é",
        ]
        .iter()
        .map(|n| ((*n).to_owned(), Some("x".to_owned())))
        .collect();
        assert_eq!(drop_system_properties(&mut p), 2);
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["custom", "$.ct", "iothub", "é"]);
    }

    #[test]
    fn twin_and_methods() {
        let m = module();
        assert_eq!(
            classify_publish("$iothub/twin/GET/?$rid=5f0e-uuid", &m),
            Inbound::TwinGet {
                rid: "5f0e-uuid".into()
            }
        );
        assert_eq!(
            classify_publish("$iothub/twin/PATCH/properties/reported/?$rid=7&x=1", &m),
            Inbound::TwinPatchReported { rid: "7".into() }
        );
        assert_eq!(
            classify_publish("$iothub/methods/res/200/?$rid=1", &m),
            Inbound::MethodResponse
        );
        assert_eq!(
            twin_response(204, "7", Some(3)),
            "$iothub/twin/res/204/?$rid=7&$version=3"
        );
        assert_eq!(
            desired_notification(4),
            "$iothub/twin/PATCH/properties/desired/?$version=4"
        );
    }

    #[test]
    fn subscriptions() {
        let m = module();
        for ok in [
            TWIN_RESPONSES,
            TWIN_DESIRED,
            METHODS,
            "devices/d1/modules/azureiotsecurity/inputs/#",
        ] {
            assert!(subscription_allowed(ok, &m), "{ok}");
        }
        for ok in ["$iothub/methods/POST/reboot/#", "$iothub/twin/res/200/+"] {
            assert!(subscription_allowed(ok, &m), "{ok}");
        }
        for bad in [
            "#",
            "$iothub/#",
            "$iothub/twin/res/",
            "devices/d1/messages/devicebound/#",
            "$iothub/twin/+/x",
            "a",
        ] {
            assert!(!subscription_allowed(bad, &m), "{bad}");
        }
        let d = IdentityId::new("d1", None).expect("valid");
        assert!(subscription_allowed("devices/d1/messages/devicebound/#", &d));
    }
}
