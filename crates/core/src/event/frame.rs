//! The security message envelope: `{"AgentVersion", "AgentId", "MessageSchemaVersion": "1.0",
//! "Events": [...]}` (message_v1_0.json), assembled from events already serialized.
//!
//! The cache holds events as bytes, and a message is filled up to `maxMessageSizeInBytes`
//! counted on the exact body, so the envelope is written by hand around those bytes and its
//! length is predicted exactly, before assembling, by [`MessageFrame::body_len`].

use uuid::Uuid;

use super::message::json_len;

/// `MessageSchemaVersion` of every message we write.
pub const MESSAGE_SCHEMA_VERSION: &str = "1.0";

/// What closes a message: the end of `Events` and of the object.
const TAIL: &[u8] = b"]}";

/// The agent-wide part of every message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFrame {
    /// `AgentVersion`, e.g. `"0.1.0"`.
    pub agent_version: String,
    /// `AgentId`: created at first start and kept in the data directory.
    pub agent_id: Uuid,
}

impl MessageFrame {
    /// A frame for this agent.
    pub fn new(agent_version: impl Into<String>, agent_id: Uuid) -> MessageFrame {
        MessageFrame {
            agent_version: agent_version.into(),
            agent_id,
        }
    }

    /// The message body holding `events`, each the compact JSON of one event
    /// ([`Event::to_json`](super::Event::to_json)), in the order given. The bytes of the events
    /// are copied as they are; they are not checked.
    ///
    /// The schema requires at least one event (`Events` has `minItems: 1`): a body with none
    /// is not a valid message, and callers do not send one.
    pub fn assemble<E: AsRef<[u8]>>(&self, events: &[E]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body_len(events.iter().map(|e| e.as_ref().len())));
        self.write_head(&mut out);
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(event.as_ref());
        }
        out.extend_from_slice(TAIL);
        out
    }

    /// The exact length of [`MessageFrame::assemble`] for events of these lengths.
    pub fn body_len(&self, event_lens: impl IntoIterator<Item = usize>) -> usize {
        let (count, sum) = event_lens
            .into_iter()
            .fold((0usize, 0usize), |(n, s), len| (n + 1, s + len));
        // One comma between every two events.
        self.overhead() + sum + count.saturating_sub(1)
    }

    /// The length of the body with no events: a message with one event of `n` bytes is
    /// `overhead() + n` long, so the largest event that fits in a message is
    /// `maxMessageSizeInBytes - overhead()`; each further event adds its length plus one.
    pub fn overhead(&self) -> usize {
        // {"AgentVersion":<string>,"AgentId":"<36>","MessageSchemaVersion":"1.0","Events":[ ]}
        const FIXED: usize = r#"{"AgentVersion":,"AgentId":"","MessageSchemaVersion":"","Events":["#.len()
            + 36
            + MESSAGE_SCHEMA_VERSION.len()
            + TAIL.len();
        FIXED + json_len(self.agent_version.as_str())
    }

    /// The largest event, in bytes, that fits alone in a message of `max_message_bytes`
    /// (0 when not even the envelope fits).
    pub fn max_event_bytes(&self, max_message_bytes: usize) -> usize {
        max_message_bytes.saturating_sub(self.overhead())
    }

    /// Everything before the first event.
    fn write_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"AgentVersion":"#);
        // The version is escaped like any JSON string; writing to a Vec cannot fail.
        if let Err(e) = serde_json::to_writer(&mut *out, self.agent_version.as_str()) {
            unreachable!("serializing a string failed: {e}");
        }
        out.extend_from_slice(br#","AgentId":""#);
        out.extend_from_slice(
            self.agent_id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(br#"","MessageSchemaVersion":""#);
        out.extend_from_slice(MESSAGE_SCHEMA_VERSION.as_bytes());
        out.extend_from_slice(br#"","Events":["#);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn frame(version: &str) -> MessageFrame {
        MessageFrame::new(
            version,
            Uuid::from_u128(0x072f_3eca_3db0_45ba_8174_fa38_3bc9_3caf),
        )
    }

    #[test]
    fn assembles_a_compact_message() {
        let f = frame("0.1.0");
        let body = f.assemble(&[br#"{"a":1}"#.as_slice(), br#"{"b":2}"#.as_slice()]);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"AgentVersion":"0.1.0","AgentId":"072f3eca-3db0-45ba-8174-fa383bc93caf","MessageSchemaVersion":"1.0","Events":[{"a":1},{"b":2}]}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Events"], json!([{"a": 1}, {"b": 2}]));
        assert_eq!(f.overhead(), f.assemble::<&[u8]>(&[]).len());
        assert_eq!(f.max_event_bytes(8192), 8192 - f.overhead());
        assert_eq!(f.max_event_bytes(10), 0);
    }

    #[test]
    fn the_version_is_escaped() {
        let f = frame("1.0 \"beta\"\n\u{1}");
        let body = f.assemble(&[b"{}".as_slice()]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["AgentVersion"], "1.0 \"beta\"\n\u{1}");
        assert_eq!(body.len(), f.body_len([2]));
    }

    proptest! {
        #[test]
        fn body_len_predicts_assemble_exactly(
            version in ".{0,20}",
            events in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..20),
        ) {
            let f = frame(&version);
            let body = f.assemble(&events);
            prop_assert_eq!(body.len(), f.body_len(events.iter().map(Vec::len)));
            let slices: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(f.assemble(&slices), body);
        }
    }
}
