//! The wire protocol's messages and framing, sans IO: bytes in, messages
//! out, and back. One WebSocket binary frame carries one bincode-encoded
//! [`Frame`], a versioned enum, so a peer speaking a newer version is told so
//! clearly instead of being misread.
//!
//! Conversation (docs/protocol.md):
//!
//! ```text
//! A ── Hello{version, peer, device name, certificate, nonce} ──▶ B
//! A ◀── Welcome{peer, name, certificate, nonce, proof} / Error ── B
//! A ── Auth{proof} ──▶ B                    (both sides now proven)
//! A ◀─▶ Summary{project, doc → heads}       the subscription: every shared
//!                                           project; only docs that differ go on
//! A ◀─▶ Sync{doc, Automerge sync message}   per document
//! A ◀── Ack{doc, heads made durable}        "pending" counts what is unacked
//! A ◀─▶ Presence, Ping/Pong, Revocations  the organisation's signed list
//! ```
//!
//! The protocol version is the frame's variant ([`Frame::V1`]), so it is on
//! every frame, the Hello included. This module owns only the shapes and the
//! byte format; [`crate::session`] drives them.

use bincode::{Decode, Encode};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame accepted: a whole drawing document's first sync fits with
/// room to spare; anything larger is refused before decoding.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A 16-byte id (project, document, device, peer) as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct WireId(pub [u8; 16]);

impl From<uuid::Uuid> for WireId {
    fn from(u: uuid::Uuid) -> Self {
        Self(*u.as_bytes())
    }
}

impl From<WireId> for uuid::Uuid {
    fn from(w: WireId) -> Self {
        uuid::Uuid::from_bytes(w.0)
    }
}

/// An Automerge change hash as it travels.
pub type Head = [u8; 32];

/// Someone viewing or editing a component; relayed, never stored.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct PresenceEntry {
    pub project: WireId,
    pub component: Option<WireId>,
    pub user: String,
    pub device: WireId,
    /// 0 viewing, 1 editing.
    pub activity: u8,
    /// The origin device's heartbeat number, strictly increasing per
    /// device: a node passes an entry on only when it is newer than the
    /// last it heard for the same (project, device, user), so a loop of
    /// peers carries each heartbeat once ([`crate::presence`]).
    pub seq: u64,
}

/// The messages of protocol version 1.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum Message {
    /// Opens a connection: who I am and the credential I present (the
    /// organisation-signed certificate and a signature over the nonces).
    Hello {
        peer: WireId,
        device_name: String,
        credentials: Vec<u8>,
        nonce: [u8; 32],
    },
    /// Accepts a Hello: who this side is, the certificate it presents (empty
    /// from a relay, which proves itself with the organisation key), its
    /// nonce and its proof over both nonces. Nothing about what this side
    /// holds: the client has not proved its key yet (a captured certificate
    /// replayed in a Hello must learn nothing), so the shared projects come
    /// as Summaries after its Auth.
    Welcome {
        peer: WireId,
        device_name: String,
        credentials: Vec<u8>,
        nonce: [u8; 32],
        proof: Vec<u8>,
    },
    /// The client's proof over both nonces; nothing else is accepted first.
    Auth {
        proof: Vec<u8>,
    },
    /// Document id → heads of one shared project, so only documents that
    /// differ run Automerge's sync. Sent for every shared project after the
    /// handshake (this is the subscription) and again after a lag.
    Summary {
        project: WireId,
        docs: Vec<(WireId, Vec<Head>)>,
    },
    /// One Automerge sync message for one document of a project.
    Sync {
        project: WireId,
        doc: WireId,
        message: Vec<u8>,
    },
    /// The receiver has made these heads of `doc` durable.
    Ack {
        doc: WireId,
        heads: Vec<Head>,
    },
    Presence(PresenceEntry),
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// The organisation's signed revocation list
    /// ([`crate::credentials::Revocations`], encoded), sent after the
    /// handshake and whenever the sender's grows, so revocations reach LAN
    /// peers that never meet the relay.
    Revocations {
        list: Vec<u8>,
    },
    /// A refusal or failure; the sender closes after it when `fatal`.
    Error {
        code: String,
        message: String,
        fatal: bool,
    },
}

