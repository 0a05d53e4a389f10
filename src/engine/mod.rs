//! The owner task and the pure planner.
