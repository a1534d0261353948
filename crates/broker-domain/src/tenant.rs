//! Identifiers and small enums shared by storage, use cases and the HTTP layer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::states::{ApiKeyRole, TenantStatus};

/// The largest integer a JSON number carries exactly (2^53), and so the largest `provet_id`.
pub const MAX_PROVET_ID: i64 = 1 << 53;

/// A tenant (clinic) as Provet numbers it: a positive integer no larger than 2^53.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct ProvetId(i64);

impl ProvetId {
    pub fn new(value: i64) -> Result<Self, String> {
        if (1..=MAX_PROVET_ID).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("must be an integer from 1 to {MAX_PROVET_ID}"))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for ProvetId {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ProvetId> for i64 {
    fn from(value: ProvetId) -> Self {
        value.0
    }
}

impl fmt::Display for ProvetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ProvetId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value: i64 = s
            .parse()
            .map_err(|_| format!("must be an integer from 1 to {MAX_PROVET_ID}"))?;
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provet_id_bounds() {
        assert!(ProvetId::new(0).is_err());
        assert!(ProvetId::new(-1).is_err());
        assert!(ProvetId::new(MAX_PROVET_ID + 1).is_err());
        assert_eq!(
            ProvetId::new(MAX_PROVET_ID).map(ProvetId::get),
            Ok(MAX_PROVET_ID)
        );
        assert_eq!("42".parse::<ProvetId>().map(ProvetId::get), Ok(42));
        assert!("4x".parse::<ProvetId>().is_err());
    }
}
