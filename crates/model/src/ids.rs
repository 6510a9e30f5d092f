//! Typed identifiers. Every id is a UUID; the newtypes keep a drawing id from
//! being passed where a component id is expected.
//!
//! The model never generates ids itself: callers pass them in (from their own
//! RNG), so tests stay deterministic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($($(#[$doc:meta])+ $name:ident),* $(,)?) => {$(
        $(#[$doc])+
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = Uuid))]
        pub struct $name(pub Uuid);

        impl $name {
            /// Wraps an existing UUID (from the caller's RNG or a parsed string).
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// A deterministic id for tests and seeds: `n` in the low bits.
            pub const fn from_u128(n: u128) -> Self {
                Self(Uuid::from_u128(n))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    )*};
}

id_type!(
    /// A project; also the id of its project document.
    ProjectId,
    /// A drawing; also the id of its drawing document.
    DrawingId,
    /// A component, unique across the project.
    ComponentId,
    /// A milestone template (rules of credit) of a project.
    TemplateId,
    /// One user action (a single update, a bulk update, an import, an undo).
    /// Every change it makes, in every document, carries this id.
    OperationId,
    /// A device (one daemon's store). Recorded in every change.
    DeviceId,
);
