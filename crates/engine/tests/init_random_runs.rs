//! A random checkpoint written by `init_random` loads in the model and gives finite, varied activations.

use qwen3vl_engine::dev::init_random::{write_checkpoint, InitOptions, Preset};
use qwen3vl_kernels::Kernels;
use qwen3vl_model::{
    KvCache, LoadOptions, Logits, Model, Positions, Precision, RunState, VisionInput,
};

#[test]
fn tiny_random_checkpoint_runs_with_varied_logits() {
    let dir = std::env::temp_dir().join(format!("qwen3vl-init-runs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_checkpoint(&dir, Preset::Tiny, &InitOptions::default()).unwrap();
    let k = Kernels::detect().unwrap();
    let model = Model::load(
        &dir,
        k,
        &LoadOptions {
            precision: Precision::F32,
            progress: None,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<u32> = vec![151644, 872, 198, 9707, 0, 9645, 825, 151645, 198];
    let pos = Positions::text(0, ids.len());
    let mut cache = KvCache::new(&model.config().text, 64);
    let mut st = RunState::new();
    let logits = model
        .forward(&ids, pos.as_ref(), None, &mut cache, &mut st, Logits::All)
        .unwrap();
    let v = model.vocab_size();
    assert_eq!(logits.len(), ids.len() * v);
    assert!(logits.iter().all(|x| x.is_finite()));
    // Each row: standard deviation in a useful range (spread, not saturated), rows differ.
    for r in 0..ids.len() {
        let row = &logits[r * v..(r + 1) * v];
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / v as f64;
        let sd = (row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v as f64).sqrt();
        assert!((0.5..8.0).contains(&sd), "row {r}: sd {sd}");
    }
    assert_ne!(&logits[..v], &logits[v..2 * v]);

    // Vision tower on a 64×64-pixel image (grid 1×4×4 → 4 merged tokens).
    let n = 16;
    let pixel_values: Vec<f32> = (0..n * 1536)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let img = VisionInput {
        pixel_values,
        grid_thw: [1, 4, 4],
    };
    let out = model.encode_images(std::slice::from_ref(&img)).unwrap();
    let h = model.config().text.hidden_size;
    assert_eq!(out.embeds.len(), 4 * h);
    assert_eq!(out.deepstack.len(), 2);
    for x in std::iter::once(&out.embeds).chain(&out.deepstack) {
        assert!(x.iter().all(|v| v.is_finite()));
        let sd = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        assert!((0.05..20.0).contains(&sd), "vision rms {sd}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
