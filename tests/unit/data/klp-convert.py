#!/usr/bin/env python3
"""Turns an x86-64 relocatable object into a livepatch ELF (like the kernel's
proposed klp-convert and kpatch-build's create-diff-object do):

  * every undefined symbol named .klp.sym.<object>.<name>,<sympos> gets
    st_shndx SHN_LIVEPATCH (0xff20);
  * every relocation against such a symbol moves from .rela<section> into a
    new section .klp.rela.<object>.<section> (SHT_RELA, flags
    SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH), as
    Documentation/livepatch/module-elf-format.rst describes.

Usage: klp-convert.py IN.o OUT.ko   (standard library only)
"""
import struct
import sys

SHT_RELA = 4
SHT_SYMTAB = 2
SHT_NOBITS = 8
SHF_ALLOC = 0x2
SHF_INFO_LINK = 0x40
SHF_RELA_LIVEPATCH = 0x00100000
SHN_LIVEPATCH = 0xFF20

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA = struct.Struct("<QQq")


def cstr(table, offset):
    return table[offset:table.index(b"\0", offset)].decode()


def main(src, dst):
    data = open(src, "rb").read()
    ehdr = list(EHDR.unpack_from(data, 0))
    shoff, shentsize, shnum, shstrndx = ehdr[6], ehdr[11], ehdr[12], ehdr[13]
    shdrs = [list(SHDR.unpack_from(data, shoff + i * shentsize)) for i in range(shnum)]
    contents = [b"" if h[1] == SHT_NOBITS else data[h[4]:h[4] + h[5]] for h in shdrs]
    shstr = bytearray(contents[shstrndx])
    names = [cstr(shstr, h[0]) for h in shdrs]

    symtab = next(i for i, h in enumerate(shdrs) if h[1] == SHT_SYMTAB)
    strtab = contents[shdrs[symtab][6]]
    syms = bytearray(contents[symtab])
    klp_object = {}  # symbol index -> object name
    for i in range(len(syms) // SYM.size):
        name_off, info, other, shndx, value, size = SYM.unpack_from(syms, i * SYM.size)
        name = cstr(strtab, name_off)
        if name.startswith(".klp.sym."):
            assert shndx == 0, f"{name} is defined"
            klp_object[i] = name[len(".klp.sym."):].split(".", 1)[0]
            SYM.pack_into(syms, i * SYM.size, name_off, info, other, SHN_LIVEPATCH, value, size)
    contents[symtab] = bytes(syms)

    new_sections = []
    for i, h in enumerate(list(shdrs)):
        if h[1] != SHT_RELA:
            continue
        keep, moved = [], {}
        for off in range(0, len(contents[i]), RELA.size):
            entry = contents[i][off:off + RELA.size]
            sym = RELA.unpack(entry)[1] >> 32
            if sym in klp_object:
                moved.setdefault(klp_object[sym], []).append(entry)
            else:
                keep.append(entry)
        contents[i] = b"".join(keep)
        target = h[7]
        for obj, entries in moved.items():
            name = f".klp.rela.{obj}.{names[target]}"
            name_off = len(shstr)
            shstr += name.encode() + b"\0"
            new_sections.append(([name_off, SHT_RELA, SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH, 0, 0, 0,
                                  symtab, target, 8, RELA.size], b"".join(entries)))
    contents[shstrndx] = bytes(shstr)
    for h, c in new_sections:
        shdrs.append(h)
        contents.append(c)

    out = bytearray(EHDR.size)
    for i, h in enumerate(shdrs):
        if i == 0:
            continue
        align = max(h[8], 1)
        out += b"\0" * (-len(out) % align)
        h[4] = len(out)
        if h[1] != SHT_NOBITS:
            h[5] = len(contents[i])
            out += contents[i]
    out += b"\0" * (-len(out) % 8)
    ehdr[6] = len(out)
    ehdr[12] = len(shdrs)
    for h in shdrs:
        out += SHDR.pack(*h)
    EHDR.pack_into(out, 0, *ehdr)
    open(dst, "wb").write(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
