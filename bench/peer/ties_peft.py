"""PEFT's ties_svd on two kohya LoRA files, module by module: the peer of `lora-mix merge --method ties --rank K`.

A faithful torch transcription (written for this benchmark, not copied) of
  * huggingface/peft src/peft/utils/merge_utils.py: `magnitude_based_pruning` (k = int(density·numel), topk of |t|),
    `prune`, `calculate_majority_sign_mask` (S = Σ t or Σ sign t; +1 where S ≥ 0), `disjoint_merge`
    (Σ masked weighted / clamp(count, 1)) and `ties` (prune each, elect on the unweighted stack, weight, merge);
  * src/peft/tuners/lora/model.py `_svd_generalized_task_arithmetic_weighted_adapter`: per module the task tensors
    are get_delta_weight(adapter) = scaling·B·A (conv flattened to out × in·kh·kw), combined by `ties`, then
    `torch.linalg.svd(delta, full_matrices=…)`, U[:, :k]·diag(S[:k]) → lora_B, Vh[:k] → lora_A (no clamp: PEFT's
    default svd_clamp=None). PEFT's default is full_matrices=True; `--reduced` passes False (same factors, less
    work). The weight is w_i (PEFT PR #3111's fix; main before it used w_i·scaling_i on top of scaling_i).
Inputs are read with bench/peer/st.py (no safetensors package on Debian). Torch runs on 2 threads.

Only the PEFT computation per module is timed (reading factors and the comparison are not). With `--compare OURS`
(a lora-mix output of the same merge) it also reports, over the modules processed, the relative Frobenius
differences ‖ours − peft‖/‖peft‖ and of each against the exact dense TIES result D (before any SVD).

Usage: /usr/bin/python3 bench/peer/ties_peft.py A B --weights 1 0.8 --density 0.2 --rank 64
                          [--majority-sign total] [--start I --stride S --count N] [--reduced] [--compare OURS]
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st import SafeFile  # noqa: E402


def magnitude_based_pruning(t, density):
    mask = torch.zeros_like(t).reshape(-1)
    k = int(density * t.numel())
    top = torch.topk(t.abs().reshape(-1), k=k, largest=True)
    mask[top[1]] = 1
    return t * mask.reshape(t.shape)


def prune(t, density):
    return t if density >= 1 else magnitude_based_pruning(t, density)


def majority_sign_mask(stack, method):
    sign = stack.sign()
    s = stack.sum(dim=0) if method == 'total' else sign.sum(dim=0)
    elected = torch.where(s >= 0, 1, -1)
    return sign == elected


def disjoint_merge(weighted, mask):
    return (weighted * mask).sum(dim=0) / torch.clamp(mask.sum(dim=0), min=1.0)


def ties(tensors, weights, density, method):
    stack = torch.stack([prune(t, density) for t in tensors], dim=0)
    mask = majority_sign_mask(stack, method)
    w = weights.view(weights.shape + (1,) * (stack.dim() - weights.dim()))
    return disjoint_merge(stack * w, mask)


def modules_of(f):
    """kohya module name → (down key, up key, alpha key or None)."""
    out = {}
    for k in f.keys():
        if k.endswith('.lora_down.weight'):
            name = k[: -len('.lora_down.weight')]
            alpha = f'{name}.alpha'
            out[name] = (k, f'{name}.lora_up.weight', alpha if alpha in f.header else None)
    return out


def task_tensor(f, keys):
    """scaling·B·A as a 2-D out × in·kh·kw f32 matrix (get_delta_weight, conv flattened)."""
    down = f.get(keys[0]).float()
    up = f.get(keys[1]).float()
    r = down.shape[0]
    alpha = float(f.get(keys[2]).float().reshape(-1)[0]) if keys[2] else float(r)
    return (alpha / r) * (up.reshape(up.shape[0], r) @ down.reshape(r, -1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('a')
    p.add_argument('b')
    p.add_argument('--weights', type=float, nargs=2, default=[1.0, 1.0])
    p.add_argument('--density', type=float, default=0.2)
    p.add_argument('--rank', type=int, default=64)
    p.add_argument('--majority-sign', default='total')
    p.add_argument('--start', type=int, default=0)
    p.add_argument('--count', type=int, default=1 << 30)
    p.add_argument('--stride', type=int, default=1)
    p.add_argument('--reduced', action='store_true')
    p.add_argument('--compare')
    p.add_argument('--json')
    args = p.parse_args()
    torch.set_num_threads(2)
    fa, fb = SafeFile(args.a), SafeFile(args.b)
    ours = SafeFile(args.compare) if args.compare else None
    ma, mb = modules_of(fa), modules_of(fb)
    mo = modules_of(ours) if ours is not None else {}
    names = sorted(set(ma) | set(mb))[args.start :: args.stride][: args.count]
    weights = torch.tensor(args.weights, dtype=torch.float32)
    seconds = 0.0
    sums = {'ours_peft': 0.0, 'peft2': 0.0, 'ours_D': 0.0, 'peft_D': 0.0, 'D2': 0.0}
    elements = 0
    # Per module: ‖ours − D‖/‖peft − D‖ − 1 (how far our rank-K error is above the optimal one PEFT's full SVD
    # gives) and ‖ours − peft‖/‖peft‖.
    per_module = []
    for name in names:
        ta = task_tensor(fa, ma[name]) if name in ma else None
        tb = task_tensor(fb, mb[name]) if name in mb else None
        shape = (ta if ta is not None else tb).shape
        tensors = [t if t is not None else torch.zeros(shape) for t in (ta, tb)]
        elements += shape[0] * shape[1]
        t0 = time.perf_counter()
        delta = ties(tensors, weights, args.density, args.majority_sign)
        U, S, Vh = torch.linalg.svd(delta, full_matrices=not args.reduced)
        new_b = U[:, : args.rank] @ torch.diag(S[: args.rank])
        new_a = Vh[: args.rank, :]
        seconds += time.perf_counter() - t0
        if ours is not None:
            ok = mo.get(name)
            peft = new_b @ new_a
            mine = task_tensor(ours, ok) if ok else torch.zeros(shape)
            sums['ours_peft'] += float(((mine - peft) ** 2).sum())
            sums['peft2'] += float((peft**2).sum())
            sums['ours_D'] += float(((mine - delta) ** 2).sum())
            sums['peft_D'] += float(((peft - delta) ** 2).sum())
            sums['D2'] += float((delta**2).sum())
            e_ours = float(((mine - delta) ** 2).sum()) ** 0.5
            e_peft = float(((peft - delta) ** 2).sum()) ** 0.5
            d_op = float(((mine - peft) ** 2).sum()) ** 0.5 / max(float((peft**2).sum()) ** 0.5, 1e-30)
            per_module.append((name, e_ours / e_peft - 1 if e_peft > 0 else 0.0, d_op))
    result = {
        'peer': 'peft ties_svd transcription',
        'modules': len(names),
        'start': args.start,
        'seconds': seconds,
        'elements': elements,
        'stride': args.stride,
        'full_matrices': not args.reduced,
        'threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'blas': [ln.strip() for ln in torch.__config__.show().splitlines() if 'BLAS' in ln or 'LAPACK' in ln],
        'sums': sums if ours is not None else None,
    }
    if per_module:
        worst = max(per_module, key=lambda x: x[1])
        result['excess_max'] = worst[1]
        result['excess_max_module'] = worst[0]
        result['excess_mean'] = sum(x[1] for x in per_module) / len(per_module)
        result['ours_peft_rel_max'] = max(x[2] for x in per_module)
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, 'a') as fh:
            fh.write(line + '\n')


if __name__ == '__main__':
    main()
