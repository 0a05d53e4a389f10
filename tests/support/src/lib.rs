//! Test API server (to be built).
