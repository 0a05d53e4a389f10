//! An in-memory store for tests. Clones share their contents, so a test can
//! keep a handle to inspect it or make writes fail while the engine owns it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{AllocationStore, LastPlan, StoreBatch, StoreError};
use crate::model::{Allocation, ServiceKey};

#[derive(Debug, Default)]
struct Inner {
    records: BTreeMap<(ServiceKey, IpAddr), Allocation>,
    fail_writes: bool,
    batches: usize,
    desired: Option<Vec<u8>>,
}

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can only come from a failing test.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make every following `apply` fail (or succeed again).
    pub fn set_fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    /// Batches applied so far.
    pub fn batches(&self) -> usize {
        self.lock().batches
    }
}

impl AllocationStore for MemoryStore {
    fn load(&self) -> Result<Vec<Allocation>, StoreError> {
        Ok(self.lock().records.values().cloned().collect())
    }

    fn apply(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.fail_writes {
            return Err(StoreError::Write {
                path: "memory".into(),
                reason: "injected failure".into(),
            });
        }
        for (svc, ip) in &batch.remove {
            inner.records.remove(&(svc.clone(), *ip));
        }
        for a in &batch.put {
            inner.records.insert((a.service.clone(), a.ip), a.clone());
        }
        inner.batches += 1;
        Ok(())
    }

    fn load_desired(&self) -> Result<Option<LastPlan>, StoreError> {
        match &self.lock().desired {
            Some(bytes) => super::StoredDesired::decode(Path::new("memory"), bytes).map(Some),
            None => Ok(None),
        }
    }

    fn save_desired(&mut self, plan: &LastPlan) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.fail_writes {
            return Err(StoreError::Write {
                path: "memory".into(),
                reason: "injected failure".into(),
            });
        }
        inner.desired = Some(super::StoredDesired::encode(plan));
        Ok(())
    }

    fn location(&self) -> &Path {
        Path::new("memory")
    }
}
