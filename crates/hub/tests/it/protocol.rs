//! IoT Hub's rules, packet by packet, against a real hub process: credentials, twin topics,
//! and the documented reactions to protocol faults (wrong SAS -> CONNACK 5, token expiry ->
//! closed at expiry, QoS 2 -> closed, sixth subscription -> SUBACK failure, over 256 KB ->
//! closed, second connection -> the first closed, keep-alive 1.5x).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use twinguard_core::iothub::sas::sign;
use twinguard_mqtt::{ConnectReturnCode, Packet, QoS, SubscribeReturnCode};

use crate::client::{unix_now, Client, Next};
use crate::support::{key_of, scratch, Hub, MODULE};

const DEVICE: &str = "dev-proto";

fn username() -> String {
    format!("localhost/{DEVICE}/{MODULE}/?api-version=2021-04-12&DeviceClientType=twinguard-test")
}

fn resource() -> String {
    format!("localhost/devices/{DEVICE}/modules/{MODULE}")
}

/// A hub with the module identity; its key.
fn hub_with_module(name: &str) -> (Hub, Vec<u8>) {
    let hub = Hub::start(&scratch(name).join("data"), "127.0.0.1:0").expect("hub starts");
    let cs = hub.add_identity(DEVICE, Some(MODULE));
    (hub, key_of(&cs))
}

/// A connected client with a token valid for `ttl_secs`.
fn connected(hub: &Hub, key: &[u8], ttl_secs: u64, keep_alive: u16) -> Client {
    let mut c = Client::open(hub.mqtt, &hub.ca);
    let token = sign(&resource(), key, unix_now() + ttl_secs);
    assert_eq!(
        c.connect(&format!("{DEVICE}/{MODULE}"), &username(), &token, keep_alive),
        Some(ConnectReturnCode::Accepted)
    );
    c
}

fn events_topic() -> String {
    format!("devices/{DEVICE}/modules/{MODULE}/messages/events/%24.ct=application%2Fjson&custom=1")
}

#[test]
fn bad_credentials_are_not_authorized() {
    let (hub, key) = hub_with_module("bad-credentials");
    let client_id = format!("{DEVICE}/{MODULE}");
    let later = unix_now() + 600;
    let cases = [
        (
            "wrong signature",
            client_id.clone(),
            username(),
            sign(&resource(), b"not the key", later),
        ),
        (
            "expired token",
            client_id.clone(),
            username(),
            sign(&resource(), &key, unix_now() - 1),
        ),
        (
            "another identity's resource",
            client_id.clone(),
            username(),
            sign(&format!("localhost/devices/{DEVICE}"), &key, later),
        ),
        (
            "unknown identity",
            format!("{DEVICE}/other"),
            format!("localhost/{DEVICE}/other/?api-version=2021-04-12"),
            sign(&format!("localhost/devices/{DEVICE}/modules/other"), &key, later),
        ),
        (
            "user name of another hub",
            client_id.clone(),
            format!("otherhub/{DEVICE}/{MODULE}/?api-version=2021-04-12"),
            sign(&resource(), &key, later),
        ),
        (
            "not a SAS token",
            client_id.clone(),
            username(),
            "password".to_owned(),
        ),
    ];
    for (what, client_id, username, password) in cases {
        let mut c = Client::open(hub.mqtt, &hub.ca);
        assert_eq!(
            c.connect(&client_id, &username, &password, 60),
            Some(ConnectReturnCode::NotAuthorized),
            "{what}"
        );
        assert!(
            c.closed_within(Duration::from_secs(5)).is_some(),
            "{what}: closed after CONNACK"
        );
    }
    let mut c = Client::open(hub.mqtt, &hub.ca);
    assert_eq!(
        c.connect("bad/client/id", "localhost/bad/client/id/", "x", 60),
        Some(ConnectReturnCode::IdentifierRejected)
    );
    // The right credentials, with a newer api-version and extra parameters, connect.
    let mut c = Client::open(hub.mqtt, &hub.ca);
    let username =
        format!("localhost/{DEVICE}/{MODULE}/?api-version=2099-12-31&model-id=dtmi%3Aa%3Bb%3B1&x=y");
    assert_eq!(
        c.connect(&client_id, &username, &sign(&resource(), &key, later), 60),
        Some(ConnectReturnCode::Accepted)
    );
}

