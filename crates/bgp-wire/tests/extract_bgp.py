#!/usr/bin/env python3
"""Extracts the BGP messages one speaker sent from a tcpdump capture.

usage: extract_bgp.py FILE.pcap PEER_ADDRESS=SESSION_NAME...

Reads a classic pcap (Ethernet link type, as `tcpdump -w` writes on a veth),
reassembles each TCP connection to or from port 179 in sequence order
(retransmissions collapse onto the same sequence numbers), splits the byte
stream into BGP messages by their headers and prints, for every message sent
*by* one of the given addresses:

    SESSION TYPE HEX

in the order sent. The standard library only, so the capture needs nothing
but tcpdump and python3.
"""

import ipaddress
import struct
import sys

TYPES = {1: "open", 2: "update", 3: "notification", 4: "keepalive", 5: "route-refresh"}


def packets(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    if magic == 0xA1B2C3D4:
        endian = "<"
    elif magic == 0xD4C3B2A1:
        endian = ">"
    else:
        sys.exit(f"{path}: not a classic pcap (magic {magic:#x})")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        sys.exit(f"{path}: link type {linktype}, want Ethernet (1)")
    off = 24
    while off + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        yield data[off : off + caplen]
        off += caplen


def tcp_segments(path):
    for frame in packets(path):
        ethertype = struct.unpack(">H", frame[12:14])[0]
        ip = frame[14:]
        if ethertype == 0x0800:
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 6:
                continue
            total = struct.unpack(">H", ip[2:4])[0]
            src = ipaddress.ip_address(ip[12:16])
            dst = ipaddress.ip_address(ip[16:20])
            tcp = ip[ihl:total]
        elif ethertype == 0x86DD:
            if ip[6] != 6:
                continue
            plen = struct.unpack(">H", ip[4:6])[0]
            src = ipaddress.ip_address(ip[8:24])
            dst = ipaddress.ip_address(ip[24:40])
            tcp = ip[40 : 40 + plen]
        else:
            continue
        sport, dport, seq = struct.unpack(">HHI", tcp[:8])
        flags = tcp[13]
        doff = (tcp[12] >> 4) * 4
        yield (src, sport, dst, dport), seq, flags, tcp[doff:]


def streams(path):
    """(src, sport, dst, dport) -> bytes sent, in order."""
    isn = {}
    chunks = {}
    order = []
    for key, seq, flags, payload in tcp_segments(path):
        if flags & 0x02:  # SYN: a new connection on this 4-tuple
            isn[key] = seq + 1
            chunks[key] = {}
            if key not in order:
                order.append(key)
            continue
        if key not in isn or not payload:
            continue
        rel = (seq - isn[key]) % (1 << 32)
        chunks[key].setdefault(rel, payload)
    out = []
    for key in order:
        buf = bytearray()
        for rel in sorted(chunks[key]):
            p = chunks[key][rel]
            if rel > len(buf):
                sys.exit(f"{key}: gap in the capture at {rel} (have {len(buf)})")
            buf.extend(p[len(buf) - rel :])
        out.append((key, bytes(buf)))
    return out


def messages(buf):
    off = 0
    while off + 19 <= len(buf):
        if buf[off : off + 16] != b"\xff" * 16:
            sys.exit(f"lost BGP framing at offset {off}")
        length = struct.unpack(">H", buf[off + 16 : off + 18])[0]
        if off + length > len(buf):
            break  # cut by the end of the capture
        yield buf[off : off + length]
        off += length


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    names = {}
    for arg in sys.argv[2:]:
        addr, name = arg.split("=", 1)
        names[ipaddress.ip_address(addr)] = name
    for (src, sport, dst, dport), buf in streams(sys.argv[1]):
        if src not in names or 179 not in (sport, dport):
            continue
        for m in messages(buf):
            print(names[src], TYPES.get(m[18], f"type{m[18]}"), m.hex())


if __name__ == "__main__":
    main()
