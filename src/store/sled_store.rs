//! The on-disk store: one sled database under `state_dir`.
//!
//! A write that fails (a full disk, an I/O error) leaves the keys it
//! touched *unsettled*: sled may hold some of the batch in memory or on
//! disk although the engine undid it. They are remembered with the value
//! the engine believes is stored, and the next write puts them back first,
//! then applies its own batch: the store converges to the engine's view on
//! the first write that succeeds. sled refuses every call after an I/O
//! error, so the next write after a failure reopens the database.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{
    record_key, AllocationStore, LastPlan, Record, StoreBatch, StoreError, StoredDesired,
    FORMAT_VERSION,
};
use crate::model::Allocation;

const TREE: &str = "allocations";
/// The last published plan, for a start without the API server.
const DESIRED_TREE: &str = "desired";
const DESIRED_KEY: &[u8] = b"last";
const META_FORMAT: &[u8] = b"format";
#[cfg(test)]
pub(super) const META_FORMAT_FOR_TESTS: &[u8] = META_FORMAT;

/// Records per sled batch. sled keeps everything one batch writes (its log
/// buffers and every node version it replaces) until the batch ends: one
/// batch of 10,000 records peaks at ~50 MB, chunks of 500 at ~15 MB.
const CHUNK: usize = 500;

/// sled's settings. Its page cache holds what was read or written (the
/// default capacity, 1 GiB, is never reached by pier's few records).
fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new().path(path).cache_capacity(16 << 20)
}

/// An open database and its trees.
pub(super) struct OpenDb {
    pub(super) db: sled::Db,
    pub(super) tree: sled::Tree,
    desired: sled::Tree,
}

/// Allocations in sled at `<state_dir>/allocations.db`, guarded by an
/// exclusive lock on `<state_dir>/pier.lock` so two daemons never share it.
pub struct SledStore {
    path: PathBuf,
    /// `None` after a failed write closed it, until a reopen succeeds.
    open: Option<OpenDb>,
    /// Keys a failed write may have left changed, with the value the
    /// engine believes they hold (`None`: absent).
    pub(super) unsettled: BTreeMap<Vec<u8>, Option<sled::IVec>>,
    /// The last write failed: reopen before the next.
    pub(super) failed: bool,
    // Held for the store's lifetime; the lock goes with the descriptor.
    _lock: File,
}