#[test]
fn twin_topics_behave_like_iot_hub() {
    let (hub, key) = hub_with_module("twin-topics");
    let mut c = connected(&hub, &key, 600, 60);
    assert_eq!(
        c.subscribe(&["$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"]),
        [SubscribeReturnCode::Success(QoS::AtLeastOnce); 2]
    );
    c.publish("$iothub/twin/GET/?$rid=abc-1", b"", QoS::AtMostOnce);
    let get = c.next_publish(Duration::from_secs(5)).expect("GET answer");
    assert_eq!(get.topic, "$iothub/twin/res/200/?$rid=abc-1");
    let body: Value = serde_json::from_slice(&get.payload).expect("json");
    assert_eq!(
        body,
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );

    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        br#"{"a":{"b":1},"c":2}"#,
        QoS::AtMostOnce,
    );
    let patched = c.next_publish(Duration::from_secs(5)).expect("PATCH answer");
    assert_eq!(patched.topic, "$iothub/twin/res/204/?$rid=2&$version=2");
    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=3",
        br#"{"c":null}"#,
        QoS::AtMostOnce,
    );
    let patched = c.next_publish(Duration::from_secs(5)).expect("PATCH answer");
    assert_eq!(patched.topic, "$iothub/twin/res/204/?$rid=3&$version=3");
    for bad in [&b"not json"[..], br#"{"a.b":1}"#, b"[1]"] {
        c.publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=4",
            bad,
            QoS::AtMostOnce,
        );
        let refused = c.next_publish(Duration::from_secs(5)).expect("PATCH answer");
        assert_eq!(refused.topic, "$iothub/twin/res/400/?$rid=4");
    }
    assert_eq!(
        hub.twin(DEVICE, MODULE)["reported"],
        json!({"a": {"b": 1}, "$version": 3})
    );

    // An operator's patch reaches the client as a notification with the next $version, and
    // a replacement as the difference.
    hub.desired("PATCH", DEVICE, MODULE, &json!({"x": {"y": 1, "z": 2}}));
    let n = c.next_publish(Duration::from_secs(5)).expect("notification");
    assert_eq!(n.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(
        serde_json::from_slice::<Value>(&n.payload).expect("json"),
        json!({"x": {"y": 1, "z": 2}, "$version": 2})
    );
    hub.desired("PUT", DEVICE, MODULE, &json!({"x": {"y": 1}}));
    let n = c.next_publish(Duration::from_secs(5)).expect("notification");
    assert_eq!(
        serde_json::from_slice::<Value>(&n.payload).expect("json"),
        json!({"x": {"z": null}, "$version": 3})
    );

    // Device-to-cloud messages are stored with their property bag and a PUBACK.
    let id = c
        .publish(
            &events_topic(),
            b"{\"not\":\"a security message\"}",
            QoS::AtLeastOnce,
        )
        .expect("id");
    assert_eq!(c.next(Duration::from_secs(5)), Next::Packet(Packet::PubAck(id)));
    let stored = hub.messages(DEVICE);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["properties"],
        json!({"$.ct": "application/json", "custom": "1"})
    );
    assert_eq!(stored[0]["securityMessage"], json!(false));
    c.send(&Packet::PingReq);
    assert_eq!(c.next(Duration::from_secs(5)), Next::Packet(Packet::PingResp));
}

