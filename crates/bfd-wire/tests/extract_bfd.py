#!/usr/bin/env python3
"""Prints the UDP payloads of BFD Control packets (port 3784) in a pcap
file (Ethernet link type) as "SENDER FAMILY TTL HEX" lines, in capture
order. SENDER is named by the source address: ADDR=NAME arguments.

    extract_bfd.py FILE.pcap 10.0.0.1=bird fd00::1=bird 10.0.0.2=frr ...
"""
import ipaddress
import struct
import sys


def packets(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        sys.exit(f"link type {linktype}, want Ethernet (1)")
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        yield data[off:off + incl]
        off += incl


def main():
    names = dict(a.split("=", 1) for a in sys.argv[2:])
    names = {str(ipaddress.ip_address(k)): v for k, v in names.items()}
    for frame in packets(sys.argv[1]):
        ethertype = struct.unpack("!H", frame[12:14])[0]
        ip = frame[14:]
        if ethertype == 0x0800:
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17:
                continue
            src = str(ipaddress.IPv4Address(ip[12:16]))
            ttl, family, udp = ip[8], "v4", ip[ihl:]
        elif ethertype == 0x86DD:
            if ip[6] != 17:
                continue
            src = str(ipaddress.IPv6Address(ip[8:24]))
            ttl, family, udp = ip[7], "v6", ip[40:]
        else:
            continue
        sport, dport, length = struct.unpack("!HHH", udp[:6])
        if dport != 3784:
            continue
        payload = udp[8:length]
        print(f"{names.get(src, src)} {family} {ttl} {payload.hex()}")


if __name__ == "__main__":
    main()
