#!/usr/bin/env python3
"""End-to-end speed of PyTorch (transformers, bf16) on a Qwen3-VL checkpoint, measured like `qwen3vl bench`.

    python tools/bench/torch_e2e.py --model /work/ckpt-2b --threads 2 [--json]

What is measured (same synthetic inputs as `qwen3vl bench`, crates/engine/src/bench.rs):
- load_s:        from_pretrained(dtype=bfloat16) + AutoProcessor.from_pretrained.
- vision_s:      the vision tower on a synthetic WxH gradient image (model.get_image_features on the
                 processor's pixel_values; preprocessing excluded, reported apart as preprocess_s).
                 Best of --repeats after one warm-up call; the cold first call is vision_cold_s (ours
                 times its first call).
- prefill_tok_s: one forward over --prompt-tokens synthetic text ids (1000 + (i*7919) % 90000, as ours),
                 logits of the last position only, fresh KV cache. Best of --repeats after a warm-up.
- decode_tok_s:  --gen-tokens greedy steps (argmax, EOS ignored) continuing that prompt with the KV cache
                 (a manual loop of forward calls: no generate() overhead, no sampling work).
- ttft_s:        time to first token of an image + short question, starting from the PNG file on disk:
                 PIL open, chat template + image processor, forward (vision + prefill), argmax. Best of
                 --repeats after a warm-up.
- peak_rss_mib:   peak resident set size of the process (ru_maxrss).
- cores_used:    per phase, process CPU seconds / wall seconds: below --threads means other processes
                 took the cores (the figures are then pessimistic).

Threads: torch.set_num_threads(--threads) (intra-op) and one inter-op thread. The load average before and
after is in the JSON: other processes on the machine slow both engines; compare runs made side by side.
"""

import argparse
import json

import torch_isa  # noqa: E402 (tools/bench/torch_isa.py, next to this script)
import os
import platform
import resource
import sys
import tempfile
import time


