"""PyTorch peer for `lora-mix fuse`: what a user does in PyTorch to fuse a kohya LoRA into a checkpoint.

    /usr/bin/python3 bench/peer/fuse_torch.py BASE LORA WEIGHT MAP OUT

The arithmetic is diffusers' fuse_lora on its LoRA-compatible layers (huggingface/diffusers,
src/diffusers/models/lora.py, LoRACompatibleLinear._fuse_lora and LoRACompatibleConv._fuse_lora): the base weight
and both factors in f32, up scaled by network_alpha / rank, W' = W + lora_scale · up @ down (conv factors
flattened to 2-D), cast back to the weight's dtype. Re-implemented here for the benchmark (diffusers, peft and
the safetensors package are not installed), not copied.

What the script does, as a user's script would: load the whole base into memory (safetensors' load_file), fuse
every module, save the whole state dict (save_file; no fsync). Which base tensor (and which rows of it) each LoRA
module changes comes from MAP, a JSON list written by bench/fuse.ts from lora-mix's own plan: the name
conversion from kohya names to checkpoint keys is not what is being timed (diffusers does it while loading).

Torch runs on 2 threads (torch.set_num_threads(2)); the BLAS is printed at start (Debian's python3-torch uses
OpenBLAS).
"""

import json
import re
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit('/', 1)[0])
import st  # noqa: E402


def main():
    base_path, lora_path, weight, map_path, out_path = sys.argv[1:6]
    weight = float(weight)
    torch.set_num_threads(2)
    blas = re.findall(r'(?:BLAS|LAPACK)_INFO=[^,]*', torch.__config__.show())
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, {", ".join(blas)}', file=sys.stderr)
    t0 = time.perf_counter()
    base = st.SafeFile(base_path)
    state = {k: base.get(k) for k in base.keys()}
    meta = dict(base.metadata)
    base.close()
    t1 = time.perf_counter()
    lora = st.SafeFile(lora_path)
    plan = json.load(open(map_path))
    flops = 0
    for entry in plan:
        w = state[entry['key']]
        r0, r1 = entry['rows']
        name = entry['module']
        up = lora.get(f'{name}.lora_up.weight').float()
        down = lora.get(f'{name}.lora_down.weight').float()
        rank = down.shape[0]
        alpha = lora.get(f'{name}.alpha').float().item() if f'{name}.alpha' in lora.header else rank
        up = up * alpha / rank
        rows = w[r0:r1]
        w_orig = rows.float()
        fused = w_orig + weight * torch.mm(up.flatten(1), down.flatten(1)).reshape(w_orig.shape)
        w[r0:r1] = fused.to(w.dtype)
        flops += 2 * up.shape[0] * rank * down.flatten(1).shape[1]
    lora.close()
    t2 = time.perf_counter()
    st.save(state, out_path, meta)
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                'modules': len(plan),
                'gflop': flops / 1e9,
                'load_s': t1 - t0,
                'fuse_s': t2 - t1,
                'save_s': t3 - t2,
                'gflops': flops / 1e9 / (t2 - t1),
            }
        )
    )


if __name__ == '__main__':
    main()