impl SledStore {
    pub fn open(state_dir: &Path) -> Result<SledStore, StoreError> {
        let path = state_dir.join("allocations.db");
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(state_dir)
            .map_err(|e| open_err(format!("cannot create {}: {e}", state_dir.display())))?;
        let lock_path = state_dir.join("pier.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| open_err(format!("cannot open {}: {e}", lock_path.display())))?;
        // SAFETY: flock on a descriptor we own; no memory is shared.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StoreError::Locked { path: path.clone() }
            } else {
                open_err(format!("cannot lock {}: {e}", lock_path.display()))
            });
        }
        let open = open_db(&path)?;
        Ok(SledStore {
            path,
            open: Some(open),
            unsettled: BTreeMap::new(),
            failed: false,
            _lock: lock,
        })
    }

    fn db(&self) -> Result<&OpenDb, StoreError> {
        self.open.as_ref().ok_or_else(|| StoreError::Write {
            path: self.path.clone(),
            reason: "the database is closed after an earlier error".into(),
        })
    }

    /// After a failed write: close the database and open it again (sled
    /// refuses every call once it met an I/O error).
    fn reopen(&mut self) -> Result<(), StoreError> {
        // The old handle must be gone for sled's own file lock to free.
        self.open = None;
        let open = open_db(&self.path).map_err(|e| StoreError::Write {
            path: self.path.clone(),
            reason: format!("cannot reopen after an earlier error: {e}"),
        })?;
        self.open = Some(open);
        self.failed = false;
        Ok(())
    }

    /// Write `ops` (removals are `None`) in chunks, then flush once.
    /// On an error, every key of `ops` becomes unsettled.
    fn write(&mut self, ops: Vec<(Vec<u8>, Option<sled::IVec>)>) -> Result<(), StoreError> {
        if self.failed || self.open.is_none() {
            if let Err(e) = self.reopen() {
                self.failed = true;
                return Err(e);
            }
        }
        let db = self.db()?;
        // What the keys held before (unless already unsettled: then the
        // engine's belief is older and stays).
        let mut before: Vec<(Vec<u8>, Option<sled::IVec>)> = Vec::with_capacity(ops.len());
        let result = (|| {
            for chunk in ops.chunks(CHUNK) {
                let mut b = sled::Batch::default();
                for (k, v) in chunk {
                    if !self.unsettled.contains_key(k) {
                        before.push((k.clone(), db.tree.get(k)?));
                    }
                    match v {
                        Some(v) => b.insert(k.as_slice(), v.clone()),
                        None => b.remove(k.as_slice()),
                    }
                }
                db.tree.apply_batch(b)?;
            }
            // One fsync per batch however many chunks: the engine batches
            // everything one planning round changes, so 10,000 allocations
            // at start cost one flush.
            db.db.flush()?;
            Ok::<(), sled::Error>(())
        })();
        match result {
            Ok(()) => {
                self.unsettled.clear();
                Ok(())
            }
            Err(e) => {
                // Keys of later chunks were not written: still settled.
                for (k, old) in before {
                    self.unsettled.entry(k).or_insert(old);
                }
                self.failed = true;
                tracing::warn!(
                    store = %self.path.display(),
                    unsettled = self.unsettled.len(),
                    error = %e,
                    "store write failed; its keys are put back on the next write that succeeds"
                );
                Err(StoreError::Write {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Keys a failed write left to put back (for tests and status).
    pub fn unsettled(&self) -> usize {
        self.unsettled.len()
    }

    #[cfg(test)]
    pub(super) fn tree(&self) -> &sled::Tree {
        &self.open.as_ref().expect("store open").tree
    }

    #[cfg(test)]
    pub(super) fn raw_db(&self) -> &sled::Db {
        &self.open.as_ref().expect("store open").db
    }
}

/// Open the database at `path` and check its format marker.
fn open_db(path: &Path) -> Result<OpenDb, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    // pier.lock is ours, so no other process has the database open; a
    // lock error from sled here is this process's previous handle,
    // whose background flusher is still finishing (a reopen within one
    // process). Wait for it briefly.
    let mut tries = 0;
    let db = loop {
        match sled_config(path).open() {
            Ok(db) => break db,
            Err(sled::Error::Io(e)) if lock_busy(&e) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(open_err(e.to_string())),
        }
    };
    let tree = db.open_tree(TREE).map_err(|e| open_err(e.to_string()))?;
    let desired = db
        .open_tree(DESIRED_TREE)
        .map_err(|e| open_err(e.to_string()))?;
    match db.get(META_FORMAT).map_err(|e| open_err(e.to_string()))? {
        Some(v) => {
            let found = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| open_err(format!("unreadable format marker {v:?}")))?;
            if found > FORMAT_VERSION {
                return Err(StoreError::FutureFormat {
                    path: path.to_path_buf(),
                    found,
                });
            }
            if found < FORMAT_VERSION {
                // Older records are still read; new ones are written
                // in this format, which an older pier must refuse.
                db.insert(META_FORMAT, FORMAT_VERSION.to_string().as_bytes())
                    .map_err(|e| open_err(e.to_string()))?;
                db.flush().map_err(|e| open_err(e.to_string()))?;
            }
        }
        None => {
            db.insert(META_FORMAT, FORMAT_VERSION.to_string().as_bytes())
                .map_err(|e| open_err(e.to_string()))?;
            db.flush().map_err(|e| open_err(e.to_string()))?;
        }
    }
    Ok(OpenDb { db, tree, desired })
}

impl AllocationStore for SledStore {
    fn load(&self) -> Result<Vec<Allocation>, StoreError> {
        let db = self.db()?;
        let mut out = Vec::new();
        for item in db.tree.iter() {
            let (k, v) = item.map_err(|e| StoreError::Open {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            out.push(Record::decode(&self.path, &k, &v)?);
        }
        out.sort();
        Ok(out)
    }

    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        if batch.is_empty() && self.unsettled.is_empty() && !self.failed {
            return Ok(());
        }
        // What a failed write left, put back first (the engine computed
        // this batch from its own view, which never had it), then the
        // batch: removals before puts.
        let mut ops: Vec<(Vec<u8>, Option<sled::IVec>)> = Vec::new();
        let mut overridden: std::collections::BTreeSet<Vec<u8>> = Default::default();
        let batch_ops: Vec<(Vec<u8>, Option<sled::IVec>)> = batch
            .remove
            .iter()
            .map(|(svc, ip)| (record_key(svc, ip), None))
            .chain(batch.put.iter().map(|a| {
                (
                    record_key(&a.service, &a.ip),
                    Some(sled::IVec::from(Record::encode(a))),
                )
            }))
            .collect();
        for (k, _) in &batch_ops {
            overridden.insert(k.clone());
        }
        // Removals of unsettled keys first, then their restored values:
        // a restore never meets a half-written sibling.
        let (gone, back): (Vec<_>, Vec<_>) = self
            .unsettled
            .iter()
            .filter(|(k, _)| !overridden.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(_, v)| v.is_none());
        ops.extend(gone);
        ops.extend(batch_ops.iter().filter(|(_, v)| v.is_none()).cloned());
        ops.extend(back);
        ops.extend(batch_ops.into_iter().filter(|(_, v)| v.is_some()));
        self.write(ops)
    }

    fn load_desired(&self) -> Result<Option<LastPlan>, StoreError> {
        let db = self.db()?;
        let Some(bytes) = db.desired.get(DESIRED_KEY).map_err(|e| StoreError::Open {
            path: self.path.clone(),
            reason: e.to_string(),
        })?
        else {
            return Ok(None);
        };
        StoredDesired::decode(&self.path, &bytes).map(Some)
    }

    fn save_desired(&mut self, plan: &LastPlan) -> Result<(), StoreError> {
        if self.failed || self.open.is_none() {
            if let Err(e) = self.reopen() {
                self.failed = true;
                return Err(e);
            }
        }
        let bytes = StoredDesired::encode(plan);
        let db = self.db()?;
        let result = db
            .desired
            .insert(DESIRED_KEY, bytes)
            .and_then(|_| db.db.flush().map(drop));
        result.map_err(|e| {
            self.failed = true;
            StoreError::Write {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })
    }

    fn location(&self) -> &Path {
        &self.path
    }
}

/// Is this sled's "the database file is locked" error? sled 0.34 reports a
/// busy lock as `ErrorKind::Other` with the message "could not acquire lock
/// on ...: ... WouldBlock ...", not as `WouldBlock` itself.
pub(super) fn lock_busy(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().starts_with("could not acquire lock on")
}
