//! IP address management: pure allocation over pools.
//! (Interface stub; the implementation lands from the ipam branch.)

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{Allocation, Family, Pool, PortSpec, Service, ServiceKey};

pub mod annotations {
    pub const POOL: &str = "pier.io/pool";
    pub const IP: &str = "pier.io/ip";
    pub const SHARING_KEY: &str = "pier.io/sharing-key";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not implemented")]
    Todo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub service: ServiceKey,
    pub pool: Option<String>,
    pub ips: Vec<IpAddr>,
    pub families: Vec<Family>,
    pub sharing_key: Option<String>,
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub allocations: Vec<Allocation>,
    pub released: Vec<Allocation>,
    pub changed: bool,
}

pub fn request_for(_svc: &Service, _ns: &BTreeMap<String, String>) -> Result<Request, Refusal> {
    Err(Refusal::Todo)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub family: Family,
    pub total: u128,
    pub in_use: u128,
}

#[derive(Debug, Default)]
pub struct Ipam {
    _pools: Vec<Pool>,
}

impl Ipam {
    pub fn new(pools: Vec<Pool>) -> Self {
        Ipam { _pools: pools }
    }
    pub fn set_pools(&mut self, _pools: Vec<Pool>) -> Vec<Allocation> {
        vec![]
    }
    pub fn restore(&mut self, _a: Allocation) -> Result<(), Refusal> {
        Err(Refusal::Todo)
    }
    pub fn assign(&mut self, _req: &Request) -> Result<Assignment, Refusal> {
        Err(Refusal::Todo)
    }
    pub fn release(&mut self, _key: &ServiceKey) -> Vec<Allocation> {
        vec![]
    }
    pub fn allocations_of(&self, _key: &ServiceKey) -> &[Allocation] {
        &[]
    }
    pub fn orphans(&self) -> Vec<Allocation> {
        vec![]
    }
    pub fn all(&self) -> impl Iterator<Item = &Allocation> {
        std::iter::empty()
    }
    pub fn usage(&self, _pool: &str) -> Vec<PoolUsage> {
        vec![]
    }
}
