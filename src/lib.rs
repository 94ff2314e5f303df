//! Graviton: a FUSE filesystem whose file content lives in immutable, content-addressed blocks
//! and whose metadata lives in a transactional store. See `docs/architecture.md`.

pub mod background;
pub mod cli;
pub mod daemon;
pub mod domain;
pub mod fuse;
mod layer;
pub mod maint;
pub mod meta;
pub mod metrics;
pub mod postgres;
pub mod private;
pub mod retry;
pub mod state;
pub mod store;
pub mod vfs;
pub mod volume;
