//! Codec tests: byte-exact examples from the specification, every protocol error the decoder
//! names, and property tests (round trips; random bytes never panic; every prefix of a valid
//! packet is `Incomplete`).

use proptest::prelude::*;

use super::*;

const MAX: usize = 1024 * 1024;

fn roundtrip(packet: &Packet) -> Vec<u8> {
    let bytes = packet.to_bytes().expect("encodes");
    assert_eq!(
        decode(&bytes, MAX),
        Ok(Decoded::Packet {
            packet: packet.clone(),
            consumed: bytes.len()
        })
    );
    bytes
}

#[test]
fn byte_exact_examples() {
    assert_eq!(roundtrip(&Packet::PingReq), [0xc0, 0x00]);
    assert_eq!(roundtrip(&Packet::PingResp), [0xd0, 0x00]);
    assert_eq!(roundtrip(&Packet::Disconnect), [0xe0, 0x00]);
    assert_eq!(roundtrip(&Packet::PubAck(0x1234)), [0x40, 0x02, 0x12, 0x34]);
    assert_eq!(roundtrip(&Packet::PubRel(1)), [0x62, 0x02, 0x00, 0x01]);
    assert_eq!(
        roundtrip(&Packet::ConnAck(ConnAck {
            session_present: true,
            code: ConnectReturnCode::NotAuthorized
        })),
        [0x20, 0x02, 0x01, 0x05]
    );
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(10),
        payload: b"hi".to_vec(),
    });
    assert_eq!(
        roundtrip(&publish),
        [0x33, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0a, b'h', b'i']
    );
    let connect = Packet::Connect(Connect {
        client_id: "c".into(),
        clean_session: true,
        keep_alive_secs: 60,
        will: Some(LastWill {
            topic: "s".into(),
            payload: b"offline".to_vec(),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: Some("u".into()),
        password: Some(b"p".to_vec()),
    });
    let bytes = roundtrip(&connect);
    // Protocol name, level 4, flags: user, password, will retain, will QoS 1, will, clean.
    assert_eq!(
        &bytes[2..10],
        [0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0b1110_1110]
    );
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 7,
        filters: vec![("a/#".into(), QoS::AtLeastOnce), ("b".into(), QoS::AtMostOnce)],
    });
    assert_eq!(
        roundtrip(&subscribe),
        [0x82, 0x0c, 0x00, 0x07, 0x00, 0x03, b'a', b'/', b'#', 0x01, 0x00, 0x01, b'b', 0x00]
    );
    roundtrip(&Packet::SubAck(SubAck {
        packet_id: 7,
        return_codes: vec![
            SubscribeReturnCode::Success(QoS::AtLeastOnce),
            SubscribeReturnCode::Failure,
        ],
    }));
    roundtrip(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 8,
        filters: vec!["a/#".into()],
    }));
}

#[test]
fn remaining_length_boundaries() {
    for (value, bytes) in [
        (0usize, vec![0x00]),
        (127, vec![0x7f]),
        (128, vec![0x80, 0x01]),
        (16_383, vec![0xff, 0x7f]),
        (16_384, vec![0x80, 0x80, 0x01]),
        (2_097_151, vec![0xff, 0xff, 0x7f]),
        (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
        (MAX_REMAINING_LENGTH, vec![0xff, 0xff, 0xff, 0x7f]),
    ] {
        let mut out = Vec::new();
        encode_remaining_length(value, &mut out);
        assert_eq!(out, bytes, "{value}");
        assert_eq!(decode_remaining_length(&bytes), Ok(Some((value, bytes.len()))));
    }
    assert_eq!(decode_remaining_length(&[0x80, 0x80]), Ok(None));
    assert_eq!(
        decode_remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]),
        Err(ProtocolError::MalformedRemainingLength)
    );
}

#[test]
fn size_bound_is_checked_before_the_body_arrives() {
    // A PUBLISH announcing 2 MB: refused with only its 4 header bytes in hand.
    assert_eq!(
        decode(&[0x30, 0x80, 0x80, 0x7f], MAX),
        Err(ProtocolError::TooLarge {
            size: 1 + 3 + 0x7f * 128 * 128,
            max: MAX
        })
    );
    assert_eq!(decode(&[0x30, 0x05, 0x00], MAX), Ok(Decoded::Incomplete));
    assert_eq!(decode(&[], MAX), Ok(Decoded::Incomplete));
}

