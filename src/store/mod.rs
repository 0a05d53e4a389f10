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

use crate::model::{
    Allocation, AnnounceMode, Announcement, BgpAttributes, Desired, NextHop, PortRule, ServiceKey,
};

mod memory;
mod sled_store;

pub use memory::MemoryStore;
pub use sled_store::SledStore;
#[cfg(test)]
use sled_store::META_FORMAT_FOR_TESTS;

/// Version of the on-disk record format. Bump on incompatible change and
/// teach [`Record::decode`] to read the old one.
///
/// - 1: a JSON object `{"v":1,"allocation":{...}}` (the whole allocation,
///   Service and IP included, ~150 bytes).
/// - 2: a JSON array `[2, pool, sharing key or null, ["80/tcp", ...]]`;
///   the Service and IP are the record's key (~30 bytes: sled's memory
///   grows with what it holds). Version 1 records are still read.
pub const FORMAT_VERSION: u32 = 2;

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
    /// Apply the removals, then the puts; on return the batch is durable.
    /// On an error nothing of it remains. A crash during `apply` may leave
    /// a part of it, in that order (removals first): a subset of the old
    /// allocations plus some of the new ones, never two Services on what
    /// only one may hold, and nothing anyone outside pier has heard of.
    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError>;
    /// The last plan saved by [`AllocationStore::save_desired`], if any.
    fn load_desired(&self) -> Result<Option<LastPlan>, StoreError>;
    /// Keep `plan` (the last published plan) so that a start without the
    /// API server can announce it again (docs/ha.md). Durable on return.
    fn save_desired(&mut self, plan: &LastPlan) -> Result<(), StoreError>;
    /// Where it lives, for messages.
    fn location(&self) -> &Path;
}

/// The last published plan and whether this gateway held the lease then
/// (it answers ARP/NDP for `l2` VIPs only as the holder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPlan {
    pub desired: Desired,
    pub leader: bool,
}

/// Version of the stored plan's format ([`StoredDesired`]).
pub const DESIRED_FORMAT_VERSION: u32 = 1;

/// The last published plan, as stored: next-hop sets once each (a pool's
/// Cluster VIPs share one set of nodes, so 10,000 VIPs × 500 nodes store
/// one set, not 10,000), announcements pointing at them by index.
///
/// Version 1: `{"v":1,"generation":g,"leader":bool,"hops":[[next hop, ...], ...],
/// "vips":[{"vip":..,"pool":..,"mode":..,"hops":index,"bgp":..,
/// "services":[..],"ports":[..]}, ...]}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredDesired {
    v: u32,
    generation: u64,
    #[serde(default)]
    leader: bool,
    hops: Vec<std::sync::Arc<[NextHop]>>,
    vips: Vec<StoredAnnouncement>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredAnnouncement {
    vip: std::net::IpAddr,
    pool: String,
    mode: AnnounceMode,
    hops: usize,
    bgp: BgpAttributes,
    services: Vec<ServiceKey>,
    ports: Vec<PortRule>,
}

/// What [`StoredDesired::encode`] writes: the same fields, borrowed from
/// the plan, so a save copies nothing but the JSON it produces (at 10,000
/// VIPs the clones were megabytes at the sync's memory peak).
#[derive(Serialize)]
struct StoredDesiredRef<'a> {
    v: u32,
    generation: u64,
    leader: bool,
    hops: Vec<&'a [NextHop]>,
    vips: Vec<StoredAnnouncementRef<'a>>,
}

#[derive(Serialize)]
struct StoredAnnouncementRef<'a> {
    vip: std::net::IpAddr,
    pool: &'a str,
    mode: &'a AnnounceMode,
    hops: usize,
    bgp: &'a BgpAttributes,
    services: &'a [ServiceKey],
    ports: &'a [PortRule],
}

