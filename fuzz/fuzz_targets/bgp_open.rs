//! OPEN bodies: capabilities and RFC 9072 parameters.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_bgp_wire::{decode, Context};

fuzz_target!(|body: &[u8]| {
    if body.len() > 4096 - 19 {
        return;
    }
    let mut frame = vec![0xff; 16];
    frame.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    frame.push(1);
    frame.extend_from_slice(body);
    let _ = decode(&frame, &Context::modern());
});
