//! Durable allocations.
//!
//! The engine changes allocations in batches ([`StoreBatch`]) and a batch is
//! on disk (flushed) when [`AllocationStore::apply`] returns: only then does
//! anything outside pier (a status write, a BGP announcement) hear of it.
//! A store that cannot be opened or decoded is an error, never a reason to
//! start empty: starting empty would re-number Services.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{Allocation, ServiceKey};

mod memory;
mod sled_store;

pub use memory::MemoryStore;
pub use sled_store::SledStore;
#[cfg(test)]
use sled_store::META_FORMAT_FOR_TESTS;

/// Version of the on-disk record format. Bump on incompatible change and
/// teach [`Record::decode`] to read the old one.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open the allocation store at {path}: {reason}. pier will not start without its allocations (starting empty would re-number Services); fix the cause, or move the directory away deliberately to start over")]
    Open { path: PathBuf, reason: String },
    #[error("allocation store at {path} is in use by another process (is another pier running with the same state_dir?)")]
    Locked { path: PathBuf },
    #[error("allocation store at {path} has format version {found}, newer than this pier understands ({FORMAT_VERSION}); upgrade pier or restore the older store")]
    FutureFormat { path: PathBuf, found: u32 },
    #[error("allocation store at {path}: record {key:?} cannot be decoded: {reason}")]
    Corrupt {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("allocation store at {path}: write failed: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl StoreError {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "open",
            StoreError::Locked { .. } => "locked",
            StoreError::FutureFormat { .. } => "future_format",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Write { .. } => "write",
        }
    }
}

/// A set of changes applied atomically and durably.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreBatch {
    pub put: Vec<Allocation>,
    /// (Service, IP) pairs to forget.
    pub remove: Vec<(ServiceKey, std::net::IpAddr)>,
}

impl StoreBatch {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.remove.is_empty()
    }
    pub fn len(&self) -> usize {
        self.put.len() + self.remove.len()
    }
}

/// Where allocations live across restarts. Swappable (sled on disk, memory
/// in tests).
pub trait AllocationStore: Send {
    /// Every allocation, sorted.
    fn load(&self) -> Result<Vec<Allocation>, StoreError>;
    /// Apply atomically; on return the batch is durable.
    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError>;
    /// Where it lives, for messages.
    fn location(&self) -> &Path;
}

/// What is stored per (Service, IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// [`FORMAT_VERSION`] at the time of writing.
    v: u32,
    allocation: Allocation,
}

impl Record {
    fn encode(a: &Allocation) -> Vec<u8> {
        // Serialising plain data to JSON cannot fail.
        serde_json::to_vec(&Record {
            v: FORMAT_VERSION,
            allocation: a.clone(),
        })
        .unwrap_or_default()
    }

    fn decode(path: &Path, key: &[u8], bytes: &[u8]) -> Result<Allocation, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if v.v > FORMAT_VERSION {
            return Err(StoreError::FutureFormat {
                path: path.to_path_buf(),
                found: v.v,
            });
        }
        let r: Record = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let expected = record_key(&r.allocation.service, &r.allocation.ip);
        if expected != key {
            return Err(corrupt(format!(
                "the record is for {} {} but is stored under another key",
                r.allocation.service, r.allocation.ip
            )));
        }
        Ok(r.allocation)
    }
}

/// `namespace \0 name \0 ip`: sorts by Service, then IP.
fn record_key(service: &ServiceKey, ip: &std::net::IpAddr) -> Vec<u8> {
    let mut k = Vec::with_capacity(service.namespace.len() + service.name.len() + 42);
    k.extend_from_slice(service.namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(service.name.as_bytes());
    k.push(0);
    k.extend_from_slice(ip.to_string().as_bytes());
    k
}

#[cfg(test)]
mod tests;
