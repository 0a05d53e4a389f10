//! BFD Control packets (RFC 5880 §4.1): decoding never panics, and what
//! decodes re-encodes to a packet that decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_bfd_wire::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = decode(data) {
        let wire = encode(&p);
        assert_eq!(decode(&wire), Ok(p));
    }
});
