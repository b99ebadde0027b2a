"""Write tests/data/step_cache/ (TeaCache step caching and --cfg-until) and run self-checks.

Usage (from the repository root, Debian's python3 with torch 1.13, numpy):

    /usr/bin/python3 tools/reference/make_step_cache_fixtures.py [--out tests/data] [--no-write]

The denoising loop of tools/reference/pipeline.py (rflow_sample) on the pipeline_tiny fixture's
denoiser, text embeddings and noise (tests/data/pipeline_tiny: 24x40, 17 frames, two prompts,
cfg 7), with 30 steps, for each case below. Writes tests/data/step_cache/:
    cases.json                name, cache threshold, cfg_until, and the schedule of the run: per
                              step 'R' (blocks ran) or 'C' (cached residual reused), lower case
                              for steps that ran the conditional half alone
    expected.safetensors      latents.<name> [2,4,5,3,5] F32 for every case

Self-checks (else nothing is written): threshold 0 and cfg_until 1 give exactly the plain loop;
each caching case skips some steps and runs the first and last; the cfg_until cases run the
expected number of CFG steps; a second run of every case is bit-identical.
"""

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import pipeline as PL  # noqa: E402
from safetensors_io import load_torch, save_file  # noqa: E402

STEPS = 30
CASES = [  # name, TeaCache threshold, cfg_until
    ("plain", 0.0, 1.0),
    ("teacache_0.1", 0.1, 1.0),
    ("teacache_0.2", 0.2, 1.0),
    ("teacache_0.5", 0.5, 1.0),
    ("cfg_until_0.6", 0.0, 0.6),
    ("teacache_0.2_cfg_until_0.8", 0.2, 0.8),
]
FAILS = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        FAILS.append(what)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    ap.add_argument("--no-write", action="store_true", help="only run the self-checks")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)

    src = os.path.join(REPO, "tests", "data", "pipeline_tiny")
    with open(os.path.join(src, "inputs.json")) as f:
        s = json.load(f)
    dit = PL.load_dit(os.path.join(src, "dit"))
    exp = load_torch(os.path.join(src, "expected.safetensors"))
    noise = load_torch(os.path.join(src, "noise.safetensors"))["noise"].to(torch.float32)
    y_cond, mask = exp["y_cond"], exp["mask"]
    P, H, W, F = noise.shape[0], s["height"], s["width"], s["num_frames"]
    y_null = dit.y_embedder.y_embedding[None].repeat(P, 1, 1)[:, None]
    y = torch.cat([y_cond, y_null], 0)
    f = lambda v: torch.tensor([float(v)] * P, dtype=torch.float32)  # noqa: E731
    timesteps = PL.sampling_timesteps(STEPS, P, H, W, F)

    def run(threshold, cfg_until):
        rec = {}
        with torch.no_grad():
            z = PL.rflow_sample(dit, noise.clone(), y, mask, timesteps, s["cfg_scale"], f(s["fps"]), f(H), f(W),
                                record=rec, cache_threshold=threshold, cfg_until=cfg_until)
        return z, rec["schedule"]

    results = {}
    for name, th, cu in CASES:
        z, sched = run(th, cu)
        z2, sched2 = run(th, cu)
        check(torch.equal(z, z2) and sched == sched2, "%s: second run bit-identical" % name)
        marks = sched.split(" ")
        print("      %-28s %s" % (name, sched))
        check(len(marks) == STEPS, "%s: one mark per step" % name)
        n_cfg = sum(1 for m in marks if m.isupper())
        want_cfg = min(STEPS, -(-int(round(cu * STEPS * 1000)) // 1000))
        check(n_cfg == want_cfg and all(m.isupper() for m in marks[:n_cfg]),
              "%s: %d CFG steps first (want %d)" % (name, n_cfg, want_cfg))
        cached = sum(1 for m in marks if m in "Cc")
        if th > 0:
            check(0 < cached < STEPS - 2 and marks[0] in "Rr" and marks[-1] in "Rr",
                  "%s: %d steps cached, first and last ran" % (name, cached))
        else:
            check(cached == 0, "%s: no step cached" % name)
        results[name] = (th, cu, sched, z)

    plain = results["plain"][3]
    with torch.no_grad():
        ref = PL.rflow_sample(dit, noise.clone(), y, mask, timesteps, s["cfg_scale"], f(s["fps"]), f(H), f(W))
    check(torch.equal(plain, ref), "threshold 0, cfg_until 1 == the plain loop")
    for name in results:
        if name != "plain":
            d = float((results[name][3] - plain).norm() / plain.norm())
            print("      %-28s rel. change of the latents vs plain: %.3e" % (name, d))

    if FAILS:
        print("%d check(s) failed" % len(FAILS))
        sys.exit(1)
    if args.no_write:
        print("all checks passed (nothing written)")
        return
    root = os.path.join(args.out, "step_cache")
    os.makedirs(root, exist_ok=True)
    cases = {"source": "tests/data/pipeline_tiny (dit, expected y_cond and mask, noise)", "steps": STEPS,
             "cfg_scale": s["cfg_scale"], "cases": [
                 {"name": n, "cache_threshold": th, "cfg_until": cu, "schedule": sched}
                 for n, (th, cu, sched, _) in results.items()]}
    with open(os.path.join(root, "cases.json"), "w") as fh:
        json.dump(cases, fh, indent=2)
        fh.write("\n")
    save_file({"latents." + n: r[3].contiguous() for n, r in results.items()},
              os.path.join(root, "expected.safetensors"), metadata={"fixture": "step_cache", "steps": str(STEPS)})
    print("wrote", root)


if __name__ == "__main__":
    main()
