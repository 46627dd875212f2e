"""Tiny random-weight Qwen3-VL-MoE checkpoints and reference activations for crates/model (spec 1.3).

Writes, under `out_dir` (the repository's `testdata/`):
  model-tiny-moe/           E=8 experts, top-2, moe_intermediate 16, layer 1 in mlp_only_layers,
                            decoder_sparse_step 1; experts in the layout transformers 5.23 holds and saves,
                            (E, 2I, H) and (E, H, I); config.json as transformers 5.23 writes it; tied embeddings
  model-tiny-moe-released/  E=6, top-3, moe_intermediate 12, decoder_sparse_step 2 (layers 1 and 3 sparse),
                            norm_topk_prob false (transformers renormalizes anyway); experts in the released
                            checkpoints' layout (E, H, 2I) and (E, I, H); the 4.57 config spelling; untied
  model-reference/moe_{tied,released}_text.safetensors   named activations of one text-only prompt

Small on purpose: a vocabulary of 2048 (the inputs are token ids, not text; the special ids are moved inside
it) and a one-block vision tower, so each checkpoint is ~150 KB. Each checkpoint is loaded back with
`from_pretrained` and must give the parameters of the model that wrote it (transformers reads both layouts).
The reference runs in float32 on the bf16 weights, as model_cases.py does.

Stored per case (the names the Rust parity tests read, as model_cases.py): input_ids [L], position_ids [3,L],
language_model.embed [L,H], language_model.layers.{l} [L,H], language_model.norm [L,H], logits.sample [L,V]
at logits.sample_cols [V] (every column), logits.top5_idx [L,5], logits.top5_val [L,5],
moe.layers.{l}.router_top_idx [L,k] (the experts transformers picked, for a test naming a routing difference).

Usage: python tools/reference/generate.py moe
"""

import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_cases import randomize, repo_root, to_legacy_rope  # noqa: E402

VOCAB = 2048
L = 24
SPECIAL = dict(image_token_id=2040, video_token_id=2041, vision_start_token_id=2042, vision_end_token_id=2043)

VARIANTS = {
    "tied": dict(
        dir="model-tiny-moe", released_layout=False, tie=True,
        text=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=5000000.0,
                  mrope_section=[2, 1, 1], num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                  decoder_sparse_step=1, mlp_only_layers=[1]),
    ),
    "released": dict(
        dir="model-tiny-moe-released", released_layout=True, tie=False,
        text=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=8, rms_norm_eps=1e-5, rope_theta=1000000.0,
                  mrope_section=[2, 1, 1], num_experts=6, num_experts_per_tok=3, moe_intermediate_size=12,
                  decoder_sparse_step=2, mlp_only_layers=[], norm_topk_prob=False),
    ),
}

VISION = dict(model_type="qwen3_vl_moe", depth=1, hidden_size=16, hidden_act="gelu_pytorch_tanh",
              intermediate_size=16, num_heads=1, in_channels=3, patch_size=16, spatial_merge_size=2,
              temporal_patch_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0],
              initializer_range=0.02)


def config_dict(v):
    t = dict(v["text"])
    rope = dict(rope_type="default", rope_theta=t.pop("rope_theta"), mrope_section=t.pop("mrope_section"),
                mrope_interleaved=True)
    text = dict(model_type="qwen3_vl_moe_text", vocab_size=VOCAB, hidden_act="silu",
                max_position_embeddings=262144, attention_bias=False, attention_dropout=0.0,
                initializer_range=0.02, use_cache=True, bos_token_id=0, eos_token_id=1, dtype="bfloat16",
                rope_parameters=rope, **t)
    vision = dict(VISION, out_hidden_size=t["hidden_size"])
    return dict(architectures=["Qwen3VLMoeForConditionalGeneration"], model_type="qwen3_vl_moe",
                text_config=text, vision_config=vision, tie_word_embeddings=v["tie"], dtype="bfloat16",
                **SPECIAL)


