"""Peer for bench/extract.ts: kohya's LoRA extraction, re-implemented faithfully in torch (kohya's package and
`safetensors` cannot be installed here).

Upstream: kohya-ss/sd-scripts, networks/extract_lora_from_models.py, function `svd()` (read via the project's
source search, commit 06e8980). Its per-module loop, which this script follows step by step:
  * Δ = tuned.weight − org.weight of every module of kohya's LoRA network (networks/lora.py `create_network`:
    the Linear/1×1 children of Transformer2DModel, and with --conv_dim also ResnetBlock2D / Downsample2D /
    Upsample2D, 3×3 convs included), upcast to float (`diff.float()`; kohya's model loaders build the UNet in f32);
  * 3×3 convs flattened to [out, in·kh·kw], 1×1 convs squeezed to [out, in];
  * `U, S, Vh = torch.linalg.svd(mat)` (full_matrices left at its default, True), rank = min(dim, in, out);
  * U ← U[:, :rank] @ diag(S[:rank]), Vh ← Vh[:rank];
  * hi = torch.quantile(cat(U.flatten(), Vh.flatten()), clamp_quantile = 0.99); U, Vh clamped to [−hi, hi];
  * conv: up reshaped [out, rank, 1, 1], down [rank, in, kh, kw]; alpha = rank; saved with --save_precision
    (fp16 here, like lora-mix's default F16).
What differs, on purpose, for a machine with 23 GB shared by six people: kohya loads both whole models (its model
loaders, f32) and keeps every module's f32 Δ in a dict before the SVD loop; this script reads each module pair from
the files (bench/peer/st.py) just before its SVD, so its peak RSS is far below kohya's. The SVDs, the clamp and the
rounding — the time and the error — are kohya's. Module selection: checkpoint (LDM/SGM) keys of every UNet 2-D /
4-D weight except time_embed, label_emb, conv_in (input_blocks.0.0) and conv_out (out.2): the same set kohya's
network wraps with --conv_dim (278 modules for SD1.5, as lora-mix's LCM targets).

Not part of kohya, measured per module outside the timed part: the relative error ‖Δ − up·down‖_F / ‖Δ‖_F
of the factors as saved (clamped, fp16), and the same without the clamp (what the clamp silently adds); its
time is measured and subtracted from `seconds`.

  /usr/bin/python3 bench/peer/extract_kohya.py --base B --tuned T --dim 64 --conv-dim 64 [--modules I:J]
      [--threads 2] [--save-to OUT] [--json REPORT.json]
"""

import argparse
import json
import os
import re
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

UNET = 'model.diffusion_model.'
NOT_IN_NETWORK = re.compile(r'^model\.diffusion_model\.(time_embed|label_emb|input_blocks\.0\.0|out)\.')


def modules_of(f):
    """UNet weights kohya's LoRA network (with conv_dim) wraps, in file order."""
    keys = [
        k
        for k in f.keys()
        if k.startswith(UNET) and k.endswith('.weight') and len(f.meta(k)['shape']) in (2, 4) and not NOT_IN_NETWORK.match(k)
    ]
    return sorted(keys, key=lambda k: f.meta(k)['data_offsets'][0])


def kohya_module(diff, dim, conv_dim, clamp_quantile, save_dtype):
    """extract_lora_from_models.py svd(): one module's (up, down) as kohya computes and saves them."""
    conv2d = diff.dim() == 4
    kernel_size = None if not conv2d else tuple(diff.shape[2:4])
    conv2d_3x3 = conv2d and kernel_size != (1, 1)
    rank = dim if not conv2d_3x3 or conv_dim is None else conv_dim
    out_dim, in_dim = diff.shape[0:2]
    rank = min(rank, in_dim, out_dim)
    mat = diff
    if conv2d:
        mat = mat.flatten(start_dim=1) if conv2d_3x3 else mat.squeeze()
    U, S, Vh = torch.linalg.svd(mat)
    U = U[:, :rank]
    S = S[:rank]
    U = U @ torch.diag(S)
    Vh = Vh[:rank, :]
    unclamped = (U.clone(), Vh.clone())
    dist = torch.cat([U.flatten(), Vh.flatten()])
    hi_val = torch.quantile(dist, clamp_quantile)
    low_val = -hi_val
    U = U.clamp(low_val, hi_val)
    Vh = Vh.clamp(low_val, hi_val)
    if conv2d:
        U = U.reshape(out_dim, rank, 1, 1)
        Vh = Vh.reshape(rank, in_dim, kernel_size[0], kernel_size[1])
    return U.contiguous().to(save_dtype), Vh.contiguous().to(save_dtype), rank, unclamped


