//! Credentials, pure: organisation-signed device certificates, the tokens
//! that carry them, project scopes, and the handshake proofs built from them.
//! Keys, ids and the current time come in as parameters; reading and writing
//! key files is the relay's business (`sitesync-relay org`/`token`).
//!
//! A token is `{certificate, device secret key}` encoded as one string. The
//! certificate `{id, org, org public key, projects or all, expiry, device
//! public key}` is signed by the organisation key. In a handshake each side
//! presents only its certificate and signs both sides' fresh nonces with its
//! device key (a relay signs with the organisation key it holds), so nothing
//! sent on the wire can be replayed.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bincode::{Decode, Encode};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use uuid::Uuid;

/// Prefix of a token string, so a pasted secret of another kind is named as
/// such instead of failing somewhere in base64.
pub const TOKEN_PREFIX: &str = "sitesync1.";

/// Keying material of one TLS session, the same at both of its ends.
pub type Binding = [u8; 32];

/// What a handshake's proofs may rely on about the transport underneath.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Channel {
    /// The TLS session's [`Binding`]; `None` on plain `ws://`.
    pub binding: Option<Binding>,
    /// A client's verdict on the server's certificate: signed by a trusted
    /// root for the name dialled (`tls::Trust::Roots`). Without it, only a
    /// proof bound to `binding` is accepted.
    pub server_trusted: bool,
}

impl Channel {
    /// Plain `ws://`, or a side that signs without binding (a relay).
    pub const UNBOUND: Channel = Channel {
        binding: None,
        server_trusted: false,
    };
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("malformed credential: {detail}")]
    Malformed { detail: String },
    #[error("certificate of organization {found:?} is not trusted here (trusted: {trusted:?})")]
    WrongOrganization { trusted: String, found: String },
    #[error("organization {org:?} is unknown here")]
    UnknownOrganization { org: String },
    #[error("certificate signature does not verify against organization {org:?}'s key")]
    BadSignature { org: String },
    #[error("handshake proof does not verify: the peer does not hold the key it presented")]
    BadProof,
    #[error("token {id} expired at {expired_at_ms} (ms since epoch)")]
    Expired { id: Uuid, expired_at_ms: i64 },
    #[error("token {id} was revoked")]
    Revoked { id: Uuid },
    #[error(
        "the server's TLS certificate is not trusted and its handshake proof is not bound to this TLS \
         session: someone may sit between the two devices (or, for a relay, its CA is not trusted here: \
         pass --relay-ca)"
    )]
    UnboundProof,
}

/// Which projects a credential covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every project of the organisation.
    All,
    Only(BTreeSet<Uuid>),
}

impl Scope {
    pub fn contains(&self, project: Uuid) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(&project),
        }
    }

    /// What both sides may share.
    pub fn intersect(&self, other: &Scope) -> Scope {
        match (self, other) {
            (Self::All, s) | (s, Self::All) => s.clone(),
            (Self::Only(a), Self::Only(b)) => Self::Only(a.intersection(b).copied().collect()),
        }
    }
}

/// What the organisation signs.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
struct CertBody {
    id: [u8; 16],
    org: String,
    org_key: [u8; 32],
    /// `None`: every project of the organisation.
    projects: Option<Vec<[u8; 16]>>,
    expires_at_ms: i64,
    device_key: [u8; 32],
}

/// An organisation-signed device certificate: what a peer presents.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Certificate {
    body: CertBody,
    signature: [u8; 64],
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<65536>()
}

fn malformed(detail: impl std::fmt::Display) -> CredentialError {
    CredentialError::Malformed {
        detail: detail.to_string(),
    }
}

impl Certificate {
    /// The token id (what `token revoke` names).
    pub fn id(&self) -> Uuid {
        Uuid::from_bytes(self.body.id)
    }

    pub fn org(&self) -> &str {
        &self.body.org
    }

    pub fn org_key(&self) -> [u8; 32] {
        self.body.org_key
    }

    pub fn expires_at_ms(&self) -> i64 {
        self.body.expires_at_ms
    }

    pub fn scope(&self) -> Scope {
        match &self.body.projects {
            None => Scope::All,
            Some(ps) => Scope::Only(ps.iter().map(|p| Uuid::from_bytes(*p)).collect()),
        }
    }

