//! The schema version rules both backends follow; each reads its version (and applies its
//! migrations) with its own SQL.

use std::fmt::Display;

use super::{Result, StoreError};

/// Refuses a database whose schema is newer than the `known` migrations of this binary: an
/// older wxtoken must never write to it.
pub(crate) fn refuse_newer(location: &dyn Display, version: i64, known: usize) -> Result<()> {
    if version > known as i64 {
        return Err(StoreError::Schema(format!(
            "database {location} has schema version {version}, newer than this wxtoken \
             understands ({known}); upgrade wxtoken"
        )));
    }
    Ok(())
}
