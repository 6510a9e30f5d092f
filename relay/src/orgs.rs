//! Organisations on disk: `<data-dir>/orgs/<name>/key` (the ed25519 signing
//! key, mode 0600) and `<data-dir>/orgs/<name>/revoked` (one revoked token id
//! per line). Plain files, not sled, so `org create`, `token create` and
//! `token revoke` work while `serve` runs; `serve` re-reads them at every
//! handshake and on every ping tick of a live connection.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sitesync_sync::credentials::{
    Admission, Authority, Certificate, CredentialError, OrgKey, RevocationBook, Revocations,
};
use uuid::Uuid;

/// Why an organisation file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("organization name {name:?} is invalid: use 1-64 letters, digits, '-' or '_'")]
    BadName { name: String },
    #[error("organization {name:?} already exists in {dir}")]
    Exists { name: String, dir: String },
    #[error("organization {name:?} does not exist in {dir} (create it with `sitesync-relay org create`)")]
    Unknown { name: String, dir: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is damaged: {detail}")]
    Corrupt { path: String, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OrgError + '_ {
    move |source| OrgError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The organisations of one relay data directory.
pub struct Orgs {
    dir: PathBuf,
    /// Each organisation's signed revocation list, with the length of the
    /// `revoked` file it was made from: sessions ask at every ping, and
    /// the file only grows, so an unchanged length means an unchanged list
    /// (one `stat` instead of reading the file and signing again).
    signed: Mutex<HashMap<String, (u64, Arc<Revocations>)>>,
}

impl Orgs {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("orgs"),
            signed: Mutex::new(HashMap::new()),
        }
    }

    fn org_dir(&self, name: &str) -> Result<PathBuf, OrgError> {
        if !valid_name(name) {
            return Err(OrgError::BadName { name: name.into() });
        }
        Ok(self.dir.join(name))
    }

    /// Creates an organisation with the signing key `secret` (32 random
    /// bytes). Refuses to overwrite one.
    pub fn create(&self, name: &str, secret: [u8; 32]) -> Result<OrgKey, OrgError> {
        let dir = self.org_dir(name)?;
        if dir.join("key").exists() {
            return Err(OrgError::Exists {
                name: name.into(),
                dir: self.dir.display().to_string(),
            });
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        restrict(&self.dir, 0o700)?;
        restrict(&dir, 0o700)?;
        // Write then rename, so a reader never sees half a key.
        let tmp = dir.join("key.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            restrict(&tmp, 0o600)?;
            writeln!(f, "{}", URL_SAFE_NO_PAD.encode(secret)).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        let key = dir.join("key");
        std::fs::rename(&tmp, &key).map_err(io(&key))?;
        Ok(OrgKey::from_secret(name, secret))
    }

    /// Loads an organisation's signing key.
    pub fn load(&self, name: &str) -> Result<OrgKey, OrgError> {
        let path = self.org_dir(name)?.join("key");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OrgError::Unknown {
                    name: name.into(),
                    dir: self.dir.display().to_string(),
                });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let corrupt = |detail: String| OrgError::Corrupt {
            path: path.display().to_string(),
            detail,
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| corrupt(e.to_string()))?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| corrupt(format!("{} bytes, expected 32", b.len())))?;
        Ok(OrgKey::from_secret(name, secret))
    }

    /// Revokes a token of `org`: connections using it are dropped and it is
    /// refused from now on.
    pub fn revoke(&self, org: &str, token: Uuid) -> Result<(), OrgError> {
        self.load(org)?;
        let path = self.org_dir(org)?.join("revoked");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        writeln!(f, "{token}").map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    }

    pub fn is_revoked(&self, org: &str, token: Uuid) -> Result<bool, OrgError> {
        Ok(self.revocations(org)?.is_some_and(|l| l.contains(token)))
    }

    /// The organisation's revocation list, signed with its key, for devices
    /// to keep and pass on to LAN peers; `None` while nothing is revoked.
    /// Its version is the number of revocations made (a token revoked
    /// twice counts twice): the file only grows.
    pub fn revocations(&self, org: &str) -> Result<Option<Arc<Revocations>>, OrgError> {
        let path = self.org_dir(org)?.join("revoked");
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made_from, list)) = signed.get(org)
            && *made_from == len
        {
            return Ok(Some(list.clone()));
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let revoked: Vec<Uuid> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if revoked.is_empty() {
            return Ok(None);
        }
        let key = self.load(org)?;
        let list = Arc::new(Revocations::sign(&key, revoked.len() as u64, &revoked));
        // The length read before the text: a revocation appended between
        // the two is signed now and signed again at the next call.
        signed.insert(org.to_owned(), (len, list.clone()));
        Ok(Some(list))
    }
}

