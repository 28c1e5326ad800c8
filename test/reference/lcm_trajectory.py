"""Provenance for the literals in test/sampler-trajectory.test.ts.

An independent float64 numpy re-derivation of diffusers' LCMScheduler (>= 0.24 behaviour), written from the
formulas in the project's LCM research notes (schedule, set_timesteps, boundary scalings, step), run on the
deterministic trajectory inputs:
  latent shape (2, 4, 4, 4), x[n] = ((7n mod 23) - 11) / 11
  model output 0.1*x + 0.05 + 1e-5*t
  step-i noise z_i[n] = (((5n + 11i) mod 19) - 9) / 9
Run: python3 test/reference/lcm_trajectory.py   (numpy only; prints the numbers pasted into the test)
"""
import json
import numpy as np

T = 1000
betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=np.float64) ** 2
acp = np.cumprod(1.0 - betas)


def schedule(n, s=50, strength=1.0):
    k = T // s
    origin = np.arange(1, int(s * strength) + 1) * k - 1
    assert len(origin) // n >= 1 and n <= s
    idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
    return origin[::-1][idx]


def scalings(t):
    st = t * 10.0
    return 0.25 / (st ** 2 + 0.25), st / (st ** 2 + 0.25) ** 0.5


def run(n, pred):
    ts = schedule(n)
    m = np.arange(128)
    x = (((7 * m) % 23) - 11) / 11.0
    den = []
    for i, t in enumerate(ts):
        out = 0.1 * x + 0.05 + 0.00001 * t
        a = acp[t]
        tp = ts[i + 1] if i + 1 < len(ts) else t
        ap = acp[tp]
        if pred == "epsilon":
            x0 = (x - np.sqrt(1 - a) * out) / np.sqrt(a)
        elif pred == "v_prediction":
            x0 = np.sqrt(a) * x - np.sqrt(1 - a) * out
        else:
            x0 = out
        cs, co = scalings(float(t))
        d = co * x0 + cs * x
        den.append(d)
        if i != len(ts) - 1:
            z = (((5 * m + 11 * i) % 19) - 9) / 9.0
            x = np.sqrt(ap) * d + np.sqrt(1 - ap) * z
        else:
            x = d
    return ts, x, den


res = {}
for n in (1, 2, 4, 8):
    for pred in ("epsilon", "v_prediction", "sample"):
        ts, x, den = run(n, pred)
        res[f"{n}/{pred}"] = {
            "timesteps": [int(t) for t in ts],
            "sum": float(x.sum()),
            "absSum": float(np.abs(x).sum()),
            "at": {str(j): float(x[j]) for j in (0, 1, 37, 127)},
            "denoised0": [float(d[0]) for d in den],
        }
print(json.dumps({"alphasCumprod": {str(t): float(acp[t]) for t in (0, 19, 259, 499, 759, 999)}, "runs": res}, indent=1))
