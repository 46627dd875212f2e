//! Preprocessing of the 1365x2048 reference JPEG (decode + resize + normalize + patchify), single thread,
//! to compare with `tools/bench/torch_preprocess.py` (transformers' processor at one torch thread).
//!
//!     cargo bench -p qwen3vl-processor --bench preprocess

use criterion::{criterion_group, criterion_main, Criterion};
use qwen3vl_kernels::Kernels;
use qwen3vl_processor::Processor;
use std::hint::black_box;
use std::path::PathBuf;

fn bench(c: &mut Criterion) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/processor");
    let bytes = std::fs::read(data.join("images/rgb_1365x2048.jpg")).unwrap();
    let mut g = c.benchmark_group("preprocess_1365x2048_jpeg");
    g.sample_size(20);
    for k in Kernels::all_available() {
        let p = Processor::from_dir(&data.join("checkpoint"))
            .unwrap()
            .with_kernels(k);
        let img = p.load_image_bytes(&bytes).unwrap();
        g.bench_function(format!("full/{}", k.isa()), |b| {
            b.iter(|| {
                let img = p.load_image_bytes(black_box(&bytes)).unwrap();
                black_box(p.preprocess_image(&img).unwrap())
            })
        });
        g.bench_function(format!("resize_normalize_patchify/{}", k.isa()), |b| {
            b.iter(|| black_box(p.preprocess_image(black_box(&img)).unwrap()))
        });
        if k.isa() == Kernels::detect().unwrap().isa() {
            g.bench_function("decode", |b| {
                b.iter(|| black_box(p.load_image_bytes(black_box(&bytes)).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
