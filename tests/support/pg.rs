//! Only for src/store_pg.rs's unit tests, which still include this file by `#[path]`: the
//! PostgreSQL test server lives in the stand-in crate (tests/standin/src/pg.rs). Once that
//! module says `use wxtoken_standin::pg as pgtest;`, this file goes.
pub use wxtoken_standin::pg::*;