/// A writer that only counts what it is given.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StoredDesired {
    pub fn encode(plan: &LastPlan) -> Vec<u8> {
        let d = &plan.desired;
        let mut index: std::collections::HashMap<*const NextHop, usize> = Default::default();
        let mut hops: Vec<&[NextHop]> = Vec::new();
        let vips = d
            .announcements
            .iter()
            .map(|a| {
                let i = *index.entry(a.next_hops.as_ptr()).or_insert_with(|| {
                    hops.push(&a.next_hops);
                    hops.len() - 1
                });
                StoredAnnouncementRef {
                    vip: a.vip,
                    pool: &a.pool,
                    mode: &a.mode,
                    hops: i,
                    bgp: &a.bgp,
                    services: &a.services,
                    ports: &a.ports,
                }
            })
            .collect();
        let stored = StoredDesiredRef {
            v: DESIRED_FORMAT_VERSION,
            generation: d.generation,
            leader: plan.leader,
            hops,
            vips,
        };
        // Measured first, then written into a buffer of exactly that size:
        // at 10,000 VIPs (~5 MB of JSON) a growing buffer held its old and
        // new halves at once, at the sync's memory peak. Serialising plain
        // data to JSON cannot fail.
        let mut size = ByteCount(0);
        let _ = serde_json::to_writer(&mut size, &stored);
        let mut out = Vec::with_capacity(size.0);
        let _ = serde_json::to_writer(&mut out, &stored);
        out
    }

    pub fn decode(path: &Path, bytes: &[u8]) -> Result<LastPlan, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            key: "desired/last".into(),
            reason,
        };
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if v.v > DESIRED_FORMAT_VERSION {
            return Err(StoreError::FutureFormat {
                path: path.to_path_buf(),
                found: v.v,
            });
        }
        let s: StoredDesired = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut announcements = Vec::with_capacity(s.vips.len());
        for a in s.vips {
            let next_hops = s.hops.get(a.hops).cloned().ok_or_else(|| {
                corrupt(format!(
                    "VIP {} names next-hop set {} of {}",
                    a.vip,
                    a.hops,
                    s.hops.len()
                ))
            })?;
            announcements.push(std::sync::Arc::new(Announcement {
                vip: a.vip,
                pool: a.pool,
                mode: a.mode,
                next_hops,
                bgp: a.bgp,
                services: a.services,
                ports: a.ports,
            }));
        }
        announcements.sort_by_key(|a| a.vip);
        announcements.dedup_by(|a, b| a.vip == b.vip);
        Ok(LastPlan {
            desired: Desired {
                generation: s.generation,
                announcements,
            },
            leader: s.leader,
        })
    }
}

/// Version 1 of a record: the whole allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// 1.
    v: u32,
    allocation: Allocation,
}

/// Version 2 of a record: what the key does not say.
#[derive(Debug, Serialize, Deserialize)]
struct CompactRecord(u32, String, Option<String>, Vec<String>);

impl Record {
    fn encode(a: &Allocation) -> Vec<u8> {
        // Serialising plain data to JSON cannot fail.
        serde_json::to_vec(&CompactRecord(
            FORMAT_VERSION,
            a.pool.clone(),
            a.sharing_key.clone(),
            a.ports.iter().map(ToString::to_string).collect(),
        ))
        .unwrap_or_default()
    }

    /// Version 1, for tests of reading old stores.
    #[cfg(test)]
    fn encode_v1(a: &Allocation) -> Vec<u8> {
        serde_json::to_vec(&Record {
            v: 1,
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
        let future = |found: u32| StoreError::FutureFormat {
            path: path.to_path_buf(),
            found,
        };
        if bytes.first() == Some(&b'[') {
            // Version 2 (or later): the version comes first.
            let fields: Vec<serde_json::Value> =
                serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
            let v = fields.first().and_then(|v| v.as_u64()).unwrap_or(0);
            if v > u64::from(FORMAT_VERSION) {
                return Err(future(u32::try_from(v).unwrap_or(u32::MAX)));
            }
            let r: CompactRecord =
                serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
            let (service, ip) = split_key(key)
                .ok_or_else(|| corrupt("the key is not namespace\\0name\\0ip".to_string()))?;
            let ports =
                r.3.iter()
                    .map(|p| p.parse())
                    .collect::<Result<Vec<_>, String>>()
                    .map_err(corrupt)?;
            return Ok(Allocation {
                service,
                ip,
                pool: r.1,
                sharing_key: r.2,
                ports,
            });
        }
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if v.v > FORMAT_VERSION {
            return Err(future(v.v));
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

/// The Service and IP a [`record_key`] names.
fn split_key(key: &[u8]) -> Option<(ServiceKey, std::net::IpAddr)> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.split('\0');
    let (ns, name, ip) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ns.is_empty() || name.is_empty() {
        return None;
    }
    Some((ServiceKey::new(ns, name), ip.parse().ok()?))
}

#[cfg(test)]
mod tests;