/// What travels in one frame: the protocol version, then its message. A
/// newer peer adds a variant; this build refuses it by version, clearly.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum Frame {
    V1(Message),
}

/// Why a frame could not be read. The connection that sent it is closed with
/// this reason; nothing else is affected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("frame is from a newer protocol (this build speaks version {PROTOCOL_VERSION})")]
    UnsupportedVersion,
    #[error("malformed frame: {detail}")]
    Malformed { detail: String },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes a message as one frame of the current version.
pub fn encode(message: &Message) -> Vec<u8> {
    bincode::encode_to_vec(Frame::V1(message.clone()), config()).expect("messages always encode")
}

/// Decodes one frame, refusing oversized, unknown-version, malformed and
/// trailing-garbage input.
pub fn decode(bytes: &[u8]) -> Result<Message, FrameError> {
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            max: MAX_FRAME,
        });
    }
    // The version is the enum's variant index, the frame's first varint.
    let version_tag: Result<(u32, usize), _> = bincode::decode_from_slice(bytes, config());
    if let Ok((tag, _)) = version_tag
        && tag as usize >= 1
    {
        return Err(FrameError::UnsupportedVersion);
    }
    let (frame, used): (Frame, usize) =
        bincode::decode_from_slice(bytes, config()).map_err(|e| FrameError::Malformed {
            detail: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(FrameError::Malformed {
            detail: format!("{} bytes after the message", bytes.len() - used),
        });
    }
    let Frame::V1(message) = frame;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> WireId {
        WireId([n; 16])
    }

    fn every_message() -> Vec<Message> {
        vec![
            Message::Hello {
                peer: id(1),
                device_name: "laptop-7".into(),
                credentials: vec![1, 2, 3],
                nonce: [9; 32],
            },
            Message::Welcome {
                peer: id(9),
                device_name: "relay".into(),
                credentials: vec![],
                nonce: [8; 32],
                proof: vec![4; 64],
            },
            Message::Auth { proof: vec![5; 64] },
            Message::Summary {
                project: id(2),
                docs: vec![(id(4), vec![[1; 32], [2; 32]]), (id(5), vec![])],
            },
            Message::Sync {
                project: id(2),
                doc: id(4),
                message: vec![0x42; 1000],
            },
            Message::Ack {
                doc: id(4),
                heads: vec![[3; 32]],
            },
            Message::Presence(PresenceEntry {
                project: id(2),
                component: Some(id(6)),
                user: "ana".into(),
                device: id(1),
                activity: 1,
                seq: 1_800_000_000_000,
            }),
            Message::Ping { nonce: 7 },
            Message::Pong { nonce: 7 },
            Message::Revocations { list: vec![6; 90] },
            Message::Error {
                code: "unsupported_version".into(),
                message: "speak version 1".into(),
                fatal: true,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in every_message() {
            assert_eq!(decode(&encode(&m)), Ok(m));
        }
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        assert!(matches!(decode(&[]), Err(FrameError::Malformed { .. })));
        assert!(matches!(
            decode(&[0, 250, 1, 2]),
            Err(FrameError::Malformed { .. })
        ));
        // A frame from version 2 (variant index 1).
        assert_eq!(decode(&[1, 0, 0]), Err(FrameError::UnsupportedVersion));
        let mut trailing = encode(&Message::Ping { nonce: 1 });
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(FrameError::Malformed { .. })));
        let huge = vec![0u8; MAX_FRAME + 1];
        assert!(matches!(decode(&huge), Err(FrameError::TooLarge { .. })));
        // A length prefix claiming more than the limit is refused, not allocated.
        let mut lying = vec![0u8, 4]; // V1, Sync
        lying.extend_from_slice(&[0; 16]);
        lying.extend_from_slice(&[0; 16]);
        lying.extend_from_slice(&[253, 0, 0, 0, 0, 0, 0, 0, 1]); // u64 length 2^56
        assert!(matches!(decode(&lying), Err(FrameError::Malformed { .. })));
    }

    #[test]
    fn uuids_travel_as_their_bytes() {
        let u = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(uuid::Uuid::from(WireId::from(u)), u);
    }
}
