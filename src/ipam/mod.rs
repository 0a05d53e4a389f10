//! IP address management: pure allocation over pools.