    fn device_key(&self) -> Result<VerifyingKey, CredentialError> {
        VerifyingKey::from_bytes(&self.body.device_key).map_err(malformed)
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode_config()).expect("certificates always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CredentialError> {
        let (cert, used) = bincode::decode_from_slice(bytes, bincode_config()).map_err(malformed)?;
        if used != bytes.len() {
            return Err(malformed("trailing bytes after the certificate"));
        }
        Ok(cert)
    }

    /// Checks that `org_key` signed this certificate and that it has not
    /// expired at `now_ms`. Revocation is the caller's list to consult.
    pub fn verify(&self, org: &str, org_key: &[u8; 32], now_ms: i64) -> Result<(), CredentialError> {
        if self.body.org != org || &self.body.org_key != org_key {
            return Err(CredentialError::WrongOrganization {
                trusted: org.to_owned(),
                found: self.body.org.clone(),
            });
        }
        let key = VerifyingKey::from_bytes(org_key).map_err(malformed)?;
        let body = bincode::encode_to_vec(&self.body, bincode_config()).expect("encodes");
        key.verify(&body, &Signature::from_bytes(&self.signature))
            .map_err(|_| CredentialError::BadSignature {
                org: self.body.org.clone(),
            })?;
        if now_ms >= self.body.expires_at_ms {
            return Err(CredentialError::Expired {
                id: self.id(),
                expired_at_ms: self.body.expires_at_ms,
            });
        }
        Ok(())
    }

    /// Checks a handshake proof made with this certificate's device key.
    pub fn check_proof(&self, transcript: &[u8], proof: &[u8]) -> Result<(), CredentialError> {
        check_proof(&self.device_key()?, transcript, proof)
    }
}

/// Checks `proof` is `key`'s signature of `transcript`.
pub fn check_proof(key: &VerifyingKey, transcript: &[u8], proof: &[u8]) -> Result<(), CredentialError> {
    let sig: [u8; 64] = proof.try_into().map_err(|_| CredentialError::BadProof)?;
    key.verify(transcript, &Signature::from_bytes(&sig))
        .map_err(|_| CredentialError::BadProof)
}

/// What each side signs in a handshake: a label for its role and both fresh
/// nonces, so a proof is good for this one conversation only, and the TLS
/// session's binding when the side binds ([`crate::tls`]), so it is good
/// on this one TLS session only. Bound and unbound transcripts differ in
/// their label, so neither can pass for the other.
pub fn transcript(
    role: &str,
    client_nonce: &[u8; 32],
    server_nonce: &[u8; 32],
    binding: Option<&[u8; 32]>,
) -> Vec<u8> {
    let kind = if binding.is_some() { "v1-bound" } else { "v1" };
    let mut t = format!("sitesync/handshake/{kind}/{role}/").into_bytes();
    t.extend_from_slice(client_nonce);
    t.extend_from_slice(server_nonce);
    if let Some(b) = binding {
        t.extend_from_slice(b);
    }
    t
}

/// An organisation's signing key.
pub struct OrgKey {
    pub name: String,
    key: SigningKey,
}

impl OrgKey {
    /// `secret` must be 32 random bytes from a cryptographic RNG.
    pub fn from_secret(name: &str, secret: [u8; 32]) -> Self {
        Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&secret),
        }
    }

    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Issues a token for a new device key (`device_secret`: 32 random
    /// bytes), covering `projects` (empty: all) until `expires_at_ms`.
    pub fn issue(&self, id: Uuid, projects: &[Uuid], expires_at_ms: i64, device_secret: [u8; 32]) -> Token {
        let device = SigningKey::from_bytes(&device_secret);
        let body = CertBody {
            id: *id.as_bytes(),
            org: self.name.clone(),
            org_key: self.public(),
            projects: (!projects.is_empty()).then(|| projects.iter().map(|p| *p.as_bytes()).collect()),
            expires_at_ms,
            device_key: device.verifying_key().to_bytes(),
        };
        let bytes = bincode::encode_to_vec(&body, bincode_config()).expect("encodes");
        let signature = self.key.sign(&bytes).to_bytes();
        Token {
            cert: Certificate { body, signature },
            device_secret,
        }
    }
}

/// A device's token: its certificate and the device secret key.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
pub struct Token {
    cert: Certificate,
    device_secret: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret half.
        f.debug_struct("Token")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub fn cert(&self) -> &Certificate {
        &self.cert
    }

