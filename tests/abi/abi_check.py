#!/usr/bin/env python3
"""abi_check.py FROZEN CURRENT: the static half of the ABI test (tests/abi/README.md).

Compares the current include/zp/zp_plugin.h with a frozen copy of the SAME major version:
- every record (struct) of the frozen header exists in the current one; clang's record
  layout dump (offset, type and name of every field, nested ones expanded) is compared:
  * a struct whose first member is `size_t struct_size` may grow at the end only: the frozen
    field list must be a prefix of the current one;
  * any other struct (zp_group_info, zp_group_plan, zp_placement, zp_plan, zp_comm, ...) is
    allocated by one side and indexed or filled by the other, so it must stay identical
    (same fields, size and alignment);
- every enumerator of the frozen header keeps its value (new ones may be added);
- every #define keeps its text, except ZP_ABI_MINOR (which may only grow) and the header's
  include guard/export macro.
Exit status 0 when compatible; otherwise every difference is printed.
"""
import os
import re
import subprocess
import sys
import tempfile


def blocks(text, kw):
    """(name, body) of every `typedef <kw> [tag] { ... } name;` and `<kw> tag { ... };`"""
    out = []
    for m in re.finditer(r"\b(typedef\s+)?%s\s*(\w*)\s*\{" % kw, text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        body = text[m.end():i]
        after = re.match(r"\s*(\w*)\s*;", text[i + 1:])
        if m.group(1) and after and after.group(1):
            out.append((after.group(1), body))
        elif m.group(2):
            out.append(("%s %s" % (kw, m.group(2)), body))
    return out


def clang():
    for c in (os.environ.get("CLANG"), "clang", "clang-16", "clang-15", "clang-14"):
        if c and subprocess.run(["sh", "-c", "command -v %s" % c], capture_output=True).returncode == 0:
            return c
    sys.exit("abi_check: clang is needed for the record layout dump")


def layouts(header):
    """{record: [field lines]} plus {record: '[sizeof=.., align=..]'} from clang's dump."""
    text = open(header).read()
    names = sorted({n for n, _ in blocks(text, "struct")})
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "zp"))
        with open(header) as src, open(os.path.join(d, "zp", "zp_plugin.h"), "w") as dst:
            dst.write(src.read())
        tu = os.path.join(d, "t.c")
        with open(tu, "w") as f:
            f.write('#include "zp/zp_plugin.h"\n')
            for i, n in enumerate(names):
                f.write("unsigned long zp_abi_sz_%d = sizeof(%s);\n" % (i, n))
        r = subprocess.run([clang(), "-I", d, "-Xclang", "-fdump-record-layouts", "-fsyntax-only", tu],
                           capture_output=True, text=True)
    if r.returncode:
        sys.exit("abi_check: clang failed on %s:\n%s" % (header, r.stderr))
    recs, sizes = {}, {}
    for blk in r.stdout.split("*** Dumping AST Record Layout")[1:]:
        lines = [l for l in blk.splitlines() if "|" in l]
        name = lines[0].split("|", 1)[1].strip()
        fields = []
        for l in lines[1:]:
            off, rest = l.split("|", 1)
            if rest.strip().startswith("[sizeof="):
                sizes[name] = rest.strip()
            else:
                fields.append("%s | %s" % (off.strip(), re.sub(r"\s+", " ", rest.rstrip())))
        recs[name] = fields
    return recs, sizes


def enumerators(text):
    out = []
    for _, body in blocks(text, "enum"):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        for item in body.split(","):
            m = re.match(r"\s*(ZP_\w+)", item)
            if m:
                out.append(m.group(1))
    return out


def enum_values(header, names):
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "zp"))
        with open(header) as src, open(os.path.join(d, "zp", "zp_plugin.h"), "w") as dst:
            dst.write(src.read())
        with open(os.path.join(d, "t.c"), "w") as f:
            f.write('#include <stdio.h>\n#include "zp/zp_plugin.h"\nint main(void) {\n')
            for n in names:
                f.write('  printf("%%s %%lld\\n", "%s", (long long)%s);\n' % (n, n))
            f.write("  return 0;\n}\n")
        exe = os.path.join(d, "t")
        r = subprocess.run(["cc", "-I", d, "-o", exe, os.path.join(d, "t.c")], capture_output=True, text=True)
        if r.returncode:
            return None, r.stderr
        out = subprocess.run([exe], capture_output=True, text=True).stdout
    return dict(l.split() for l in out.splitlines()), ""


def defines(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return {m.group(1): re.sub(r"\s+", " ", m.group(2).strip())
            for m in re.finditer(r"^#define\s+(ZP_\w+)(?:[ \t]+(.*))?$", text, flags=re.M) if m.group(2) is not None}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    frozen, current = sys.argv[1], sys.argv[2]
    ft, ct = open(frozen).read(), open(current).read()
    errs = []
    fd, cd = defines(ft), defines(ct)
    if fd.get("ZP_ABI_MAJOR") != cd.get("ZP_ABI_MAJOR"):
        sys.exit("abi_check: %s is ABI major %s, the current header %s: compare only the same major"
                 % (frozen, fd.get("ZP_ABI_MAJOR"), cd.get("ZP_ABI_MAJOR")))
    if int(cd.get("ZP_ABI_MINOR", -1)) < int(fd.get("ZP_ABI_MINOR", 0)):
        errs.append("ZP_ABI_MINOR went down: %s -> %s" % (fd.get("ZP_ABI_MINOR"), cd.get("ZP_ABI_MINOR")))
    for k, v in fd.items():
        if k in ("ZP_ABI_MINOR", "ZP_PLUGIN_H", "ZP_PLUGIN_EXPORT"):
            continue
        if cd.get(k) != v:
            errs.append("#define %s changed: '%s' -> '%s'" % (k, v, cd.get(k)))
    names = enumerators(ft)
    fv, e1 = enum_values(frozen, names)
    cv, e2 = enum_values(current, names)
    if fv is None:
        errs.append("enumerators of the frozen header do not compile: " + e1)
    elif cv is None:
        errs.append("an enumerator of the frozen header is gone from the current one: " + e2)
    else:
        for n in names:
            if fv[n] != cv[n]:
                errs.append("enumerator %s changed value: %s -> %s" % (n, fv[n], cv[n]))
    fr, fs = layouts(frozen)
    cr, cs = layouts(current)
    for name, ff in fr.items():
        if name not in cr:
            errs.append("%s: gone from the current header" % name)
            continue
        cf = cr[name]
        growable = bool(ff) and ff[0].endswith("size_t struct_size")
        if growable:
            if cf[:len(ff)] != ff:
                bad = next(i for i in range(len(ff)) if i >= len(cf) or cf[i] != ff[i])
                errs.append("%s: member changed or moved (tables grow only at the end):\n    frozen:  %s\n    current: %s"
                            % (name, ff[bad], cf[bad] if bad < len(cf) else "(missing)"))
        elif cf != ff or cs.get(name) != fs.get(name):
            diff = [("-  " + l) for l in ff if l not in cf] + [("+  " + l) for l in cf if l not in ff]
            errs.append("%s: has no struct_size, so it must not change at all (%s -> %s):\n    %s"
                        % (name, fs.get(name), cs.get(name), "\n    ".join(diff) or "(size or alignment)"))
    for e in errs:
        print("ABI: " + e)
    print("abi_check: %s vs %s: %d records, %d enumerators, %d defines: %s"
          % (os.path.basename(frozen), current, len(fr), len(names), len(fd), "compatible" if not errs else "%d problem(s)" % len(errs)))
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
