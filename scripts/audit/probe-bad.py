#!/usr/bin/python3
"""Bad input, as a reviewer would try it (session 7, task D). Run from the repository root after `npm run build`:

    /usr/bin/python3 scripts/audit/probe-bad.py

Every probe must end with a typed error (`error CODE` on stderr), a non-zero exit, and nothing written: no output
file, no temporary file left beside it. Prints a table of the cases.
"""

import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = ["node", os.path.join(ROOT, "dist/cli/lora-mix.js")]
OUT = "/tmp/s7-audit-bad"
LORA = os.path.join(ROOT, "fixtures/sd15/style-lora.kohya.safetensors")
BASE = os.path.join(ROOT, "fixtures/sd15/base.safetensors")
RESULTS = []


def header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), f.read()


def write_raw(path, header_bytes, data, length=None):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes) if length is None else length))
        f.write(header_bytes)
        f.write(data)


def variant(name, mutate):
    """A copy of the style LoRA with its header (dict) or bytes changed by mutate(header, data) → (bytes, data, length)."""
    header, data = header_of(LORA)
    res = mutate(header, bytearray(data))
    path = os.path.join(OUT, name + ".safetensors")
    write_raw(path, *res)
    return path


def json_bytes(h):
    b = json.dumps(h).encode()
    return b + b" " * ((8 - len(b) % 8) % 8)


