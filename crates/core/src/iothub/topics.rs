//! IoT Hub's MQTT topics for one connected identity: what a client may publish to (device-to-
//! cloud messages with their property bag, twin GET, reported PATCH, direct method answers),
//! what it may subscribe to, and the topics the hub publishes on. Both sides use them: the
//! agent builds what it publishes and parses twin answers here, the hub classifies what it
//! receives. Pure.

use super::identity::IdentityId;
use super::query::{decoded_pairs, percent_encode, raw_pairs};

/// Twin responses (`$iothub/twin/res/{status}/?$rid=...`).
pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
/// Desired-property notifications.
pub const TWIN_DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Direct method requests.
pub const METHODS: &str = "$iothub/methods/POST/#";
/// The start of a twin response topic.
pub const TWIN_RESPONSE_PREFIX: &str = "$iothub/twin/res/";
/// The start of a desired-property notification topic.
pub const TWIN_DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";
/// The security-message property bag (SPEC §6), before `$.mid`.
pub const PROPERTY_BAG: &str =
    "%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.ct=application%2Fjson&%24.ce=utf-8";

/// The device-to-cloud topic of one security message, with its property bag and message id.
pub fn message_topic(device_id: &str, module_id: &str, message_id: &str) -> String {
    format!(
        "devices/{device_id}/modules/{module_id}/messages/events/{PROPERTY_BAG}&%24.mid={}",
        percent_encode(message_id)
    )
}

/// GET the full twin.
pub fn twin_get(rid: u64) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// PATCH the reported properties.
pub fn twin_patch_reported(rid: u64) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// A parsed `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]` topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwinResponse {
    /// HTTP-like status: 200 (GET), 204 (PATCH), 429 (throttled), 4xx/5xx.
    pub status: u16,
    /// The request id it answers.
    pub rid: Option<u64>,
    /// The twin's new reported `$version` (PATCH answers).
    pub version: Option<i64>,
}

/// The `name=value` pairs of a query string (members without `=` skipped).
fn valued_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    raw_pairs(query).filter_map(|(name, value)| Some((name, value?)))
}

/// Parses a twin response topic; `None` if the topic is not one.
pub fn parse_response_topic(topic: &str) -> Option<TwinResponse> {
    let rest = topic.strip_prefix(TWIN_RESPONSE_PREFIX)?;
    let (status, query) = rest.split_once("/?").unwrap_or((rest.trim_end_matches('/'), ""));
    let status = status.parse().ok()?;
    let mut response = TwinResponse {
        status,
        rid: None,
        version: None,
    };
    for (name, value) in valued_pairs(query) {
        match name {
            "$rid" => response.rid = value.parse().ok(),
            "$version" => response.version = value.parse().ok(),
            _ => {}
        }
    }
    Some(response)
}

/// The `$version` of a desired-properties notification topic (`Some(None)`: such a topic
/// without a version); `None` if the topic is not one.
pub fn parse_desired_topic(topic: &str) -> Option<Option<i64>> {
    let rest = topic.strip_prefix(TWIN_DESIRED_PREFIX)?;
    let query = rest.strip_prefix('?').unwrap_or(rest);
    Some(
        valued_pairs(query)
            .find(|(n, _)| *n == "$version")
            .and_then(|(_, v)| v.parse().ok()),
    )
}

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

    #[test]
    fn message_topic_has_the_exact_property_bag() {
        assert_eq!(
            message_topic("dev1", "azureiotsecurity", "0f8fad5b-d9cb-469f-a165-70867728950e"),
            "devices/dev1/modules/azureiotsecurity/messages/events/\
             %24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.ct=application%2Fjson&%24.ce=utf-8\
             &%24.mid=0f8fad5b-d9cb-469f-a165-70867728950e"
        );
        let Inbound::Telemetry { properties } =
            classify_publish(&message_topic("d1", "azureiotsecurity", "m 1"), &module())
        else {
            panic!("not telemetry");
        };
        assert_eq!(
            properties.last(),
            Some(&("$.mid".to_owned(), Some("m 1".to_owned())))
        );
    }

    #[test]
    fn twin_topics_parse() {
        assert_eq!(twin_get(3), "$iothub/twin/GET/?$rid=3");
        assert_eq!(
            twin_patch_reported(4),
            "$iothub/twin/PATCH/properties/reported/?$rid=4"
        );
        assert_eq!(
            classify_publish(&twin_get(3), &module()),
            Inbound::TwinGet { rid: "3".into() }
        );
        assert_eq!(
            parse_response_topic(&twin_response(204, "4", Some(12))),
            Some(TwinResponse {
                status: 204,
                rid: Some(4),
                version: Some(12)
            })
        );
        assert_eq!(
            parse_response_topic("$iothub/twin/res/200/?$rid=3"),
            Some(TwinResponse {
                status: 200,
                rid: Some(3),
                version: None
            })
        );
        assert_eq!(
            parse_response_topic("$iothub/twin/res/429/?$rid=x"),
            Some(TwinResponse {
                status: 429,
                rid: None,
                version: None
            })
        );
        assert_eq!(parse_response_topic("$iothub/twin/res/abc/?$rid=1"), None);
        assert_eq!(parse_response_topic("$iothub/twin/PATCH/x"), None);
        assert_eq!(parse_desired_topic(&desired_notification(7)), Some(Some(7)));
        assert_eq!(
            parse_desired_topic("$iothub/twin/PATCH/properties/desired/"),
            Some(None)
        );
        assert_eq!(parse_desired_topic("$iothub/twin/res/200/?$rid=1"), None);
    }
}
