//! The owner task and the pure planner.

pub mod plan;
