//! `filesync-master`: the master's brain. It turns a directory into `Change`s and owns the
//! vocabulary every other part speaks. It knows nothing of the bus or the network, so all of
//! it is tested with plain directories.
//!
//! # Layout
//!
//! - [`relpath`]: `RelPath`, a validated path relative to the synced root (bytes, not UTF-8),
//!   and `TEMP_PREFIX`, the name the agents' temporary files start with.
//!
//! Those four are the vocabulary both sides speak; the rest, behind the default feature
//! `watch` (notify, walkdir, ignore), is the master's machinery, which the slave crate
//! does without.
//! - [`model`]: `Kind`, `Entry`, `Change` and `Model`, the state a sequence of changes implies.
//! - [`hash`]: SHA-256 of files in bounded memory, refusing files that change mid-read.
//! - [`chunk`]: content-defined chunks and the manifests that list them (protocol sizes).
//! - [`memo`]: `ChunkMemo`, the addresses of chunks cut before, so an edit hashes once.
//! - [`ignore`]: `.filesyncignore` (gitignore syntax).
//! - [`tree`]: `Tree`, which compares the disk with the model and yields changes.
//! - [`watch`]: `DirWatcher`, inotify through `notify`, reduced to a few signals.
//! - [`coalesce`]: `Coalescer`, which decides when each signalled path is looked at.
//! - [`guard`]: `RootGuard`, which holds publication while the directory is gone or empty.

pub mod chunk;
#[cfg(feature = "watch")]
pub mod coalesce;
#[cfg(feature = "watch")]
pub mod guard;
pub mod hash;
#[cfg(feature = "watch")]
pub mod ignore;
pub mod memo;
pub mod model;
pub mod relpath;
#[cfg(feature = "watch")]
pub mod tree;
#[cfg(feature = "watch")]
pub mod watch;

pub use model::{Change, Entry, Kind, Model};
pub use relpath::{RelPath, RelPathError, TEMP_PREFIX};