    /// Signs a handshake transcript with the device key.
    pub fn sign(&self, transcript: &[u8]) -> Vec<u8> {
        SigningKey::from_bytes(&self.device_secret)
            .sign(transcript)
            .to_bytes()
            .to_vec()
    }

    /// The token as one URL-safe string.
    pub fn encode(&self) -> String {
        let bytes = bincode::encode_to_vec(self, bincode_config()).expect("tokens always encode");
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a token string (surrounding whitespace allowed, as from a file).
    pub fn parse(s: &str) -> Result<Self, CredentialError> {
        let s = s.trim();
        let rest = s
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| malformed(format!("a sitesync token starts with {TOKEN_PREFIX:?}")))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(rest)
            .map_err(|e| malformed(format!("token is not base64url: {e}")))?;
        let (token, used): (Token, usize) =
            bincode::decode_from_slice(&bytes, bincode_config()).map_err(malformed)?;
        if used != bytes.len() {
            return Err(malformed("trailing bytes after the token"));
        }
        let device = SigningKey::from_bytes(&token.device_secret);
        if device.verifying_key().to_bytes() != token.cert.body.device_key {
            return Err(malformed("the device key does not match the certificate"));
        }
        Ok(token)
    }
}

/// What a server answers an admitted peer with.
pub struct Admission {
    /// The certificate this side presents (empty for a relay, which proves
    /// itself with the organisation key instead).
    pub presented: Vec<u8>,
    /// Signs this side's handshake proof.
    pub signer: SigningKey,
    /// What this side may share with the peer (before intersecting with the
    /// peer's own scope).
    pub scope: Scope,
}

/// Who a server trusts: checks a client's certificate and says how to answer.
pub trait Authority: Send + Sync {
    fn admit(&self, cert: &Certificate, now_ms: i64) -> Result<Admission, CredentialError>;
}

/// A daemon trusts exactly the organisation its own token names.
impl Authority for Token {
    fn admit(&self, cert: &Certificate, now_ms: i64) -> Result<Admission, CredentialError> {
        cert.verify(self.cert.org(), &self.cert.org_key(), now_ms)?;
        Ok(Admission {
            presented: self.cert.encode(),
            signer: SigningKey::from_bytes(&self.device_secret),
            scope: self.cert.scope(),
        })
    }
}

impl OrgKey {
    /// Admits a device of this organisation as a relay does: the relay holds
    /// the organisation key, presents no certificate, proves itself with the
    /// organisation key, and may share any of the organisation's projects.
    /// Revocation is checked by the caller, who holds the list.
    pub fn admit(&self, cert: &Certificate, now_ms: i64) -> Result<Admission, CredentialError> {
        cert.verify(&self.name, &self.public(), now_ms)?;
        Ok(Admission {
            presented: Vec::new(),
            signer: self.key.clone(),
            scope: Scope::All,
        })
    }
}

/// Checks what a server presented, from the client's side: either a peer
/// device's certificate of our organisation, or (empty) a relay proving
/// itself with our organisation's key. Returns the server's scope.
pub fn check_server(
    token: &Token,
    presented: &[u8],
    transcript: &[u8],
    proof: &[u8],
    now_ms: i64,
) -> Result<Scope, CredentialError> {
    if presented.is_empty() {
        let org_key = VerifyingKey::from_bytes(&token.cert.org_key()).map_err(malformed)?;
        check_proof(&org_key, transcript, proof)?;
        return Ok(Scope::All);
    }
    let cert = Certificate::decode(presented)?;
    cert.verify(token.cert.org(), &token.cert.org_key(), now_ms)?;
    cert.check_proof(transcript, proof)?;
    Ok(cert.scope())
}

/// Most token ids one revocation list may name: a list travels in one
/// frame (16 bytes an id), and an organisation that revokes more than this
/// should rotate its key.
pub const MAX_REVOKED: usize = 100_000;

/// What the organisation signs in a revocation list.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
struct RevocationBody {
    org: String,
    /// How many revocations the organisation has made: lists only grow, so
    /// a higher version holds every id of a lower one.
    version: u64,
    /// Sorted, for lookups.
    revoked: Vec<[u8; 16]>,
}

/// An organisation's revoked tokens, signed by its key. The relay (which
/// holds the key) makes it; devices keep the newest they have heard and
/// pass it on to LAN peers of their organisation, which check it against
/// the organisation key in their own certificate. So a revocation reaches a
/// laptop that never meets the relay, through any that did.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Revocations {
    body: RevocationBody,
    signature: [u8; 64],
}

