//! An in-memory store for tests; can be told to fail writes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{AllocationStore, StoreBatch, StoreError};
use crate::model::{Allocation, ServiceKey};

#[derive(Debug, Default)]
pub struct MemoryStore {
    records: BTreeMap<(ServiceKey, IpAddr), Allocation>,
    /// When set, every `apply` fails (to test the engine's rollback).
    pub fail_writes: bool,
    /// Batches applied so far.
    pub batches: usize,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with(allocations: impl IntoIterator<Item = Allocation>) -> Self {
        let mut s = Self::default();
        for a in allocations {
            s.records.insert((a.service.clone(), a.ip), a);
        }
        s
    }
}

impl AllocationStore for MemoryStore {
    fn load(&self) -> Result<Vec<Allocation>, StoreError> {
        Ok(self.records.values().cloned().collect())
    }

    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        if self.fail_writes {
            return Err(StoreError::Write {
                path: PathBuf::from("memory"),
                reason: "injected failure".into(),
            });
        }
        for (svc, ip) in &batch.remove {
            self.records.remove(&(svc.clone(), *ip));
        }
        for a in &batch.put {
            self.records.insert((a.service.clone(), a.ip), a.clone());
        }
        self.batches += 1;
        Ok(())
    }

    fn location(&self) -> &Path {
        Path::new("memory")
    }
}
