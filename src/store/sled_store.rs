//! The on-disk store: one sled database under `state_dir`.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{record_key, AllocationStore, Record, StoreBatch, StoreError, FORMAT_VERSION};
use crate::model::Allocation;

const TREE: &str = "allocations";
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

/// Allocations in sled at `<state_dir>/allocations.db`, guarded by an
/// exclusive lock on `<state_dir>/pier.lock` so two daemons never share it.
pub struct SledStore {
    path: PathBuf,
    pub(super) db: sled::Db,
    pub(super) tree: sled::Tree,
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
        // pier.lock is ours, so no other process has the database open; a
        // lock error from sled here is this process's previous handle,
        // whose background flusher is still finishing (a reopen within one
        // process). Wait for it briefly.
        let mut tries = 0;
        let db = loop {
            match sled_config(&path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if lock_busy(&e) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(open_err(e.to_string())),
            }
        };
        let tree = db.open_tree(TREE).map_err(|e| open_err(e.to_string()))?;
        match db.get(META_FORMAT).map_err(|e| open_err(e.to_string()))? {
            Some(v) => {
                let found = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .ok_or_else(|| open_err(format!("unreadable format marker {v:?}")))?;
                if found > FORMAT_VERSION {
                    return Err(StoreError::FutureFormat { path, found });
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
        Ok(SledStore {
            path,
            db,
            tree,
            _lock: lock,
        })
    }
}

impl AllocationStore for SledStore {
    fn load(&self) -> Result<Vec<Allocation>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
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
        if batch.is_empty() {
            return Ok(());
        }
        let ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = batch
            .remove
            .iter()
            .map(|(svc, ip)| (record_key(svc, ip), None))
            .chain(
                batch
                    .put
                    .iter()
                    .map(|a| (record_key(&a.service, &a.ip), Some(Record::encode(a)))),
            )
            .collect();
        let write_err = |e: sled::Error| StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        // What the keys held before, to undo a failure after some chunks
        // went in (one chunk alone is atomic).
        let mut undo: Vec<(Vec<u8>, Option<sled::IVec>)> = Vec::new();
        let chunked = ops.len() > CHUNK;
        let result = (|| {
            for chunk in ops.chunks(CHUNK) {
                let mut b = sled::Batch::default();
                for (k, v) in chunk {
                    if chunked {
                        undo.push((k.clone(), self.tree.get(k)?));
                    }
                    match v {
                        Some(v) => b.insert(k.as_slice(), v.as_slice()),
                        None => b.remove(k.as_slice()),
                    }
                }
                self.tree.apply_batch(b)?;
            }
            // One fsync per batch however many chunks: the engine batches
            // everything one planning round changes, so 10,000 allocations
            // at start cost one flush.
            self.db.flush()?;
            Ok(())
        })();
        if let Err(e) = result {
            let mut b = sled::Batch::default();
            for (k, old) in undo.into_iter().rev() {
                match old {
                    Some(v) => b.insert(k, v),
                    None => b.remove(k),
                }
            }
            if let Err(undo_err) = self.tree.apply_batch(b).and_then(|_| self.db.flush()) {
                tracing::error!(store = %self.path.display(), error = %undo_err, "cannot undo a partly applied batch");
            }
            return Err(write_err(e));
        }
        Ok(())
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