#[test]
fn qos2_publish_closes_the_connection() {
    let (hub, key) = hub_with_module("qos2");
    let mut c = connected(&hub, &key, 600, 60);
    c.publish(&events_topic(), b"{}", QoS::ExactlyOnce);
    assert!(c.closed_within(Duration::from_secs(5)).is_some());
    assert!(hub.messages(DEVICE).is_empty(), "nothing stored");
}

#[test]
fn a_sixth_subscription_fails() {
    let (hub, key) = hub_with_module("subscriptions");
    let mut c = connected(&hub, &key, 600, 60);
    let ok = SubscribeReturnCode::Success(QoS::AtLeastOnce);
    assert_eq!(
        c.subscribe(&[
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/#",
            "$iothub/methods/POST/#"
        ]),
        [ok; 3]
    );
    // Subscribing again to the same filter is not a new subscription.
    assert_eq!(c.subscribe(&["$iothub/twin/res/#"]), [ok]);
    assert_eq!(
        c.subscribe(&[
            "$iothub/methods/POST/reboot/#",
            &format!("devices/{DEVICE}/modules/{MODULE}/inputs/#"),
            "$iothub/methods/POST/sixth/#",
        ]),
        [ok, ok, SubscribeReturnCode::Failure]
    );
    // Topics outside the identity's spaces fail too, and the connection stays up.
    assert_eq!(
        c.subscribe(&["#", "devices/other/messages/devicebound/#"]),
        [SubscribeReturnCode::Failure; 2]
    );
    c.send(&Packet::PingReq);
    assert_eq!(c.next(Duration::from_secs(5)), Next::Packet(Packet::PingResp));
}

#[test]
fn messages_over_256_kb_close_the_connection() {
    let (hub, key) = hub_with_module("oversize");
    let mut c = connected(&hub, &key, 600, 60);
    let id = c
        .publish(&events_topic(), &vec![b'x'; 256 * 1024], QoS::AtLeastOnce)
        .expect("id");
    assert_eq!(
        c.next(Duration::from_secs(10)),
        Next::Packet(Packet::PubAck(id)),
        "256 KB is allowed"
    );
    c.publish(&events_topic(), &vec![b'x'; 256 * 1024 + 1], QoS::AtLeastOnce);
    assert!(c.closed_within(Duration::from_secs(10)).is_some());
    assert_eq!(hub.messages(DEVICE).len(), 1, "only the first is stored");
    // Far larger packets are refused from their header, before their body arrives.
    let mut c = connected(&hub, &key, 600, 60);
    let mut header = vec![0x32];
    twinguard_mqtt::encode_remaining_length(100 * 1024 * 1024, &mut header);
    c.send_raw(&header);
    assert!(c.closed_within(Duration::from_secs(10)).is_some());
}

#[test]
fn a_second_connection_closes_the_first() {
    let (hub, key) = hub_with_module("second-connection");
    let mut first = connected(&hub, &key, 600, 60);
    let mut second = connected(&hub, &key, 600, 60);
    assert!(first.closed_within(Duration::from_secs(5)).is_some());
    second.send(&Packet::PingReq);
    assert_eq!(
        second.next(Duration::from_secs(5)),
        Next::Packet(Packet::PingResp)
    );
    let (_, live) = hub.api("GET", "/v1/connections", None);
    assert_eq!(live.as_array().map(Vec::len), Some(1), "{live}");
}

