#!/usr/bin/env python3
"""Time to first token of PyTorch (transformers) on a video prompt, to set beside `qwen3vl generate --video`.

    python tools/bench/torch_video.py --model DIR --frames FRAME_DIR --fps 2 [--dtype float32] [--threads 2]

The frames (PNG/JPEG files of one directory, sorted by name, as `qwen3vl generate --video DIR --video-fps F`
reads them) are handed to the processor with their metadata (fps, frame count), sampled as transformers
samples (`do_sample_frames=True`: the checkpoint's fps, min/max frames), and the model runs one forward
over the chat-templated prompt (vision tower on every sampled frame, then prefill); the argmax of the last
position is the first token. Reported: the number of sampled frames, video tokens and prompt tokens (to
check that both engines did the same work), the processor's time, and TTFT (processor + forward), best
of --repeats after one warm-up, plus the cold first run.
"""

import argparse
import json

import torch_isa  # noqa: E402 (tools/bench/torch_isa.py, next to this script)
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--frames", required=True, help="directory of frames, sorted by name")
    ap.add_argument("--fps", type=float, required=True, help="frames per second of the frame directory")
    ap.add_argument("--question", default="Describe this video.")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    torch_isa.add_argument(ap)
    args = ap.parse_args()

    import numpy as np
    torch_isa.apply(args.isa)
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model)
    model = Qwen3VLForConditionalGeneration.from_pretrained(args.model, dtype=dtype).eval()
    load_s = time.perf_counter() - t0

    names = sorted(n for n in os.listdir(args.frames) if n.lower().endswith((".png", ".jpg", ".jpeg")))
    if not names:
        sys.exit(f"no frames in {args.frames}")

    def first_token():
        t0 = time.perf_counter()
        frames = np.stack([np.asarray(Image.open(os.path.join(args.frames, n)).convert("RGB")) for n in names])
        meta = VideoMetadata(total_num_frames=len(frames), fps=args.fps, frames_indices=list(range(len(frames))))
        content = [{"type": "video"}, {"type": "text", "text": args.question}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        inputs = processor(text=[text], videos=[frames], video_metadata=[meta], do_sample_frames=True,
                           return_tensors="pt", videos_kwargs={"cap_pixels_per_frame": False})
        t1 = time.perf_counter()
        with torch.no_grad():
            logits = model(**inputs, logits_to_keep=1).logits
        tok = int(logits[0, -1].argmax())
        t2 = time.perf_counter()
        return t1 - t0, t2 - t0, inputs, tok

    _, cold_s, inputs, _ = first_token()
    runs = [first_token() for _ in range(max(args.repeats, 1))]
    pre_s = min(r[0] for r in runs)
    ttft_s = min(r[1] for r in runs)
    grid = inputs["video_grid_thw"][0].tolist()
    video_tokens = grid[0] * grid[1] * grid[2] // 4
    out = {
        "dtype": args.dtype,
        "threads": args.threads,
        "frames_in": len(names),
        "video_grid_thw": grid,
        "video_tokens": video_tokens,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "isa": torch_isa.describe(torch),
        "load_s": load_s,
        "preprocess_s": pre_s,
        "ttft_s": ttft_s,
        "ttft_cold_s": cold_s,
        "torch": torch.__version__,
        "load_avg": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"PyTorch {torch.__version__} ({torch_isa.describe(torch)}), {args.dtype}, {args.threads} threads, {args.model}")
        print(f"  frames {len(names)} -> grid {grid} = {video_tokens} video tokens, prompt {out['prompt_tokens']} tokens")
        print(f"  preprocess {pre_s:.2f} s, time to first token {ttft_s:.2f} s (cold {cold_s:.2f} s)")
        print(f"  load average {out['load_avg']:.2f}")


if __name__ == "__main__":
    main()
