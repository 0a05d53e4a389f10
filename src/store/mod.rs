//! Durable allocations.
