"""Tiny random-weight Qwen3-VL checkpoints and per-stage reference activations for crates/model.

Writes, under `out_dir` (the repository's `testdata/`):
  model-tiny-tied/     a Hub-layout checkpoint (config.json in the legacy 4.57 rope spelling, tied embeddings)
  model-tiny-untied/   a Hub-layout checkpoint (config.json in the 5.x `rope_parameters` spelling, lm_head present)
  model-reference/     img_64x96.png, img_96x64.png, inputs.safetensors (pixel values [N,1536] per image file),
                       {tied,untied}_{text,image1,image2}.safetensors (named activations), cases.json

Each checkpoint has bf16 weights; the reference runs transformers in float32 on the bf16 values (`.float()`),
so the Rust engine's Precision::F32 should match it to ~1e-5. The vocabulary keeps every id the real tokenizer
can emit (151680 > 151668) with a tiny hidden size, so the checkpoints work end to end with the processor.

Activations are stored under the reference's module paths:
  visual.patch_embed [N,D], visual.pos_embed [N,D] (interpolated), visual.blocks.{i} [N,D],
  visual.deepstack_merger_list.{j} [N/4,O], visual.merger [N/4,O], language_model.embed [L,H] (after the
  scatter), language_model.layers.{l} [L,H] (after DeepStack injection, as the next layer sees it),
  language_model.norm [L,H], logits.sample [L,K] at columns logits.sample_cols [K], logits.top5_idx [L,5],
  logits.top5_val [L,5]; inputs: input_ids [L], position_ids [3,L], rope_delta [1], image_grid_thw [n,3].

Usage: python tools/reference/model_cases.py [OUT_DIR]   (default: testdata/ next to tools/)
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file

VOCAB = 151680  # > 151668, the largest id the tokenizer emits

# Two tiny geometries. Group sizes 3 and 4 (not 2), head_dim 16 and 24 (not 128), different deepstack indexes.
GEOMETRIES = {
    "tied": dict(
        legacy_rope=True,
        tie=True,
        text=dict(
            hidden_size=8, intermediate_size=24, num_hidden_layers=4, num_attention_heads=6,
            num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=5000000.0,
            mrope_section=[4, 2, 2],
        ),
        vision=dict(
            depth=3, hidden_size=32, num_heads=2, intermediate_size=48, num_position_embeddings=2304,
            deepstack_visual_indexes=[0, 2],
        ),
    ),
    "untied": dict(
        legacy_rope=False,
        tie=False,
        text=dict(
            hidden_size=8, intermediate_size=20, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=1, head_dim=24, rms_norm_eps=1e-5, rope_theta=1000000.0,
            mrope_section=[4, 4, 4],
        ),
        vision=dict(
            depth=3, hidden_size=48, num_heads=4, intermediate_size=40, num_position_embeddings=576,
            deepstack_visual_indexes=[1],
        ),
    ),
}

CASES = {
    "text": dict(images=[], prompt="Hello! Write one short sentence about the sea."),
    "image1": dict(images=["img_64x96.png"], prompt="Describe this image."),
    "image2": dict(images=["img_64x96.png", "img_96x64.png"], prompt="What differs between the two?"),
}

N_SAMPLE_COLS = 384
MAX_NEW_TOKENS = 8


def repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hf_config_dict(g):
    t, v = g["text"], g["vision"]
    text = dict(
        model_type="qwen3_vl_text", vocab_size=VOCAB, hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"], num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"], num_key_value_heads=t["num_key_value_heads"],
        head_dim=t["head_dim"], hidden_act="silu", max_position_embeddings=262144, rms_norm_eps=t["rms_norm_eps"],
        attention_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True,
        bos_token_id=151643, eos_token_id=151645, dtype="bfloat16",
        rope_parameters=dict(rope_type="default", rope_theta=t["rope_theta"], mrope_section=t["mrope_section"],
                             mrope_interleaved=True),
    )
    vision = dict(
        model_type="qwen3_vl", depth=v["depth"], hidden_size=v["hidden_size"], hidden_act="gelu_pytorch_tanh",
        intermediate_size=v["intermediate_size"], num_heads=v["num_heads"], in_channels=3, patch_size=16,
        spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=t["hidden_size"],
        num_position_embeddings=v["num_position_embeddings"],
        deepstack_visual_indexes=v["deepstack_visual_indexes"], initializer_range=0.02,
    )
    return dict(
        architectures=["Qwen3VLForConditionalGeneration"], model_type="qwen3_vl", text_config=text,
        vision_config=vision, image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        vision_end_token_id=151653, tie_word_embeddings=g["tie"], dtype="bfloat16",
    )


def to_legacy_rope(cfg):
    """The spelling of the released files (written by 4.57): rope_theta + rope_scaling in text_config."""
    t = cfg["text_config"]
    rp = t.pop("rope_parameters")
    t["rope_theta"] = rp["rope_theta"]
    t["rope_scaling"] = dict(mrope_interleaved=True, mrope_section=rp["mrope_section"], rope_type="default")
    return cfg


def randomize(model, seed):
    """Deterministic weights with healthy magnitudes (norm weights near 1, biases nonzero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "layernorm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or name.endswith("pos_embed.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def make_images(ref_dir):
    """Two small deterministic RGB images: smooth gradients plus a little noise."""
    rng = np.random.default_rng(7)
    for h, w in [(64, 96), (96, 64)]:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        img = np.stack([
            127 + 120 * np.sin(x / w * 3.1 + y / h * 1.3),
            127 + 120 * np.cos(y / h * 4.0 - x / w),
            255 * (x + y) / (h + w),
        ], axis=-1) + rng.normal(0, 12, (h, w, 3))
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
        Image.fromarray(img, "RGB").save(os.path.join(ref_dir, f"img_{h}x{w}.png"))


def load_image(path):
    """As the spec asks: PIL, EXIF orientation, alpha kept for the processor to composite."""
    im = Image.open(path)
    im = ImageOps.exif_transpose(im)
    im.load()
    return im


def write_checkpoint(name, g, root, seed):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    d = os.path.join(root, f"model-tiny-{name}")
    os.makedirs(d, exist_ok=True)
    cfg_dict = hf_config_dict(g)
    config = Qwen3VLConfig(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    if g["tie"]:
        model.tie_weights()
    randomize(model, seed)
    model = model.to(torch.bfloat16)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if g["tie"]:
        sd.pop("lm_head.weight", None)
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})

    if g["legacy_rope"]:
        cfg_dict = to_legacy_rope(cfg_dict)
    cfg_dict["transformers_version"] = "4.57.0.dev0" if g["legacy_rope"] else "5.23.0"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)

    # Tokenizer: the real one, shared with testdata/tokenizer by symlink (keeps the repository small).
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        p = os.path.join(d, fn)
        if os.path.lexists(p):
            os.remove(p)
        os.symlink(os.path.join("..", "tokenizer", fn), p)
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump(dict(
            image_processor_type="Qwen2VLImageProcessorFast", processor_class="Qwen3VLProcessor",
            size=dict(shortest_edge=4096, longest_edge=1048576), patch_size=16, temporal_patch_size=2,
            merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_rescale=True,
            rescale_factor=1 / 255, do_normalize=True, do_resize=True, resample=3, do_convert_rgb=True,
        ), f, indent=2)
    with open(os.path.join(d, "video_preprocessor_config.json"), "w") as f:
        json.dump(dict(
            video_processor_type="Qwen3VLVideoProcessor", processor_class="Qwen3VLProcessor",
            size=dict(shortest_edge=4096, longest_edge=1048576), patch_size=16, temporal_patch_size=2,
            merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], fps=2, min_frames=4,
            max_frames=768, do_sample_frames=True,
        ), f, indent=2)
    tmpl_path = os.path.join(repo_root(), "crates", "processor", "src", "chat_template.qwen3vl-instruct.jinja")
    if not os.path.exists(tmpl_path):
        tmpl_path = "/work/shared/spec/chat_template.qwen3vl-instruct.jinja"
    with open(tmpl_path) as f:
        tmpl = f.read()
    with open(os.path.join(d, "chat_template.json"), "w") as f:
        json.dump({"chat_template": tmpl}, f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump(dict(bos_token_id=151643, pad_token_id=151643, eos_token_id=[151645, 151643], do_sample=True,
                       temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0), f, indent=2)
    return d


def run_case(model, processor, ref_dir, case, cols):
    """One forward pass with hooks; returns (named tensors, input tensors)."""
    images = [load_image(os.path.join(ref_dir, fn)) for fn in case["images"]]
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": case["prompt"]}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images or None, return_tensors="pt")

    acts = {}
    hooks = []
    visual = model.model.visual
    lm = model.model.language_model

    def save(name):
        def hook(_mod, _inp, out):
            t = out[0] if isinstance(out, tuple) else out
            acts[name] = t.detach().float().reshape(-1, t.shape[-1]).clone()
        return hook

    hooks.append(visual.patch_embed.register_forward_hook(save("visual.patch_embed")))
    for i, b in enumerate(visual.blocks):
        hooks.append(b.register_forward_hook(save(f"visual.blocks.{i}")))
    for j, m in enumerate(visual.deepstack_merger_list):
        hooks.append(m.register_forward_hook(save(f"visual.deepstack_merger_list.{j}")))
    hooks.append(visual.merger.register_forward_hook(save("visual.merger")))
    hooks.append(lm.norm.register_forward_hook(save("language_model.norm")))

    def lm_pre(_mod, args, kwargs):
        e = kwargs.get("inputs_embeds")
        acts["language_model.embed"] = e.detach().float().reshape(-1, e.shape[-1]).clone()
    hooks.append(lm.register_forward_pre_hook(lm_pre, with_kwargs=True))

    # A decoder layer's output before DeepStack injection is not what the next layer sees; record the input of
    # layer l+1 (and the final norm's input) so `language_model.layers.{l}` is the post-injection stream.
    n_layers = len(lm.layers)
    for l in range(1, n_layers):
        def pre(_mod, args, kwargs, l=l):
            x = args[0] if args else kwargs["hidden_states"]
            acts[f"language_model.layers.{l - 1}"] = x.detach().float().reshape(-1, x.shape[-1]).clone()
        hooks.append(lm.layers[l].register_forward_pre_hook(pre, with_kwargs=True))

    def norm_pre(_mod, args):
        x = args[0]
        acts[f"language_model.layers.{n_layers - 1}"] = x.detach().float().reshape(-1, x.shape[-1]).clone()
    hooks.append(lm.norm.register_forward_pre_hook(norm_pre))

    with torch.no_grad():
        out = model(**inputs)
    for h in hooks:
        h.remove()

    # The interpolated position embedding, as the vision model computes it.
    if "pixel_values" in inputs:
        from transformers.vision_utils import get_vision_interpolation_indices_and_weights
        idx, w = get_vision_interpolation_indices_and_weights(
            inputs["image_grid_thw"], num_grid_per_side=visual.num_grid_per_side, mode="bilinear",
            align_corners=True, spatial_merge_size=visual.spatial_merge_size)
        with torch.no_grad():
            acts["visual.pos_embed"] = (visual.pos_embed(idx) * w[:, :, None]).sum(1).float()
    else:
        for k in [k for k in acts if k.startswith("visual.")]:
            del acts[k]

    logits = out.logits[0].float()  # [L, V]
    top = torch.topk(logits, 5, dim=-1)
    acts["logits.sample"] = logits[:, cols].contiguous()
    acts["logits.top5_idx"] = top.indices.to(torch.int64)
    acts["logits.top5_val"] = top.values
    acts["logits.sample_cols"] = cols

    ids = inputs["input_ids"]
    position_ids, delta = model.model.get_rope_index(
        ids, inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"))
    acts["input_ids"] = ids[0].to(torch.int64)
    acts["position_ids"] = position_ids[:, 0, :].to(torch.int64).contiguous()
    acts["rope_delta"] = delta.reshape(1).to(torch.int64)
    if "pixel_values" in inputs:
        acts["image_grid_thw"] = inputs["image_grid_thw"].to(torch.int64)

    with torch.no_grad():
        gen = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    new_ids = gen[0, ids.shape[1]:].tolist()
    pixel_values = inputs["pixel_values"].float() if "pixel_values" in inputs else None
    return acts, text, new_ids, pixel_values


def main(out_dir=None):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    root = out_dir or os.path.join(repo_root(), "testdata")
    ref_dir = os.path.join(root, "model-reference")
    if not os.path.exists(os.path.join(root, "tokenizer", "tokenizer.json")):
        raise SystemExit(f"{root}/tokenizer/tokenizer.json is missing (the checkpoints link to it)")
    os.makedirs(ref_dir, exist_ok=True)
    make_images(ref_dir)
    gcols = torch.Generator().manual_seed(11)
    cols = torch.randperm(VOCAB, generator=gcols)[:N_SAMPLE_COLS]
    # Always include the special ids and the low ids, where a tiny vocabulary bug would show.
    cols = torch.unique(torch.cat([cols, torch.arange(151643, 151669), torch.arange(0, 16)])).to(torch.int64)

    summary = {"vocab_size": VOCAB, "max_new_tokens": MAX_NEW_TOKENS, "geometries": {}, "cases": {}}
    inputs_store = {}
    for gi, (name, g) in enumerate(GEOMETRIES.items()):
        d = write_checkpoint(name, g, root, seed=1000 + gi)
        processor = AutoProcessor.from_pretrained(d)
        model = Qwen3VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32,
                                                                attn_implementation="eager")
        model.eval()
        summary["geometries"][name] = {"dir": os.path.basename(d)}
        for cname, case in CASES.items():
            acts, text, new_ids, pv = run_case(model, processor, ref_dir, case, cols)
            key = f"{name}_{cname}"
            save_file({k: v.contiguous() for k, v in acts.items()}, os.path.join(ref_dir, f"{key}.safetensors"))
            if pv is not None:
                # Pixel values per image file (a case's rows are its images' rows in prompt order).
                sizes = acts["image_grid_thw"].prod(-1).tolist()
                for fn, part in zip(case["images"], torch.split(pv, sizes)):
                    if fn in inputs_store:
                        assert torch.equal(inputs_store[fn], part), fn
                    inputs_store[fn] = part.contiguous()
            summary["cases"][key] = dict(
                geometry=name, model_dir=os.path.basename(d), images=case["images"], prompt=case["prompt"],
                rendered=text, input_ids=acts["input_ids"].tolist(), greedy_new_ids=new_ids,
                greedy_max_new_tokens=MAX_NEW_TOKENS,
            )
            print(f"{key}: L={acts['input_ids'].numel()} greedy={new_ids}", flush=True)
    save_file(inputs_store, os.path.join(ref_dir, "inputs.safetensors"))
    with open(os.path.join(ref_dir, "cases.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