def randomize_experts(model, seed):
    """Fan-in scaling per expert row ((E, 2I, H): H; (E, H, I): I); router rows std 1 so routing is decisive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=g))


def write_checkpoint(root, v, seed):
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    d = os.path.join(root, v["dir"])
    os.makedirs(d, exist_ok=True)
    cfg = config_dict(v)
    config = Qwen3VLMoeConfig(**{k: x for k, x in cfg.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(config)
    if v["tie"]:
        model.tie_weights()
    randomize(model, seed)
    randomize_experts(model, seed + 1)
    model = model.to(torch.bfloat16)
    sd = {k: x.contiguous() for k, x in model.state_dict().items()}
    if v["tie"]:
        sd.pop("lm_head.weight", None)
    if v["released_layout"]:
        for k in list(sd):
            if k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj"):
                sd[k] = sd[k].transpose(1, 2).contiguous()
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    if v["released_layout"]:
        cfg = to_legacy_rope(cfg)
        cfg["transformers_version"] = "4.57.0.dev0"
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    else:
        # what transformers 5.23 itself writes
        model.config.save_pretrained(d)
    return d, {k: x.float() for k, x in model.state_dict().items()}


def run_case(model, ids):
    acts = {}
    hooks = []
    lm = model.model.language_model

    def lm_pre(_mod, args, kwargs):
        e = kwargs.get("inputs_embeds")
        acts["language_model.embed"] = e.detach().float().reshape(-1, e.shape[-1]).clone()
    hooks.append(lm.register_forward_pre_hook(lm_pre, with_kwargs=True))
    for li, layer in enumerate(lm.layers):
        def out_hook(_mod, _inp, out, li=li):
            t = out[0] if isinstance(out, tuple) else out
            acts[f"language_model.layers.{li}"] = t.detach().float().reshape(-1, t.shape[-1]).clone()
        hooks.append(layer.register_forward_hook(out_hook))
        if hasattr(layer.mlp, "gate"):
            def router_hook(_mod, _inp, out, li=li):
                acts[f"moe.layers.{li}.router_top_idx"] = out[2].to(torch.int64).clone()
            hooks.append(layer.mlp.gate.register_forward_hook(router_hook))
    hooks.append(lm.norm.register_forward_hook(
        lambda _m, _i, out: acts.__setitem__("language_model.norm", out.detach().float().reshape(-1, out.shape[-1]))))
    with torch.no_grad():
        out = model(input_ids=ids[None, :])
    for h in hooks:
        h.remove()
    logits = out.logits[0].float()
    top = torch.topk(logits, 5, dim=-1)
    acts["logits.sample"] = logits.contiguous()
    acts["logits.sample_cols"] = torch.arange(VOCAB, dtype=torch.int64)
    acts["logits.top5_idx"] = top.indices.to(torch.int64)
    acts["logits.top5_val"] = top.values
    acts["input_ids"] = ids.to(torch.int64)
    acts["position_ids"] = torch.arange(L, dtype=torch.int64)[None, :].expand(3, L).contiguous()
    return acts


def main(out_dir=None):
    from transformers import Qwen3VLMoeForConditionalGeneration

    torch.set_num_threads(1)
    root = out_dir or os.path.join(repo_root(), "testdata")
    ref_dir = os.path.join(root, "model-reference")
    os.makedirs(ref_dir, exist_ok=True)
    ids = torch.randint(2, 2040, (L,), generator=torch.Generator().manual_seed(5))
    for vi, (name, v) in enumerate(VARIANTS.items()):
        d, written = write_checkpoint(root, v, seed=2000 + 10 * vi)
        loaded = Qwen3VLMoeForConditionalGeneration.from_pretrained(d, dtype=torch.float32,
                                                                    attn_implementation="eager")
        loaded.eval()
        # transformers read the stored layout back into the weights it wrote (as float32)
        got = loaded.state_dict()
        assert sorted(got) == sorted(written), f"{name}: parameter names differ"
        for k, x in written.items():
            assert torch.equal(got[k], x), f"{name}: {k} reloaded differently"
        acts = run_case(loaded, ids)
        save_file({k: x.contiguous() for k, x in acts.items()}, os.path.join(ref_dir, f"moe_{name}_text.safetensors"))
        print(f"moe_{name}: greedy top-1 {acts['logits.top5_idx'][:, 0].tolist()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