/// An organisation name: 1–64 letters, digits, '-' or '_', so it is safe
/// as a directory name (`orgs/<name>`, `spaces/<name>`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn restrict(path: &Path, mode: u32) -> Result<(), OrgError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))?;
    }
    let _ = (path, mode);
    Ok(())
}

/// The relay admits a device whose certificate its organisation signed,
/// unless the token was revoked.
impl Authority for Orgs {
    fn admit(&self, cert: &Certificate, now_ms: i64) -> Result<Admission, CredentialError> {
        let org = self.load(cert.org()).map_err(|e| match e {
            OrgError::Unknown { name, .. } | OrgError::BadName { name } => {
                CredentialError::UnknownOrganization { org: name }
            }
            other => {
                tracing::error!(error = %other, "cannot read organization key");
                CredentialError::UnknownOrganization {
                    org: cert.org().to_owned(),
                }
            }
        })?;
        if self.is_revoked(cert.org(), cert.id()).unwrap_or(true) {
            return Err(CredentialError::Revoked { id: cert.id() });
        }
        org.admit(cert, now_ms)
    }
}

/// The relay is where revocations start: it hands every device of an
/// organisation the signed list, and keeps none from devices.
impl RevocationBook for Orgs {
    fn latest(&self, org: &str) -> Option<Arc<Revocations>> {
        self.revocations(org).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the revocation list");
            None
        })
    }

    fn is_news(&self, _list: &Revocations) -> Result<bool, CredentialError> {
        Ok(false)
    }

    fn is_revoked(&self, org: &str, token: Uuid) -> bool {
        // A list that cannot be read refuses rather than admits.
        Orgs::is_revoked(self, org, token).unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let orgs = Orgs::new(dir.path());
        let org = orgs.create("acme", [5; 32]).unwrap();
        assert!(matches!(
            orgs.create("acme", [6; 32]),
            Err(OrgError::Exists { .. })
        ));
        assert!(matches!(
            orgs.create("../x", [6; 32]),
            Err(OrgError::BadName { .. })
        ));
        assert!(matches!(orgs.load("nope"), Err(OrgError::Unknown { .. })));
        assert_eq!(orgs.load("acme").unwrap().public(), org.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("orgs/acme/key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let now = 1_800_000_000_000;
        let token = org.issue(Uuid::from_u128(3), &[], now + 1000, [7; 32]);
        assert!(orgs.admit(token.cert(), now).is_ok());
        orgs.revoke("acme", Uuid::from_u128(3)).unwrap();
        assert!(orgs.is_revoked("acme", Uuid::from_u128(3)).unwrap());
        assert_eq!(
            orgs.admit(token.cert(), now).err(),
            Some(CredentialError::Revoked {
                id: Uuid::from_u128(3)
            })
        );
        let list = orgs.revocations("acme").unwrap().unwrap();
        list.verify("acme", &org.public()).unwrap();
        assert_eq!(list.version(), 1);
        assert!(list.contains(Uuid::from_u128(3)));
        // Asked again with nothing revoked since: the same list, not a new
        // signature; a revocation makes the next one.
        assert!(Arc::ptr_eq(&list, &orgs.revocations("acme").unwrap().unwrap()));
        orgs.revoke("acme", Uuid::from_u128(4)).unwrap();
        let grown = orgs.revocations("acme").unwrap().unwrap();
        assert_eq!(grown.version(), 2);
        assert!(grown.contains(Uuid::from_u128(4)) && grown.contains(Uuid::from_u128(3)));
        let stranger =
            OrgKey::from_secret("stranger", [1; 32]).issue(Uuid::from_u128(4), &[], now + 1000, [7; 32]);
        assert!(matches!(
            orgs.admit(stranger.cert(), now),
            Err(CredentialError::UnknownOrganization { .. })
        ));
    }
}