#[test]
fn protocol_errors_are_named() {
    let cases: Vec<(&[u8], ProtocolError)> = vec![
        (&[0x00, 0x00], ProtocolError::ReservedPacketType(0)),
        (&[0xf0, 0x00], ProtocolError::ReservedPacketType(15)),
        (
            &[0x41, 0x02, 0x00, 0x01],
            ProtocolError::InvalidFlags {
                packet: "PUBACK",
                flags: 1,
            },
        ),
        (
            &[0x80, 0x00],
            ProtocolError::InvalidFlags {
                packet: "SUBSCRIBE",
                flags: 0,
            },
        ),
        (&[0x36, 0x00], ProtocolError::InvalidQoS { packet: "PUBLISH" }),
        (&[0x38, 0x03, 0x00, 0x01, b'a'], ProtocolError::DupOnQoS0),
        (
            &[0x40, 0x02, 0x00, 0x00],
            ProtocolError::ZeroPacketId { packet: "PUBACK" },
        ),
        (
            &[0x40, 0x03, 0x00, 0x01, 0x00],
            ProtocolError::TrailingBytes {
                packet: "PUBACK",
                count: 1,
            },
        ),
        (
            &[0x40, 0x01, 0x00],
            ProtocolError::Truncated {
                packet: "PUBACK",
                what: "packet identifier",
            },
        ),
        (
            &[0x30, 0x03, 0x00, 0x01, b'+'],
            ProtocolError::InvalidTopicName(topic::TopicError::WildcardInName),
        ),
        (
            &[0x30, 0x02, 0x00, 0x00],
            ProtocolError::InvalidTopicName(topic::TopicError::Empty),
        ),
        (
            &[0x30, 0x03, 0x00, 0x01, 0xff],
            ProtocolError::InvalidUtf8 {
                packet: "PUBLISH",
                what: "topic name",
            },
        ),
        (
            &[0x30, 0x03, 0x00, 0x01, 0x00],
            ProtocolError::NullCharacter {
                packet: "PUBLISH",
                what: "topic name",
            },
        ),
        (
            &[0x82, 0x02, 0x00, 0x01],
            ProtocolError::InvalidFilterList {
                packet: "SUBSCRIBE",
                what: "no topic filter",
            },
        ),
        (
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
            ProtocolError::InvalidRequestedQoS(4),
        ),
        (
            &[0x90, 0x03, 0x00, 0x01, 0x03],
            ProtocolError::InvalidSubAckCode(3),
        ),
        (
            &[0x20, 0x02, 0x00, 0x06],
            ProtocolError::InvalidConnAck("reserved return code"),
        ),
        (
            &[0x20, 0x02, 0x02, 0x00],
            ProtocolError::InvalidConnAck("reserved acknowledge flags set"),
        ),
        (
            &[
                0x10, 0x0a, 0x00, 0x04, b'M', b'Q', b'I', b's', 0x03, 0x02, 0x00, 0x3c,
            ],
            ProtocolError::UnsupportedProtocol {
                name: "MQIs".into(),
                level: 3,
            },
        ),
        (
            &[
                0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3c, 0x00, 0x00,
            ],
            ProtocolError::InvalidConnectFlags("reserved bit set"),
        ),
        (
            &[
                0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x3c, 0x00, 0x00,
            ],
            ProtocolError::InvalidConnectFlags("password without a user name"),
        ),
        (
            &[
                0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x22, 0x00, 0x3c, 0x00, 0x00,
            ],
            ProtocolError::InvalidConnectFlags("will QoS or will retain set without a will"),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decode(bytes, MAX), Err(expected.clone()), "{bytes:02x?}");
        // Every error has a message a log can carry.
        assert!(!expected.to_string().is_empty());
    }
}

#[test]
fn encoder_refuses_invalid_packets() {
    let mut p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a".into(),
        packet_id: Some(1),
        payload: vec![],
    };
    assert_eq!(
        Packet::Publish(p.clone()).to_bytes(),
        Err(EncodeError::PacketIdMismatch)
    );
    p.packet_id = None;
    p.topic = "a/#".into();
    assert!(matches!(
        Packet::Publish(p).to_bytes(),
        Err(EncodeError::InvalidTopicName { .. })
    ));
    assert_eq!(
        Packet::PubAck(0).to_bytes(),
        Err(EncodeError::ZeroPacketId("PUBACK"))
    );
    let long = "x".repeat(70_000);
    assert!(matches!(
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            filters: vec![long]
        })
        .to_bytes(),
        Err(EncodeError::FieldTooLong { .. })
    ));
    assert_eq!(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![]
        })
        .to_bytes(),
        Err(EncodeError::NoFilters("SUBSCRIBE"))
    );
}

#[test]
fn connect_debug_never_shows_the_password() {
    let c = Connect {
        client_id: "c".into(),
        clean_session: true,
        keep_alive_secs: 0,
        will: None,
        username: Some("u".into()),
        password: Some(b"SharedAccessSignature sr=secret".to_vec()),
    };
    let text = format!("{c:?}");
    assert!(!text.contains("secret") && text.contains("<redacted>"), "{text}");
}