fn revocations_config() -> impl bincode::config::Config {
    // The ids, the organisation name and the signature, with room.
    bincode::config::standard().with_limit::<{ MAX_REVOKED * 17 + 4096 }>()
}

impl Revocations {
    /// Signs the list of `revoked` token ids as version `version`.
    pub fn sign(org: &OrgKey, version: u64, revoked: &[Uuid]) -> Self {
        let mut ids: Vec<[u8; 16]> = revoked.iter().map(|u| *u.as_bytes()).collect();
        ids.sort_unstable();
        ids.dedup();
        let body = RevocationBody {
            org: org.name.clone(),
            version,
            revoked: ids,
        };
        let bytes = bincode::encode_to_vec(&body, revocations_config()).expect("encodes");
        Self {
            signature: org.key.sign(&bytes).to_bytes(),
            body,
        }
    }

    pub fn org(&self) -> &str {
        &self.body.org
    }

    pub fn version(&self) -> u64 {
        self.body.version
    }

    pub fn len(&self) -> usize {
        self.body.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.revoked.is_empty()
    }

    pub fn contains(&self, token: Uuid) -> bool {
        self.body.revoked.binary_search(token.as_bytes()).is_ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, revocations_config()).expect("lists always encode")
    }

    /// Decodes a list within [`MAX_REVOKED`] ids, sorted, with nothing
    /// after it. Its signature is [`Self::verify`]'s business.
    pub fn decode(bytes: &[u8]) -> Result<Self, CredentialError> {
        let (list, used): (Self, usize) =
            bincode::decode_from_slice(bytes, revocations_config()).map_err(malformed)?;
        if used != bytes.len() {
            return Err(malformed("trailing bytes after the revocation list"));
        }
        if list.body.revoked.len() > MAX_REVOKED {
            return Err(malformed(format!(
                "a revocation list of {} ids (at most {MAX_REVOKED})",
                list.body.revoked.len()
            )));
        }
        if !list.body.revoked.is_sorted() {
            return Err(malformed("the revocation list is not sorted"));
        }
        Ok(list)
    }

    /// Checks that `org_key`, organisation `org`'s, signed this list.
    pub fn verify(&self, org: &str, org_key: &[u8; 32]) -> Result<(), CredentialError> {
        if self.body.org != org {
            return Err(CredentialError::WrongOrganization {
                trusted: org.to_owned(),
                found: self.body.org.clone(),
            });
        }
        let key = VerifyingKey::from_bytes(org_key).map_err(malformed)?;
        let body = bincode::encode_to_vec(&self.body, revocations_config()).expect("encodes");
        key.verify(&body, &Signature::from_bytes(&self.signature))
            .map_err(|_| CredentialError::BadSignature {
                org: self.body.org.clone(),
            })
    }
}

/// What one side knows of revocations: the newest list it holds per
/// organisation. The session sends it to every peer of that organisation
/// (after the handshake and whenever it grows), refuses and drops peers
/// whose token it names, and reports a newer list a peer sent
/// ([`crate::session::Event::Revocations`]) for the side to keep.
pub trait RevocationBook: Send + Sync {
    /// The newest list held for `org`. Shared, not copied: sessions ask at
    /// every ping, and a list may hold 100,000 ids.
    fn latest(&self, org: &str) -> Option<std::sync::Arc<Revocations>>;

    /// Whether a list a peer sent should be kept: `Ok(true)` when it is
    /// newer than the held one, an error when it is not signed by the key
    /// this side trusts for its organisation. A relay, the lists' source,
    /// keeps none.
    fn is_news(&self, list: &Revocations) -> Result<bool, CredentialError>;

    /// Whether `token` of `org` is revoked, as far as this side knows.
    fn is_revoked(&self, org: &str, token: Uuid) -> bool {
        self.latest(org).is_some_and(|l| l.contains(token))
    }
}

