//! Any bytes, framed or not, under every negotiated context: the framer and
//! the decoder return errors, never panic; what decodes encodes again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_bgp_wire::{decode, encode, frame_len, AfiSafi, Context};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let ctx = Context {
        four_octet_as: flags & 1 != 0,
        add_path: [(flags & 2 != 0, AfiSafi::IPV4_UNICAST), (flags & 4 != 0, AfiSafi::IPV6_UNICAST)]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| f)
            .collect(),
        extended_message: flags & 8 != 0,
    };
    let mut buf = rest;
    while let Ok(Some(len)) = frame_len(buf, ctx.max_len()) {
        let Some(frame) = buf.get(..len) else { return };
        if let Ok(d) = decode(frame, &ctx) {
            let big = Context { extended_message: true, ..ctx.clone() };
            encode(&d.message, &big).expect("a decoded message encodes");
        }
        buf = &buf[len..];
    }
});