def rel_error(mat2d, up, down):
    """‖Δ − up·down‖_F / ‖Δ‖_F in f64, up/down as given (saved dtype or f32)."""
    a = mat2d.double()
    approx = up.reshape(up.shape[0], -1).double() @ down.reshape(down.shape[0], -1).double()
    n = torch.linalg.norm(a)
    return float(torch.linalg.norm(a - approx) / n) if n > 0 else 0.0, float(n), float(torch.linalg.norm(a - approx))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--base', required=True)
    ap.add_argument('--tuned', required=True)
    ap.add_argument('--dim', type=int, default=64)
    ap.add_argument('--conv-dim', type=int, default=64)
    ap.add_argument('--clamp-quantile', type=float, default=0.99)
    ap.add_argument('--modules', default=None, help='I:J, a slice of the module list (split long runs)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--time-limit', type=float, default=None, help='stop after the module that passes S seconds')
    ap.add_argument('--save-to', default=None)
    ap.add_argument('--json', default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    fb = st.SafeFile(args.base)
    ft = st.SafeFile(args.tuned)
    keys = modules_of(fb)
    total = len(keys)
    first = 0
    if args.modules:
        i, j = (int(x) if x else None for x in args.modules.split(':'))
        keys = keys[i:j]
        first = i or 0
    lora_sd = {}
    svd_seconds = 0.0
    error_seconds = 0.0
    norm2 = err2 = err2_unclamped = 0.0
    worst = (None, 0.0)
    per = []
    done = 0
    for k in keys:
        if args.time_limit is not None and time.perf_counter() - t0 - error_seconds > args.time_limit:
            break
        done += 1
        base = fb.get(k).float()
        tuned = ft.get(k).float()
        diff = tuned - base
        del base, tuned
        s = time.perf_counter()
        up, down, rank, (u0, v0) = kohya_module(diff, args.dim, args.conv_dim, args.clamp_quantile, torch.float16)
        e = time.perf_counter()
        svd_seconds += e - s
        name = 'lora_unet_' + k[len(UNET) : -len('.weight')].replace('.', '_')
        lora_sd[name + '.lora_up.weight'] = up
        lora_sd[name + '.lora_down.weight'] = down
        lora_sd[name + '.alpha'] = torch.tensor(float(rank)).to(torch.float16)
        # Not part of kohya (subtracted from the time): the error of the saved factors, and unclamped (f32).
        mat = diff.reshape(diff.shape[0], -1)
        rel, n, err = rel_error(mat, up, down)
        _, _, err0 = rel_error(mat, u0, v0)
        norm2 += n * n
        err2 += err * err
        err2_unclamped += err0 * err0
        if rel > worst[1]:
            worst = (k, rel)
        per.append({'key': k, 'shape': list(mat.shape), 'relError': rel, 'relErrorUnclamped': err0 / n if n > 0 else 0})
        del diff, mat, u0, v0
        error_seconds += time.perf_counter() - e
    if args.save_to:
        st.save(lora_sd, args.save_to, {'ss_network_module': 'networks.lora', 'ss_network_dim': str(args.dim)})
    seconds = time.perf_counter() - t0 - error_seconds
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = {
        'peer': 'kohya-ss/sd-scripts networks/extract_lora_from_models.py svd() (torch re-implementation)',
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'blas': re.findall(r'(?:BLAS|LAPACK)_INFO=\w+', torch.__config__.show()),
        'modulesTotal': total,
        'modules': done,
        'slice': f'{first}:{first + done}',
        'seconds': seconds,
        'svdSeconds': svd_seconds,
        'errorSeconds': error_seconds,
        'peakRssBytes': rss,
        'norm2': norm2,
        'err2': err2,
        'err2Unclamped': err2_unclamped,
        'relError': (err2 / norm2) ** 0.5 if norm2 > 0 else 0,
        'relErrorUnclamped': (err2_unclamped / norm2) ** 0.5 if norm2 > 0 else 0,
        'worst': {'key': worst[0], 'relError': worst[1]},
        'perModule': per,
    }
    text = json.dumps(report)
    if args.json:
        with open(args.json, 'w') as f:
            f.write(text)
    else:
        print(text)


if __name__ == '__main__':
    main()