def listing(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def probe(case, args, out_path, want_code=None, expect_fail=True, as_user=None):
    d = os.path.dirname(out_path) if out_path else OUT
    before = listing(d)
    prefix = ["runuser", "-u", as_user, "--"] if as_user else []
    p = subprocess.run(prefix + CLI + args, capture_output=True, text=True)
    after = listing(d)
    new = sorted(set(after) - set(before))
    err = p.stderr.strip().splitlines()
    code = next((line.split("error ", 1)[1].split(":")[0] for line in err if "error " in line), None)
    # expect_fail None: either a clean success or a typed error with nothing written (no crash)
    if expect_fail is None:
        ok = (p.returncode == 0 and "TypeError" not in p.stderr and "RangeError" not in p.stderr) or (code is not None and not new)
    else:
        ok = (p.returncode != 0) == expect_fail and not (expect_fail and new) and (want_code is None or code == want_code)
        if expect_fail and code is None:
            ok = False
    first = err[0][:150] if err else ""
    RESULTS.append((case, " ".join(a if len(a) < 40 else "…" + a[-30:] for a in args[:4]), p.returncode, code, new, ok, first))
    print(f"{'ok  ' if ok else 'FAIL'} {case:44s} rc={p.returncode} code={code} new={new} {first}", flush=True)
    return p


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    o = lambda n: os.path.join(OUT, n)  # noqa: E731

    # --- corrupt files
    size = os.path.getsize(LORA)
    with open(LORA, "rb") as f:
        raw = f.read()
    trunc = o("truncated.safetensors")
    open(trunc, "wb").write(raw[: int(size * 0.6)])
    probe("truncated file: convert", ["convert", trunc, "-o", o("t.out.safetensors"), "--to", "peft", "-q"], o("t.out.safetensors"))
    probe("truncated file: fuse", ["fuse", "--base", BASE, trunc, "-o", o("t.fused.safetensors"), "-q"], o("t.fused.safetensors"))
    past = o("header-past-eof.safetensors")
    open(past, "wb").write(struct.pack("<Q", size * 4) + raw[8:])
    probe("header length past EOF", ["inspect", past], None)
    huge = o("header-huge.safetensors")
    open(huge, "wb").write(struct.pack("<Q", 2**62) + raw[8:])
    probe("header length 2^62", ["merge", huge, LORA, "-o", o("h.out.safetensors"), "-q"], o("h.out.safetensors"))
    open(o("empty.safetensors"), "wb").close()
    probe("empty file", ["convert", o("empty.safetensors"), "-o", o("e.out.safetensors"), "--to", "kohya", "-q"], o("e.out.safetensors"))
    open(o("seven.safetensors"), "wb").write(b"\x01\x00\x00")
    probe("3-byte file", ["inspect", o("seven.safetensors")], None)
    notjson = o("not-json.safetensors")
    write_raw(notjson, b"{not json}      ", b"")
    probe("header not JSON", ["inspect", notjson], None)

    # duplicate keys: the same tensor name twice in the header JSON (the later one covering other bytes)
    def dup(h, data):
        names = [k for k in h if k != "__metadata__"]
        first = names[0]
        text = json.dumps(h)
        extra = json.dumps({first: h[names[1]]})[1:-1]
        b = (text[:-1] + ", " + extra + "}").encode()
        return b + b" " * ((8 - len(b) % 8) % 8), data, None

    dupf = variant("duplicate-key", dup)
    probe("duplicate tensor name in header", ["convert", dupf, "-o", o("d.out.safetensors"), "--to", "peft", "-q"], o("d.out.safetensors"))

    def nan_alpha(h, data):
        k = next(k for k in h if k.endswith(".alpha"))
        a, b = h[k]["data_offsets"]
        dt = h[k]["dtype"]
        data[a:b] = struct.pack("<e", float("nan")) if dt == "F16" else struct.pack("<f", float("nan"))
        return json_bytes(h), data, None

    nanf = variant("nan-alpha", nan_alpha)
    probe("NaN alpha: fuse", ["fuse", "--base", BASE, nanf, "-o", o("n.fused.safetensors"), "-q"], o("n.fused.safetensors"))
    probe("NaN alpha: merge", ["merge", nanf, LORA, "-o", o("n.merged.safetensors"), "-q"], o("n.merged.safetensors"))

    def inf_alpha(h, data):
        k = next(k for k in h if k.endswith(".alpha"))
        a, b = h[k]["data_offsets"]
        data[a:b] = struct.pack("<e", float("inf")) if h[k]["dtype"] == "F16" else struct.pack("<f", float("inf"))
        return json_bytes(h), data, None

    inff = variant("inf-alpha", inf_alpha)
    probe("Inf alpha: convert", ["convert", inff, "-o", o("i.out.safetensors"), "--to", "peft", "-q"], o("i.out.safetensors"))

    def rank_mismatch(h, data):
        k = next(k for k in h if k.endswith(".lora_up.weight") and len(h[k]["shape"]) == 2)
        shp = h[k]["shape"]
        # reinterpret the up factor as [out/2, 2r]: same bytes, rank no longer matches down
        if shp[0] % 2 == 0:
            h[k]["shape"] = [shp[0] // 2, shp[1] * 2]
        return json_bytes(h), data, None

    rm = variant("rank-mismatch", rank_mismatch)
    probe("down/up rank mismatch", ["fuse", "--base", BASE, rm, "-o", o("r.fused.safetensors"), "-q"], o("r.fused.safetensors"))

    def wrong_shape(h, data):
        k = next(k for k in h if k.endswith(".lora_down.weight") and len(h[k]["shape"]) == 2)
        r, i = h[k]["shape"]
        h[k]["shape"] = [r * 2, i // 2] if i % 2 == 0 else [r, i]
        u = k.replace("lora_down", "lora_up")
        o_, r2 = h[u]["shape"]
        return json_bytes(h), data, None

    ws = variant("down-shape-wrong", wrong_shape)
    probe("down reshaped (rank 2r, in/2)", ["convert", ws, "-o", o("w.out.safetensors"), "--to", "kohya", "-q"], o("w.out.safetensors"))

    def rank0(h, data):
        # one module resized to rank 0: down [0, in], up [out, 0]; the data rewritten without the dropped bytes
        k = next(k for k in h if k.endswith(".lora_down.weight") and len(h[k]["shape"]) == 2)
        u = k.replace("lora_down", "lora_up")
        h[k]["shape"] = [0, h[k]["shape"][1]]
        h[u]["shape"] = [h[u]["shape"][0], 0]
        out, off = bytearray(), 0
        for name in sorted((n for n in h if n != "__metadata__"), key=lambda n: h[n]["data_offsets"][0]):
            a, b = h[name]["data_offsets"]
            chunk = b"" if name in (k, u) else data[a:b]
            h[name]["data_offsets"] = [off, off + len(chunk)]
            out += chunk
            off += len(chunk)
        return json_bytes(h), out, None

    r0 = variant("rank-0-module", rank0)
    probe("a module of rank 0 (zero-size factors): fuse", ["fuse", "--base", BASE, r0, "-o", o("r0.fused.safetensors"), "-q"], o("r0.fused.safetensors"), expect_fail=None)
    probe("a module of rank 0: convert", ["convert", r0, "-o", o("r0.conv.safetensors"), "--to", "peft", "-q"], o("r0.conv.safetensors"), expect_fail=None)

    def meta_object(h, data):
        h["__metadata__"] = {"ss_network_args": {"conv_dim": 4}, "modelspec.title": "x"}
        return json_bytes(h), data, None

    mo = variant("metadata-object", meta_object)
    probe("__metadata__ value not a string", ["inspect", mo], None)

    def alpha_two(h, data):
        k = next(k for k in h if k.endswith(".alpha"))
        a, b = h[k]["data_offsets"]
        h[k]["shape"] = [1]
        return json_bytes(h), data, None

    probe("alpha of shape [1] (allowed)", ["convert", variant("alpha-1", alpha_two), "-o", o("a1.conv.safetensors"), "--to", "peft", "-q"], o("a1.conv.safetensors"), expect_fail=False)
    probe("weight 0 on every input (fuse copies)", ["fuse", "--base", BASE, LORA + ":0", "-o", o("zero.fused.safetensors"), "-q"], o("zero.fused.safetensors"), expect_fail=None)

    # --- output paths
    copy = o("input-copy.safetensors")
    shutil.copy(LORA, copy)
    probe("output = input (convert)", ["convert", copy, "-o", copy, "--to", "kohya", "-q"], copy)
    probe("output = input via ./.. spelling", ["convert", copy, "-o", os.path.join(OUT, "..", os.path.basename(OUT), "input-copy.safetensors"), "--to", "kohya", "-q"], copy)
    link = o("link.safetensors")
    os.symlink(copy, link)
    probe("output = symlink to input", ["convert", copy, "-o", link, "--to", "kohya", "-q"], link)
    hard = o("hard.safetensors")
    os.link(copy, hard)
    probe("output = hard link to input", ["merge", copy, LORA, "-o", hard, "-q"], hard)
    probe("output = base (fuse)", ["fuse", "--base", copy, LORA, "-o", copy, "-q"], copy)
    basecopy = o("base-copy.safetensors")
    shutil.copy(BASE, basecopy)
    probe("fuse output = base", ["fuse", "--base", basecopy, LORA, "-o", basecopy, "-q"], basecopy)
    probe("fuse output = LoRA input", ["fuse", "--base", basecopy, copy, "-o", copy, "-q"], copy)
    ro = o("ro")
    os.makedirs(ro)
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
    # root ignores permissions: run this one as nobody when we are root
    nobody = "nobody" if os.geteuid() == 0 else None
    probe("read-only output directory" + (" (as nobody)" if nobody else ""), ["fuse", "--base", BASE, LORA, "-o", os.path.join(ro, "x.safetensors"), "-q"],
          os.path.join(ro, "x.safetensors"), as_user=nobody)
    probe("output directory missing", ["convert", LORA, "-o", o("nodir/x.safetensors"), "--to", "peft", "-q"], o("x"))
    os.makedirs(o("adir"))
    probe("output is a directory", ["convert", LORA, "-o", o("adir"), "--to", "peft", "-q"], o("adir"))

    # --- wrong family
    sdxl_lora = os.path.join(ROOT, "fixtures/sdxl/style-lora.kohya-sgm.safetensors")
    probe("SDXL LoRA on an SD1.5 base", ["fuse", "--base", BASE, sdxl_lora, "-o", o("arch.fused.safetensors"), "-q"], o("arch.fused.safetensors"))
    probe("SD1.5 + SDXL LoRAs merged", ["merge", LORA, sdxl_lora, "-o", o("arch.merged.safetensors"), "-q"], o("arch.merged.safetensors"))
    probe("SDXL LoRA converted --arch sd15", ["convert", sdxl_lora, "--arch", "sd15", "-o", o("arch.conv.safetensors"), "--to", "peft", "-q"], o("arch.conv.safetensors"))
    probe("DoRA convert without --base", ["convert", os.path.join(ROOT, "fixtures/adapters/dora-out.safetensors"), "-o", o("dora.conv.safetensors"), "--to", "kohya", "-q"], o("dora.conv.safetensors"))
    probe("bad weight ':abc'", ["merge", LORA + ":abc", LORA, "-o", o("w.merged.safetensors"), "-q"], o("w.merged.safetensors"))
    probe("weight 'unet=x'", ["fuse", "--base", BASE, LORA + ":unet=x", "-o", o("w.fused.safetensors"), "-q"], o("w.fused.safetensors"))
    probe("weight 'tex=1' (misspelt component)", ["fuse", "--base", BASE, LORA + ":tex=1", "-o", o("w2.fused.safetensors"), "-q"], o("w2.fused.safetensors"))
    probe("weight 'nan'", ["merge", LORA + ":nan", LORA, "-o", o("w3.merged.safetensors"), "-q"], o("w3.merged.safetensors"))
    probe("weight 'inf'", ["fuse", "--base", BASE, LORA + ":inf", "-o", o("w4.fused.safetensors"), "-q"], o("w4.fused.safetensors"))
    probe("weight '1e39' (beyond f32)", ["merge", LORA + ":1e39", LORA, "-o", o("w5.merged.safetensors"), "-q"], o("w5.merged.safetensors"))
    probe("missing input file", ["merge", o("nope.safetensors"), LORA, "-o", o("m.merged.safetensors"), "-q"], o("m.merged.safetensors"))

    # --- Ctrl-C mid-fuse (a full-size base so there is time to interrupt)
    big = os.path.join(ROOT, "bench/out/sd15-base.f16.safetensors")
    lcm = os.path.join(ROOT, "bench/out/sd15-lcm.f16.safetensors")
    if os.path.exists(big) and os.path.exists(lcm):
        for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            target = o(f"killed-{name}.safetensors")
            before = listing(OUT)
            p = subprocess.Popen(CLI + ["fuse", "--base", big, lcm, "-o", target, "-q", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(4)
            p.send_signal(sig)
            try:
                _, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            new = sorted(set(listing(OUT)) - set(before))
            ok = p.returncode != 0 and not new
            RESULTS.append((f"{name} mid-fuse (SD1.5 full)", "fuse", p.returncode, None, new, ok, err.strip()[:120]))
            print(f"{'ok  ' if ok else 'FAIL'} {name} mid-fuse rc={p.returncode} new={new} {err.strip()[:120]}", flush=True)
    else:
        print("skipped Ctrl-C probe: no bench/out/sd15-base.f16.safetensors or lcm-sd15.safetensors")
    # --- Ctrl-C mid-convert (rank-capped: spill file beside the output) and mid-merge
    loha = os.path.join(ROOT, "bench/out/adapters-sdxl-loha.f16.safetensors")
    sdxl_lcm = os.path.join(ROOT, "bench/out/sdxl-lcm.f16.safetensors")
    sdxl_style = os.path.join(ROOT, "bench/out/sdxl-style.f16.safetensors")
    runs = []
    if os.path.exists(loha):
        runs.append(("SIGINT mid-convert --rank 8 (SDXL LoHa)", ["convert", loha, "-o", o("killed-convert.safetensors"), "--to", "kohya", "--rank", "8", "-q", "--threads", "1"]))
    if os.path.exists(sdxl_lcm) and os.path.exists(sdxl_style):
        runs.append(("SIGINT mid-merge --rank 16 (SDXL)", ["merge", sdxl_lcm, sdxl_style + ":0.8", "--rank", "16", "-o", o("killed-merge.safetensors"), "-q", "--threads", "1"]))
    for name, args in runs:
        before = listing(OUT)
        p = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(5)
        still = p.poll() is None
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        new = sorted(set(listing(OUT)) - set(before))
        ok = still and p.returncode != 0 and not new
        RESULTS.append((name, args[0], p.returncode, None, new, ok, err.strip()[:120]))
        print(f"{'ok  ' if ok else 'FAIL'} {name} running={still} rc={p.returncode} new={new} {err.strip()[:120]}", flush=True)
    os.chmod(ro, stat.S_IRWXU)

    print("\n| case | command | exit | code | left behind | result |\n|---|---|---|---|---|---|")
    for case, cmd, rc, code, new, ok, _first in RESULTS:
        print(f"| {case} | `{cmd}` | {rc} | {code or '—'} | {', '.join(new) or 'nothing'} | {'ok' if ok else 'FAIL'} |")
    fails = sum(1 for r in RESULTS if not r[5])
    print(f"\n{len(RESULTS)} probes, {fails} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
