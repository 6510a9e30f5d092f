//! Signing in to the field app without ever showing the API token: the
//! daemon hands out one-time login codes (printed at start in a URL, or by
//! `sitesync-daemon open`), and a browser trades one for a session, kept
//! in an `HttpOnly` cookie ([`crate::api::app`]). Pure: the time and the random
//! bytes come in as parameters.
//!
//! A code works once and for [`CODE_TTL_MS`]; a session lasts
//! [`SESSION_IDLE_MS`] from its last use, or until signed out. Both are
//! bounded ([`MAX_CODES`], [`MAX_SESSIONS`]; the oldest give way), so
//! asking for codes in a loop grows nothing.

use std::collections::HashMap;

use rand::RngCore;

/// How long a login code works: long enough to click the printed link,
/// short enough that one read off a screen later is useless.
pub const CODE_TTL_MS: i64 = 5 * 60_000;
/// A session ends after this long unused: a shift, so a laptop left signed
/// in overnight asks again in the morning.
pub const SESSION_IDLE_MS: i64 = 12 * 3_600_000;
/// Codes kept at once (used ones too, so a second use is told apart).
pub const MAX_CODES: usize = 64;
/// Sessions kept at once (browsers, tabs share one).
pub const MAX_SESSIONS: usize = 256;

/// Why a login code opened no session. None of these is retried: the user
/// needs a new link.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("this sign-in link was already used; run `sitesync-daemon open` for a new one")]
    Used,
    #[error("this sign-in link expired (links work for 5 minutes); run `sitesync-daemon open` for a new one")]
    Expired,
    #[error("this sign-in link is not one this daemon gave; run `sitesync-daemon open` for a new one")]
    Unknown,
}

impl LoginError {
    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Used => "login_code_used",
            Self::Expired => "login_code_expired",
            Self::Unknown => "login_code_unknown",
        }
    }
}

struct Code {
    issued_ms: i64,
    used: bool,
}

/// The login codes given out and the sessions they opened.
#[derive(Default)]
pub struct Logins {
    codes: HashMap<String, Code>,
    /// Session id → its last use.
    sessions: HashMap<String, i64>,
}

/// 32 random bytes as hex: unguessable, and safe in a URL and a cookie.
fn secret(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes the entry with the smallest `key` from `map` while it holds
/// `max` or more.
fn make_room<V>(map: &mut HashMap<String, V>, max: usize, key: impl Fn(&V) -> i64) {
    while map.len() >= max {
        let Some(oldest) = map.iter().min_by_key(|(_, v)| key(v)).map(|(k, _)| k.clone()) else {
            return;
        };
        map.remove(&oldest);
    }
}

impl Logins {
    /// A new one-time code, valid for [`CODE_TTL_MS`] from `now_ms`.
    pub fn issue(&mut self, now_ms: i64, rng: &mut impl RngCore) -> String {
        self.codes.retain(|_, c| now_ms - c.issued_ms < CODE_TTL_MS);
        make_room(&mut self.codes, MAX_CODES, |c| c.issued_ms);
        let code = secret(rng);
        self.codes.insert(
            code.clone(),
            Code {
                issued_ms: now_ms,
                used: false,
            },
        );
        code
    }

    /// Trades `code` for a new session id; the code never works again.
    pub fn redeem(&mut self, code: &str, now_ms: i64, rng: &mut impl RngCore) -> Result<String, LoginError> {
        let entry = self.codes.get_mut(code).ok_or(LoginError::Unknown)?;
        if entry.used {
            return Err(LoginError::Used);
        }
        if now_ms - entry.issued_ms >= CODE_TTL_MS {
            self.codes.remove(code);
            return Err(LoginError::Expired);
        }
        entry.used = true;
        self.sessions.retain(|_, last| now_ms - *last < SESSION_IDLE_MS);
        make_room(&mut self.sessions, MAX_SESSIONS, |last| *last);
        let session = secret(rng);
        self.sessions.insert(session.clone(), now_ms);
        Ok(session)
    }

    /// Whether `session` is signed in at `now_ms`; a use keeps it alive.
    pub fn touch(&mut self, session: &str, now_ms: i64) -> bool {
        match self.sessions.get_mut(session) {
            Some(last) if now_ms - *last < SESSION_IDLE_MS => {
                *last = now_ms;
                true
            }
            Some(_) => {
                self.sessions.remove(session);
                false
            }
            None => false,
        }
    }

    /// Signs `session` out; returns whether it was signed in.
    pub fn end(&mut self, session: &str) -> bool {
        self.sessions.remove(session).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn a_code_opens_one_session_once() {
        let (mut logins, mut rng) = (Logins::default(), rng());
        let code = logins.issue(0, &mut rng);
        assert_eq!(code.len(), 64);
        let session = logins.redeem(&code, 1_000, &mut rng).unwrap();
        assert!(logins.touch(&session, 2_000));
        assert_eq!(logins.redeem(&code, 3_000, &mut rng), Err(LoginError::Used));
        assert_eq!(logins.redeem("nope", 3_000, &mut rng), Err(LoginError::Unknown));
        assert!(!logins.touch("nope", 3_000));
    }

    #[test]
    fn a_code_expires_and_a_session_ends_unused_or_signed_out() {
        let (mut logins, mut rng) = (Logins::default(), rng());
        let late = logins.issue(0, &mut rng);
        assert_eq!(
            logins.redeem(&late, CODE_TTL_MS, &mut rng),
            Err(LoginError::Expired)
        );

        let code = logins.issue(0, &mut rng);
        let session = logins.redeem(&code, 0, &mut rng).unwrap();
        // Each use keeps it alive for another idle period.
        assert!(logins.touch(&session, SESSION_IDLE_MS - 1));
        assert!(logins.touch(&session, 2 * SESSION_IDLE_MS - 2));
        assert!(!logins.touch(&session, 3 * SESSION_IDLE_MS), "idle too long");

        let code = logins.issue(0, &mut rng);
        let session = logins.redeem(&code, 0, &mut rng).unwrap();
        assert!(logins.end(&session));
        assert!(!logins.touch(&session, 1), "signed out");
        assert!(!logins.end(&session));
    }

    /// Codes asked for in a loop, or sessions opened in one, stay bounded:
    /// the oldest give way.
    #[test]
    fn codes_and_sessions_are_bounded() {
        let (mut logins, mut rng) = (Logins::default(), rng());
        let first = logins.issue(0, &mut rng);
        for n in 1..=MAX_CODES as i64 {
            logins.issue(n, &mut rng);
        }
        assert!(logins.codes.len() <= MAX_CODES);
        assert_eq!(logins.redeem(&first, 100, &mut rng), Err(LoginError::Unknown));

        let mut sessions = Vec::new();
        for n in 0..=MAX_SESSIONS as i64 {
            let code = logins.issue(n, &mut rng);
            sessions.push(logins.redeem(&code, n, &mut rng).unwrap());
        }
        assert!(logins.sessions.len() <= MAX_SESSIONS);
        assert!(!logins.touch(&sessions[0], 1_000), "the oldest gave way");
        assert!(logins.touch(sessions.last().unwrap(), 1_000));
    }
}