def synthetic_image(w, h):
    """The gradient `qwen3vl bench` encodes: (x*255/w, y*255/h, (x^y)&255)."""
    import numpy as np
    from PIL import Image

    x = np.arange(w, dtype=np.int64)[None, :].repeat(h, 0)
    y = np.arange(h, dtype=np.int64)[:, None].repeat(w, 1)
    rgb = np.stack([x * 255 // w, y * 255 // h, (x ^ y) & 0xFF], -1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def synthetic_ids(n):
    """The prompt `qwen3vl bench` prefills: ordinary text token ids."""
    return [1000 + (i * 7919) % 90_000 for i in range(n)]


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_size(s):
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--image-size must be WxH (e.g. 640x480), got {s!r}")
    if w < 1 or h < 1:
        raise SystemExit(f"--image-size must be WxH with W, H >= 1, got {s!r}")
    return w, h


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory (Hugging Face layout)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--image-size", default="640x480", help="WxH of the synthetic image")
    ap.add_argument("--question", default="Describe this image in one sentence.",
                    help="the text after the image for the time-to-first-token measurement")
    ap.add_argument("--repeats", type=int, default=1, help="measured runs per phase after the warm-up (best kept)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--attn", default=None, help="attn_implementation (default: transformers' choice, sdpa)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    torch_isa.add_argument(ap)
    args = ap.parse_args()
    if args.prompt_tokens < 1 or args.gen_tokens < 1 or args.repeats < 1 or args.threads < 1:
        raise SystemExit("--prompt-tokens, --gen-tokens, --repeats and --threads must be at least 1")
    w, h = parse_size(args.image_size)

    load_before = os.getloadavg()
    torch_isa.apply(args.isa)
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import transformers
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
    from transformers.cache_utils import DynamicCache
    from PIL import Image

    dtype = getattr(torch, args.dtype)
    kw = {"dtype": dtype}
    if args.attn:
        kw["attn_implementation"] = args.attn

    # 0. Load.
    t0 = time.perf_counter()
    model = Qwen3VLForConditionalGeneration.from_pretrained(args.model, **kw)
    processor = AutoProcessor.from_pretrained(args.model)
    load_s = time.perf_counter() - t0
    model.eval()
    inner = model.model
    text_cfg = model.config.text_config
    best = min

    cores = {}  # phase -> CPU seconds / wall seconds of its last measured run (2.0 = both cores busy)

    def timed(f, phase=None):
        t, c = time.perf_counter(), time.process_time()
        r = f()
        dt = time.perf_counter() - t
        if phase:
            cores[phase] = round((time.process_time() - c) / dt, 2)
        return dt, r

    with torch.inference_mode():
        # 1. Vision tower on the synthetic image.
        img = synthetic_image(w, h)
        preprocess_s, vin = timed(lambda: processor.image_processor(images=[img], return_tensors="pt"))
        pv, grid = vin["pixel_values"], vin["image_grid_thw"]

        def vision():
            out = model.get_image_features(pixel_values=pv, image_grid_thw=grid)
            return out.pooler_output

        vision_cold_s, emb = timed(vision)
        image_tokens = int(sum(e.shape[0] for e in emb))
        vision_s = best(timed(vision, "vision")[0] for _ in range(args.repeats))

        # 2. Prefill of the synthetic prompt (fresh cache each time), 3. greedy decode continuing it.
        n = args.prompt_tokens
        ids = torch.tensor([synthetic_ids(n)], dtype=torch.long)

        def pos3(start, length):
            p = torch.arange(start, start + length, dtype=torch.long)
            return p.view(1, 1, -1).expand(3, 1, -1)

        def prefill():
            inner.rope_deltas = None
            cache = DynamicCache(config=model.config)
            out = model(input_ids=ids, position_ids=pos3(0, n), past_key_values=cache, use_cache=True,
                        logits_to_keep=1)
            return cache, out.logits[0, -1]

        def decode(cache, logits, steps):
            for _ in range(steps):
                tok = logits.argmax(-1).view(1, 1)
                p = cache.get_seq_length()
                out = model(input_ids=tok, position_ids=pos3(p, 1), past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
                logits = out.logits[0, -1]
            return logits

        cache, logits = prefill()  # warm-up
        decode(cache, logits, min(4, args.gen_tokens))
        del cache
        prefill_times, decode_times = [], []
        decoded_finite = True
        for _ in range(args.repeats):
            dt, (cache, logits) = timed(prefill, "prefill")
            prefill_times.append(dt)
            dt, last = timed(lambda: decode(cache, logits, args.gen_tokens), "decode")
            decode_times.append(dt)
            decoded_finite &= bool(torch.isfinite(last.float()).all())
            del cache
        prefill_s, decode_s = best(prefill_times), best(decode_times)

        # 4. Time to first token: image file + question -> first token id.
        tmp = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
        tmp.close()
        img.save(tmp.name)

        def first_token():
            inner.rope_deltas = None
            im = Image.open(tmp.name).convert("RGB")
            msgs = [{"role": "user", "content": [{"type": "image", "image": im},
                                                 {"type": "text", "text": args.question}]}]
            inp = processor.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                                return_dict=True, return_tensors="pt")
            out = model(**inp, logits_to_keep=1)
            return int(out.logits[0, -1].argmax()), int(inp["input_ids"].shape[1])

        first_token()  # warm-up
        ttft = [timed(first_token, "ttft") for _ in range(args.repeats)]
        ttft_s = best(t for t, _ in ttft)
        ttft_prompt_tokens = ttft[0][1][1]
        os.unlink(tmp.name)

    report = {
        "engine": "pytorch",
        "torch": torch.__version__,
        "isa": torch_isa.describe(torch),
        "transformers": transformers.__version__,
        "dtype": args.dtype,
        "attn_implementation": model.config._attn_implementation,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_s": load_s,
        "preprocess_s": preprocess_s,
        "vision_s": vision_s,
        "vision_cold_s": vision_cold_s,
        "image_size": [w, h],
        "image_tokens": image_tokens,
        "prefill_tokens": n,
        "prefill_s": prefill_s,
        "prefill_tok_s": n / prefill_s,
        "decode_tokens": args.gen_tokens,
        "decode_s": decode_s,
        "decode_tok_s": args.gen_tokens / decode_s,
        "decode_logits_finite": decoded_finite,
        "ttft_s": ttft_s,
        "ttft_prompt_tokens": ttft_prompt_tokens,
        "peak_rss_mib": peak_rss_mib(),
        "repeats": args.repeats,
        "cores_used": cores,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "model": os.path.abspath(args.model),
        "text_layers": text_cfg.num_hidden_layers,
        "hidden_size": text_cfg.hidden_size,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    rows = [
        ("load", f"{load_s:.2f} s", ""),
        (f"vision {w}x{h} ({image_tokens} tokens)", f"{vision_s:.2f} s",
         f"cold {vision_cold_s:.2f} s, preprocess {preprocess_s * 1e3:.0f} ms"),
        (f"prefill {n} tokens", f"{n / prefill_s:.1f} tok/s", f"{prefill_s:.2f} s"),
        (f"decode {args.gen_tokens} tokens", f"{args.gen_tokens / decode_s:.2f} tok/s", f"{decode_s:.2f} s"),
        (f"time to first token (image + question, {ttft_prompt_tokens} tokens)", f"{ttft_s:.2f} s", ""),
        ("peak RSS", f"{report['peak_rss_mib']:.0f} MiB", ""),
    ]
    print(f"PyTorch {torch.__version__}, transformers {transformers.__version__}, {args.dtype}, "
          f"{report['threads']} threads, attn {report['attn_implementation']}, {args.model}")
    width = max(len(r[0]) for r in rows)
    for name, val, extra in rows:
        print(f"  {name:<{width}}  {val:>14}  {extra}")
    print(f"  cores used (CPU s / wall s; {args.threads} = no contention): {cores}")
    print(f"  load average before {load_before[0]:.2f}, after {report['loadavg_after'][0]:.2f}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