#[test]
fn packet_buffer_cuts_a_stream_into_packets() {
    let mut stream = Vec::new();
    for id in 1..=50u16 {
        encode(&Packet::PubAck(id), &mut stream).unwrap_or_default();
    }
    let big = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        payload: vec![7; 300],
    });
    encode(&big, &mut stream).unwrap_or_default();
    let mut buffer = PacketBuffer::new(1000);
    let mut got = Vec::new();
    for chunk in stream.chunks(7) {
        buffer.push(chunk);
        while let Some(p) = buffer.next_packet().unwrap_or(None) {
            got.push(p);
        }
        assert!(buffer.pending() < 1000 + 7);
    }
    assert_eq!(got.len(), 51);
    assert_eq!(got[49], Packet::PubAck(50));
    assert_eq!(got[50], big);
    assert_eq!(buffer.pending(), 0);
    let mut small = PacketBuffer::new(100);
    small.push(&stream[stream.len() - 306..]);
    assert!(matches!(small.next_packet(), Err(ProtocolError::TooLarge { .. })));
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z$/ é]{1,20}".prop_filter("valid topic name", |t| topic::validate_name(t).is_ok())
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        1..=u16::MAX,
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(dup, qos, retain, topic, id, payload)| Publish {
            dup: dup && qos != QoS::AtMostOnce,
            qos,
            retain,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(id),
            payload,
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    let id = 1..=u16::MAX;
    prop_oneof![
        (
            "[a-zA-Z0-9/]{0,23}",
            any::<bool>(),
            any::<u16>(),
            proptest::option::of((
                topic_name(),
                proptest::collection::vec(any::<u8>(), 0..40),
                qos(),
                any::<bool>()
            )),
            proptest::option::of((
                "[a-z]{0,10}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
            )),
        )
            .prop_map(|(client_id, clean_session, keep_alive_secs, will, login)| {
                let (username, password) = match login {
                    Some((u, p)) => (Some(u), p),
                    None => (None, None),
                };
                Packet::Connect(Connect {
                    client_id,
                    clean_session,
                    keep_alive_secs,
                    will: will.map(|(topic, payload, qos, retain)| LastWill {
                        topic,
                        payload,
                        qos,
                        retain,
                    }),
                    username,
                    password,
                })
            }),
        (any::<bool>(), 0u8..=5).prop_map(|(session_present, code)| Packet::ConnAck(ConnAck {
            session_present,
            code: ConnectReturnCode::from_byte(code).unwrap_or(ConnectReturnCode::Accepted),
        })),
        publish().prop_map(Packet::Publish),
        id.clone().prop_map(Packet::PubAck),
        id.clone().prop_map(Packet::PubRec),
        id.clone().prop_map(Packet::PubRel),
        id.clone().prop_map(Packet::PubComp),
        (
            id.clone(),
            proptest::collection::vec(("[a-z/+#]{1,12}", qos()), 1..6)
        )
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe { packet_id, filters })),
        (
            id.clone(),
            proptest::collection::vec(
                prop_oneof![
                    qos().prop_map(SubscribeReturnCode::Success),
                    Just(SubscribeReturnCode::Failure)
                ],
                0..6
            )
        )
            .prop_map(|(packet_id, return_codes)| Packet::SubAck(SubAck {
                packet_id,
                return_codes
            })),
        (id.clone(), proptest::collection::vec("[a-z/+#]{1,12}", 1..6))
            .prop_map(|(packet_id, filters)| Packet::Unsubscribe(Unsubscribe { packet_id, filters })),
        id.prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_round_trips(p in packet()) {
        let bytes = p.to_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode(&bytes, MAX), Ok(Decoded::Packet { packet: p, consumed: bytes.len() }));
        // Every strict prefix asks for more bytes: a reader never mistakes a partial packet.
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..cut], MAX), Ok(Decoded::Incomplete));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..600) {
        match decode(&bytes, max) {
            Ok(Decoded::Packet { packet, consumed }) => {
                prop_assert!(consumed <= bytes.len() && consumed <= max);
                // What decodes re-encodes (possibly with a shorter length field) and decodes
                // to the same packet.
                let again = packet.to_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decode(&again, MAX), Ok(Decoded::Packet { packet, consumed: again.len() }));
            }
            Ok(Decoded::Incomplete) | Err(_) => {}
        }
    }

    #[test]
    fn mutated_packets_never_panic(p in packet(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let mut bytes = p.to_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (at, value) in flips {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        let _ = decode(&bytes, MAX);
        let mut buffer = PacketBuffer::new(MAX);
        buffer.push(&bytes);
        while let Ok(Some(_)) = buffer.next_packet() {}
    }
}