/// The key a side keeps a peer's bookkeeping under (its sync states, its
/// status entry): the device id the peer claims, bound to the token it
/// proved (`token_id`; none for a relay, which proves the organisation
/// key). A device cannot claim another's id to overwrite its sync state:
/// with another token, the same claimed id is another key.
pub fn peer_key(token_id: Option<Uuid>, device: Uuid) -> Uuid {
    use sha2::Digest as _;
    let Some(token) = token_id else { return device };
    let mut h = sha2::Sha256::new();
    h.update(b"sitesync peer key v1");
    h.update(token.as_bytes());
    h.update(device.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn org(name: &str, seed: u8) -> OrgKey {
        OrgKey::from_secret(name, [seed; 32])
    }

    #[test]
    fn a_token_round_trips_as_a_string_and_verifies() {
        let acme = org("acme", 1);
        let p = Uuid::from_u128(7);
        let token = acme.issue(Uuid::from_u128(1), &[p], NOW + 1000, [9; 32]);
        let s = token.encode();
        assert!(s.starts_with(TOKEN_PREFIX));
        let back = Token::parse(&format!("  {s}\n")).unwrap();
        assert_eq!(back, token);
        back.cert().verify("acme", &acme.public(), NOW).unwrap();
        assert_eq!(back.cert().scope(), Scope::Only([p].into()));
        assert_eq!(
            acme.issue(Uuid::from_u128(2), &[], NOW + 1, [8; 32])
                .cert()
                .scope(),
            Scope::All
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let acme = org("acme", 1);
        let other = org("other", 2);
        let token = other.issue(Uuid::from_u128(1), &[], NOW + 1000, [9; 32]);
        assert!(matches!(
            token.cert().verify("acme", &acme.public(), NOW),
            Err(CredentialError::WrongOrganization { .. })
        ));
        // Same name, different key: a forged organisation.
        let forged = OrgKey::from_secret("acme", [3; 32]).issue(Uuid::from_u128(1), &[], NOW + 1000, [9; 32]);
        assert!(matches!(
            forged.cert().verify("acme", &acme.public(), NOW),
            Err(CredentialError::WrongOrganization { .. })
        ));
        let expired = acme.issue(Uuid::from_u128(1), &[], NOW, [9; 32]);
        assert!(matches!(
            expired.cert().verify("acme", &acme.public(), NOW),
            Err(CredentialError::Expired { .. })
        ));
        let mut tampered = acme.issue(Uuid::from_u128(1), &[Uuid::from_u128(5)], NOW + 1000, [9; 32]);
        tampered.cert.body.projects = None; // widen the scope without the org key
        assert_eq!(
            tampered.cert().verify("acme", &acme.public(), NOW),
            Err(CredentialError::BadSignature { org: "acme".into() })
        );
        for bad in ["", "hello", "sitesync1.!!!", "sitesync1.AAAA"] {
            assert!(
                matches!(Token::parse(bad), Err(CredentialError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn proofs_bind_both_nonces_and_the_key() {
        let acme = org("acme", 1);
        let a = acme.issue(Uuid::from_u128(1), &[], NOW + 1000, [9; 32]);
        let b = acme.issue(Uuid::from_u128(2), &[], NOW + 1000, [8; 32]);
        let t = transcript("server", &[1; 32], &[2; 32], None);
        let proof = b.sign(&t);
        // A client holding `a` checks the LAN peer `b`.
        assert_eq!(
            check_server(&a, &b.cert().encode(), &t, &proof, NOW),
            Ok(Scope::All)
        );
        let other_nonce = transcript("server", &[1; 32], &[3; 32], None);
        assert_eq!(
            check_server(&a, &b.cert().encode(), &other_nonce, &proof, NOW),
            Err(CredentialError::BadProof)
        );
        // A relay proves itself with the organisation key.
        let relay_proof = acme.signing_key().sign(&t).to_bytes();
        assert_eq!(check_server(&a, &[], &t, &relay_proof, NOW), Ok(Scope::All));
        assert_eq!(
            check_server(&a, &[], &t, &proof, NOW),
            Err(CredentialError::BadProof)
        );
    }

    #[test]
    fn scopes_intersect() {
        let p = |n| Uuid::from_u128(n);
        let only = |ns: &[u128]| Scope::Only(ns.iter().map(|n| p(*n)).collect());
        assert_eq!(Scope::All.intersect(&Scope::All), Scope::All);
        assert_eq!(Scope::All.intersect(&only(&[1])), only(&[1]));
        assert_eq!(only(&[1, 2]).intersect(&only(&[2, 3])), only(&[2]));
        assert!(!only(&[1]).contains(p(2)));
    }
}
