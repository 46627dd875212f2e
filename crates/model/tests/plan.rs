//! `Model::plan()` describes every matmul of the loaded model with its real packed size.

mod common;

use common::*;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::{LoadOptions, Model};

#[test]
fn plan_lists_every_weight_with_its_packed_bytes() {
    let model = Model::load(
        &model_dir("untied"),
        Kernels::detect().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let plan = model.plan();
    let t = &model.config().text;
    let head = plan.ops.iter().find(|o| o.scope == "lm_head").unwrap();
    assert_eq!(head.bytes, model.lm_head.weight.bytes() as u64);
    assert!(head
        .op
        .contains(&format!("({} <- {})", t.vocab_size, t.hidden_size)));
    let gate = plan
        .ops
        .iter()
        .find(|o| o.op.starts_with("mlp.gate|up_proj"))
        .unwrap();
    assert_eq!(gate.count, t.num_hidden_layers);
    let l0 = &model.language_model.layers[0];
    assert_eq!(
        gate.bytes,
        l0.mlp.dense().unwrap().gate_up_proj.weight.bytes() as u64
    );
    // Every text layer's linears are counted once per layer.
    let text_linear: u64 = model
        .language_model
        .layers
        .iter()
        .map(|l| {
            let (a, m) = (&l.self_attn, l.mlp.dense().unwrap());
            a.qkv_proj.weight.bytes()
                + a.o_proj.weight.bytes()
                + m.gate_up_proj.weight.bytes()
                + m.down_proj.weight.bytes()
        })
        .sum::<usize>() as u64;
    assert_eq!(model.language_model.linear_weight_bytes(), text_linear);
    let planned: u64 = plan
        .ops
        .iter()
        .filter(|o| o.scope == "language_model.layers.*" && o.kernel.starts_with("matmul"))
        .map(|o| o.bytes * o.count as u64)
        .sum();
    assert_eq!(planned, text_linear);
    assert_eq!(
        plan.kv_bytes_per_token,
        (t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * 4) as u64
    );
    let s = plan.to_string();
    assert!(s.contains("lm_head") && s.contains("visual.blocks.*") && s.contains("weights held"));
}
