"""Run in a guest: load a 39-instruction socket filter with verifier stats
and check that ktstr's reading of bpf_prog_info.verified_insns agrees with
the verifier's own "processed N insns" line."""

import ctypes
import re
import struct
import sys

sys.path.insert(0, sys.argv[1])
from ktstr.guest import bpfprogs

insns = struct.pack("<BBhi", 0xB7, 0, 0, 0)  # r0 = 0
insns += struct.pack("<BBhi", 0x07, 0, 0, 1) * 37  # r0 += 1
insns += struct.pack("<BBhi", 0x95, 0, 0, 0)  # exit
code = ctypes.create_string_buffer(insns)
lic = ctypes.create_string_buffer(b"GPL")
log = ctypes.create_string_buffer(4096)
attr = bytearray(
    struct.pack(
        "<IIQQIIQII16s",
        1,
        39,
        ctypes.addressof(code),
        ctypes.addressof(lic),
        4,
        4096,
        ctypes.addressof(log),
        0,
        0,
        b"ktstr_check",
    )
)
fd = bpfprogs._bpf(5, attr)  # BPF_PROG_LOAD
processed = int(re.search(rb"processed (\d+) insns", log.value).group(1))
mine = [bpfprogs.prog_info(i) for i in bpfprogs.prog_ids()]
me = next(p for p in mine if p["name"] == "ktstr_check")
print(
    f"VERIFIED {me['verified_insns']} PROCESSED {processed} TYPE {me['type']} "
    f"XLATED {me['xlated_bytes']}"
)
