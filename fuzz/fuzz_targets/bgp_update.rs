//! UPDATE bodies under each context: RFC 7606 paths, MP attributes,
//! ADD-PATH, AS4_PATH merging.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_bgp_wire::{decode, AfiSafi, Context};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    if body.len() > 65535 - 19 {
        return;
    }
    let ctx = Context {
        four_octet_as: flags & 1 != 0,
        add_path: if flags & 2 != 0 {
            vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
        } else {
            Vec::new()
        },
        extended_message: true,
    };
    let mut frame = vec![0xff; 16];
    frame.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    frame.push(2);
    frame.extend_from_slice(body);
    let _ = decode(&frame, &ctx);
});