#[test]
fn an_expiring_token_closes_the_connection_at_expiry() {
    let (hub, key) = hub_with_module("token-expiry");
    // se is in whole seconds: the token expires 2 to 3 s from now.
    let expiry = unix_now() + 3;
    let mut c = Client::open(hub.mqtt, &hub.ca);
    let token = sign(&resource(), &key, expiry);
    assert_eq!(
        c.connect(&format!("{DEVICE}/{MODULE}"), &username(), &token, 60),
        Some(ConnectReturnCode::Accepted)
    );
    // Stay active (pings answered) until the hub closes the connection.
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !c.send(&Packet::PingReq) {
            closed = true;
            break;
        }
        match c.next(Duration::from_millis(200)) {
            Next::Closed => {
                closed = true;
                break;
            }
            _ => continue,
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    assert!(closed, "still connected after the token expired");
    let expiry_ms = u128::from(expiry) * 1000;
    assert!(
        now_ms + 300 >= expiry_ms && now_ms <= expiry_ms + 1500,
        "closed at {now_ms}, token expiry {expiry_ms}"
    );
}

#[test]
fn silence_beyond_one_and_a_half_keep_alives_closes_the_connection() {
    let (hub, key) = hub_with_module("keep-alive");
    let mut c = connected(&hub, &key, 600, 2);
    let closed = c.closed_within(Duration::from_secs(10)).expect("closed");
    assert!(
        closed >= Duration::from_millis(2500) && closed <= Duration::from_millis(4500),
        "closed after {closed:?}; 1.5 x 2 s expected"
    );
}

#[test]
fn publishing_outside_the_identity_or_garbage_closes_only_that_connection() {
    let (hub, key) = hub_with_module("foreign-topic");
    let mut c = connected(&hub, &key, 600, 60);
    c.publish("devices/someone-else/messages/events/", b"{}", QoS::AtLeastOnce);
    assert!(c.closed_within(Duration::from_secs(5)).is_some());
    let mut c = Client::open(hub.mqtt, &hub.ca);
    c.send_raw(&[0xff; 64]);
    assert!(c.closed_within(Duration::from_secs(5)).is_some());
    // Not TLS at all.
    let mut raw = std::net::TcpStream::connect(hub.mqtt).expect("connect");
    std::io::Write::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n").ok();
    let mut c = connected(&hub, &key, 600, 60);
    c.send(&Packet::PingReq);
    assert_eq!(
        c.next(Duration::from_secs(5)),
        Next::Packet(Packet::PingResp),
        "the hub is fine"
    );
    assert!(!hub.log_text().contains("panicked"), "{}", hub.log_text());
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_packets_never_panic_the_hub() {
    let (hub, key) = hub_with_module("mutations");
    let valid: Vec<Vec<u8>> = [
        Packet::Publish(twinguard_mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: events_topic(),
            packet_id: Some(7),
            payload: br#"{"AgentVersion":"1","Events":[]}"#.to_vec(),
        }),
        Packet::Publish(twinguard_mqtt::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "$iothub/twin/PATCH/properties/reported/?$rid=1".into(),
            packet_id: None,
            payload: br#"{"a":{"b":[1,2,{"c":null}]}}"#.to_vec(),
        }),
        Packet::Subscribe(twinguard_mqtt::Subscribe {
            packet_id: 3,
            filters: vec![("$iothub/twin/res/#".into(), QoS::AtLeastOnce)],
        }),
        Packet::Unsubscribe(twinguard_mqtt::Unsubscribe {
            packet_id: 4,
            filters: vec!["$iothub/twin/res/#".into()],
        }),
        Packet::PingReq,
    ]
    .iter()
    .map(|p| p.to_bytes().expect("encode"))
    .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..60 {
        let mut c = connected(&hub, &key, 600, 60);
        let mut bytes = valid[rng.below(valid.len())].clone();
        for _ in 0..=rng.below(4) {
            let i = rng.below(bytes.len());
            bytes[i] = rng.next() as u8;
        }
        if round % 5 == 0 {
            bytes.truncate(rng.below(bytes.len()) + 1);
        }
        c.send_raw(&bytes);
        // Whatever it did with them, the hub answers or closes; it never dies.
        let _ = c.next(Duration::from_millis(100));
    }
    let mut c = connected(&hub, &key, 600, 60);
    c.send(&Packet::PingReq);
    assert_eq!(c.next(Duration::from_secs(5)), Next::Packet(Packet::PingResp));
    assert!(!hub.log_text().contains("panicked"), "{}", hub.log_text());
}
