//! Times the vector ops on the shapes of tools/bench/torch_ops.py, single-threaded, at one level, and
//! writes JSON {"isa": .., "results": {op: {shape: best_us}}} for tools/bench/ops_compare.py.
//!
//!     cargo run --release -p qwen3vl-kernels --example ops_table -- [out.json] [--isa avx2]
//!
//! Shapes: "4x32x512" (128 rows of 512), "2048" (one row), "512x2048", "1200x1024"; elementwise ops use
//! the total length. rope_half reads a shape (.., C) as (rows, C/128 heads, head_dim 128).

use qwen3vl_kernels::isa::Isa;
use qwen3vl_kernels::Kernels;
use std::time::Instant;

const SHAPES: [(&str, usize, usize); 4] = [
    ("4x32x512", 128, 512),
    ("2048", 1, 2048),
    ("512x2048", 512, 2048),
    ("1200x1024", 1200, 1024),
];

/// The fastest of 11 samples of the time per call, in microseconds; each sample runs for at least ~2 ms.
/// (The minimum, not the median: the machine is shared, and neighbours only ever add time.)
fn time_us(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((2e-3 / once).ceil() as usize).clamp(1, 100_000);
    let mut samples: Vec<f64> = (0..11)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[0]
}

/// A zeroed buffer of `len` values starting on a 64-byte boundary (torch's CPU allocator aligns to 64 bytes
/// too; a zmm load from a 16-byte-aligned Vec splits a cache line every time).
struct Aligned<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}
impl<T: Copy + Default> Aligned<T> {
    fn new(len: usize) -> Self {
        let buf = vec![T::default(); len + 64];
        let align = 64 / std::mem::size_of::<T>();
        let off = (align - (buf.as_ptr() as usize / std::mem::size_of::<T>()) % align) % align;
        Aligned { buf, off, len }
    }
    fn from(v: &[T]) -> Self {
        let mut a = Self::new(v.len());
        a.copy_from_slice(v);
        a
    }
}
impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}
impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out_path = None;
    let mut k = Kernels::detect().expect("kernels");
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--isa" {
            k = Kernels::new(Isa::parse(&args[i + 1]).expect("isa")).expect("level");
            i += 1;
        } else {
            out_path = Some(args[i].clone());
        }
        i += 1;
    }
    // one thread, as torch_ops.py sets torch to (the default pool would split ops of 64K+ elements)
    let k = k.with_threads(1);
    let mut results: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    let mut put = |op: &str, shape: &str, us: f64| {
        eprintln!("{op:>22} {shape:>10} {us:>10.2} us");
        match results.iter_mut().find(|(o, _)| o == op) {
            Some((_, v)) => v.push((shape.to_string(), us)),
            None => results.push((op.to_string(), vec![(shape.to_string(), us)])),
        }
    };
    for (name, rows, n) in SHAPES {
        let len = rows * n;
        let mut g = 0x1234_5678u32;
        let mut rnd = |lo: f32, hi: f32| {
            g ^= g << 13;
            g ^= g >> 17;
            g ^= g << 5;
            lo + (hi - lo) * (g >> 8) as f32 / (1u32 << 24) as f32
        };
        let a = Aligned::from(&(0..len).map(|_| rnd(-4.0, 4.0)).collect::<Vec<f32>>());
        let b = Aligned::from(&(0..len).map(|_| rnd(-4.0, 4.0)).collect::<Vec<f32>>());
        let w = Aligned::from(&(0..n).map(|_| rnd(0.5, 1.5)).collect::<Vec<f32>>());
        let bias = Aligned::from(&(0..n).map(|_| rnd(-1.0, 1.0)).collect::<Vec<f32>>());
        let mut o = Aligned::<f32>::new(len);
        let mut o2 = Aligned::<f32>::new(len);
        let mut h = Aligned::<u16>::new(len);
        k.f32_to_bf16(&a, &mut h).unwrap();
        let mut dw = Aligned::<f32>::new(n);
        let mut db = Aligned::<f32>::new(n);

        put("add", name, time_us(|| k.add(&a, &b, &mut o).unwrap()));
        put("mul", name, time_us(|| k.mul(&a, &b, &mut o).unwrap()));
        put("scale", name, time_us(|| k.scale(&a, 0.5, &mut o).unwrap()));
        put(
            "dot",
            name,
            time_us(|| {
                std::hint::black_box(k.dot(&a, &b).unwrap());
            }),
        );
        put(
            "sum",
            name,
            time_us(|| {
                std::hint::black_box(k.sum(&a).unwrap());
            }),
        );
        put(
            "max",
            name,
            time_us(|| {
                std::hint::black_box(k.max(&a).unwrap());
            }),
        );
        put(
            "f32_to_bf16",
            name,
            time_us(|| k.f32_to_bf16(&a, &mut h).unwrap()),
        );
        put(
            "bf16_to_f32",
            name,
            time_us(|| k.bf16_to_f32(&h, &mut o).unwrap()),
        );
        put(
            "round_bf16",
            name,
            time_us(|| k.round_bf16(&a, &mut o).unwrap()),
        );
        put(
            "rms_norm",
            name,
            time_us(|| k.rms_norm(&a, &w, 1e-6, &mut o).unwrap()),
        );
        put(
            "layer_norm",
            name,
            time_us(|| k.layer_norm(&a, &w, &bias, 1e-6, &mut o).unwrap()),
        );
        put(
            "normalize",
            name,
            time_us(|| k.normalize_rows(&a, n, 1e-12, &mut o).unwrap()),
        );
        put(
            "softmax",
            name,
            time_us(|| k.softmax(&a, n, 1.0, None, &mut o).unwrap()),
        );
        put(
            "gelu_tanh",
            name,
            time_us(|| k.gelu_tanh(&a, &mut o).unwrap()),
        );
        put(
            "gelu_erf",
            name,
            time_us(|| k.gelu_erf(&a, &mut o).unwrap()),
        );
        put("silu", name, time_us(|| k.silu(&a, &mut o).unwrap()));
        put("relu", name, time_us(|| k.relu(&a, &mut o).unwrap()));
        put(
            "swiglu",
            name,
            time_us(|| k.swiglu(&a, &b, &mut o).unwrap()),
        );
        let (heads, hd) = (n / 128, 128);
        let cos: Vec<f32> = (0..rows * hd / 2)
            .map(|i| (i as f32 * 0.01).cos())
            .collect();
        let sin: Vec<f32> = (0..rows * hd / 2)
            .map(|i| (i as f32 * 0.01).sin())
            .collect();
        o.copy_from_slice(&a);
        put(
            "rope_half",
            name,
            time_us(|| k.rope_half(&mut o, heads, hd, &cos, &sin).unwrap()),
        );
        // backward
        put(
            "gelu_tanh_backward",
            name,
            time_us(|| k.gelu_tanh_backward(&a, &b, &mut o).unwrap()),
        );
        put(
            "gelu_erf_backward",
            name,
            time_us(|| k.gelu_erf_backward(&a, &b, &mut o).unwrap()),
        );
        put(
            "silu_backward",
            name,
            time_us(|| k.silu_backward(&a, &b, &mut o).unwrap()),
        );
        put(
            "relu_backward",
            name,
            time_us(|| k.relu_backward(&a, &b, &mut o).unwrap()),
        );
        put(
            "swiglu_backward",
            name,
            time_us(|| k.swiglu_backward(&a, &b, &b, &mut o, &mut o2).unwrap()),
        );
        k.softmax(&a, n, 1.0, None, &mut o2).unwrap();
        put(
            "softmax_backward",
            name,
            time_us(|| k.softmax_backward(&o2, n, &b, &mut o).unwrap()),
        );
        put(
            "rms_norm_backward",
            name,
            time_us(|| {
                k.rms_norm_backward(&a, &w, 1e-6, &b, &mut o, &mut dw)
                    .unwrap()
            }),
        );
        put(
            "layer_norm_backward",
            name,
            time_us(|| {
                k.layer_norm_backward(&a, &w, 1e-6, &b, &mut o, &mut dw, &mut db)
                    .unwrap()
            }),
        );
    }
    let body: Vec<String> = results
        .iter()
        .map(|(op, v)| {
            let s: Vec<String> = v
                .iter()
                .map(|(sh, us)| format!("\"{sh}\": {us:.3}"))
                .collect();
            format!("    \"{op}\": {{{}}}", s.join(", "))
        })
        .collect();
    let json = format!(
        "{{\n  \"engine\": \"qwen3vl\",\n  \"isa\": \"{}\",\n  \"threads\": 1,\n  \"results\": {{\n{}\n  }}\n}}\n",
        k.isa().name(),
        body.join(",\n")
    );
    match out_path {
        Some(p) => std::fs::write(&p, json).expect("write json"),
        None => print!("{json}"),
    }
}
