//! The organisation's revocation list as this daemon knows it: the newest
//! signed list it has heard (from the relay, or from a LAN peer that heard
//! it), kept in the store so it holds across restarts with no relay in
//! reach. Sessions consult it ([`RevocationBook`]): a LAN peer whose token
//! it names is refused at the handshake and dropped at the next ping, and
//! every session passes the list on to its peer, so a revocation crosses a
//! site LAN from whichever laptop met the relay.
//!
//! Record: `revoked/<org>` → the encoded [`Revocations`], written durably
//! when a newer list arrives.

use std::sync::{Arc, RwLock};

use sitesync_sync::Repo;
use sitesync_sync::credentials::{CredentialError, RevocationBook, Revocations, Token};
use uuid::Uuid;

fn record(org: &str) -> String {
    sitesync_sync::keys::revoked(org)
}

/// The daemon's revocation book for its own organisation.
pub struct Book {
    /// The organisation this daemon's token names and its key: the only
    /// lists kept are ones this key signed. `None` without a token.
    trusted: Option<(String, [u8; 32])>,
    held: RwLock<Option<Arc<Revocations>>>,
    repo: Arc<Repo>,
}

impl Book {
    /// The book of `token`'s organisation, with the list kept in `repo`
    /// (a damaged or foreign record is ignored: the next peer resends).
    pub fn open(repo: Arc<Repo>, token: Option<&Token>) -> Self {
        let trusted = token.map(|t| (t.cert().org().to_owned(), t.cert().org_key()));
        let held = trusted.as_ref().and_then(|(org, key)| {
            let bytes = repo.store().get_meta(&record(org)).ok().flatten()?;
            let list = Revocations::decode(&bytes).ok()?;
            list.verify(org, key).ok()?;
            Some(Arc::new(list))
        });
        Self {
            trusted,
            held: RwLock::new(held),
            repo,
        }
    }

    /// Keeps `list` when it is newer than the held one: durably first, so
    /// a revocation learnt is never forgotten by a crash.
    pub fn keep(&self, list: Revocations) {
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if held.as_ref().is_some_and(|h| h.version() >= list.version()) {
            return;
        }
        if let Err(e) = self.repo.store().put_meta(&record(list.org()), &list.encode()) {
            // Kept in memory all the same: it still protects this run, and
            // peers resend it after a restart.
            tracing::error!(error = %e, "cannot store the revocation list");
        }
        tracing::info!(
            org = list.org(),
            version = list.version(),
            revoked = list.len(),
            "revocation list updated"
        );
        *held = Some(Arc::new(list));
    }
}

impl RevocationBook for Book {
    fn latest(&self, org: &str) -> Option<Arc<Revocations>> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.as_ref().filter(|l| l.org() == org).cloned()
    }

    fn is_news(&self, list: &Revocations) -> Result<bool, CredentialError> {
        let Some((org, key)) = &self.trusted else {
            return Ok(false);
        };
        // The version first: a peer resending what is held (every peer
        // does, once per connection) costs no signature check.
        let newer = {
            let held = self.held.read().unwrap_or_else(|p| p.into_inner());
            held.as_ref().is_none_or(|h| h.version() < list.version())
        };
        if newer {
            list.verify(org, key)?;
        }
        Ok(newer)
    }

    fn is_revoked(&self, org: &str, token: Uuid) -> bool {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.as_ref().is_some_and(|l| l.org() == org && l.contains(token))
    }
}

#[cfg(test)]
mod tests {
    use sitesync_model::automerge::ActorId;
    use sitesync_sync::credentials::OrgKey;
    use sitesync_sync::{DocStore, MemBackend, RepoConfig};

    use super::*;

    fn repo() -> Arc<Repo> {
        Arc::new(Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        ))
    }

    /// Only lists the organisation key signed count; a newer one replaces
    /// an older one, never the reverse; what is kept survives a reopen.
    #[test]
    fn the_book_keeps_the_newest_list_its_organisation_signed() {
        let acme = OrgKey::from_secret("acme", [1; 32]);
        let token = acme.issue(Uuid::from_u128(1), &[], i64::MAX, [2; 32]);
        let repo = repo();
        let book = Book::open(repo.clone(), Some(&token));
        let (x, y) = (Uuid::from_u128(7), Uuid::from_u128(8));
        assert!(!book.is_revoked("acme", x));

        let one = Revocations::sign(&acme, 1, &[x]);
        assert_eq!(book.is_news(&one), Ok(true));
        book.keep(one.clone());
        assert!(book.is_revoked("acme", x) && !book.is_revoked("acme", y));
        assert_eq!(book.is_news(&one), Ok(false), "the same list again is not news");

        let forged = Revocations::sign(&OrgKey::from_secret("acme", [9; 32]), 5, &[x, y]);
        assert!(book.is_news(&forged).is_err());
        let other = Revocations::sign(&OrgKey::from_secret("globex", [1; 32]), 5, &[y]);
        assert!(book.is_news(&other).is_err());

        let two = Revocations::sign(&acme, 2, &[x, y]);
        book.keep(two);
        book.keep(one);
        assert!(book.is_revoked("acme", y), "an older list replaced a newer one");

        let reopened = Book::open(repo, Some(&token));
        assert!(reopened.is_revoked("acme", x) && reopened.is_revoked("acme", y));
        assert_eq!(reopened.latest("acme").map(|l| l.version()), Some(2));
    }
}
