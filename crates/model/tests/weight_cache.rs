//! The packed-weight cache: a second load maps the file written by the first and gives the bits of an
//! uncached load; truncated, corrupt and stale files (checkpoint or config changed) are noted and rebuilt.
//! Every test caches into its own temporary directory.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::{
    CacheOutcome, KvCache, LinearWeight, LoadOptions, Logits, Model, Precision, QuantFormat,
    RunState, WeightCache,
};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-wcache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of testdata checkpoint `geometry` (config + weights), so its files can be touched.
fn checkpoint(geometry: &str, name: &str) -> PathBuf {
    let d = temp_dir(name);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model_dir(geometry).join(f), d.join(f)).unwrap();
    }
    d
}

fn load(dir: &Path, cache: WeightCache, precision: Precision, quant: Option<QuantFormat>) -> Model {
    Model::load(
        dir,
        Kernels::detect().unwrap(),
        &LoadOptions {
            precision,
            quant,
            weight_cache: cache,
            ..Default::default()
        },
    )
    .expect("load")
}

/// Logits (L, V) of the tied model's image case: the vision tower and every decoder weight run.
fn logits(model: &Model) -> Vec<u32> {
    let r = Reference::load("tied_image1");
    let ids = r.input_ids();
    let ims = images("tied_image1", &r);
    let vis = model.encode_images(&ims).unwrap();
    let mut cache = KvCache::new(&model.config().text, ids.len());
    let mut st = RunState::new();
    let l = model
        .forward(
            &ids,
            r.positions().as_ref(),
            Some(&vis),
            &mut cache,
            &mut st,
            Logits::All,
        )
        .unwrap();
    assert!(l.iter().any(|&v| v != 0.0) && l.iter().all(|v| v.is_finite()));
    l.iter().map(|v| v.to_bits()).collect()
}

/// The one cache file in `cache`.
fn cache_file(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Whether every packed weight of the model is mapped from the cache (else every one is its own copy).
fn all_mapped(model: &Model) -> Option<bool> {
    let mut seen = Vec::new();
    let mut see = |w: &LinearWeight| {
        if let LinearWeight::Packed(p) = w {
            seen.push(p.is_shared());
        }
    };
    see(&model.lm_head.weight);
    see(&model.visual.patch_embed.proj.weight);
    for b in &model.visual.blocks {
        for l in [
            &b.attn.qkv,
            &b.attn.proj,
            &b.mlp.linear_fc1,
            &b.mlp.linear_fc2,
        ] {
            see(&l.weight);
        }
    }
    for l in &model.language_model.layers {
        see(&l.self_attn.qkv_proj.weight);
        see(&l.self_attn.o_proj.weight);
        if let Some(m) = l.mlp.dense() {
            see(&m.gate_up_proj.weight);
            see(&m.down_proj.weight);
        }
    }
    assert!(seen.len() > 4);
    let first = seen[0];
    seen.iter().all(|&s| s == first).then_some(first)
}

fn written(model: &Model) -> PathBuf {
    match &model.weight_cache().outcome {
        CacheOutcome::Written { path, bytes } => {
            assert!(*bytes > 0);
            let note = model.weight_cache().notes.last().unwrap();
            assert!(note.starts_with("packed weights cached: "), "{note}");
            path.clone()
        }
        o => panic!(
            "expected a written cache, got {o:?} {:?}",
            model.weight_cache().notes
        ),
    }
}

fn hit(model: &Model) -> u64 {
    match &model.weight_cache().outcome {
        CacheOutcome::Hit { bytes, .. } => {
            assert!(
                model.weight_cache().notes.is_empty(),
                "{:?}",
                model.weight_cache().notes
            );
            *bytes
        }
        o => panic!(
            "expected a cache hit, got {o:?} {:?}",
            model.weight_cache().notes
        ),
    }
}

/// First load writes, second maps in place with the bits of an uncached load, in both precisions (the
/// panels do not depend on it: one file serves both).
#[test]
fn second_load_maps_the_cache_with_identical_logits() {
    let ck = checkpoint("tied", "hit-ck");
    let cdir = temp_dir("hit-cache");
    let c = WeightCache::Dir(&cdir);
    for precision in [Precision::Fast, Precision::F32] {
        let plain = load(&ck, WeightCache::Off, precision, None);
        assert_eq!(plain.weight_cache().outcome, CacheOutcome::Off);
        assert_eq!(all_mapped(&plain), Some(false));
        let want = logits(&plain);
        let first = load(&ck, c, precision, None);
        if precision == Precision::Fast {
            let path = written(&first);
            assert_eq!(path, cache_file(&cdir));
            assert!(path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(".qwpk"));
        } else {
            hit(&first);
        }
        assert_eq!(logits(&first), want);
        let second = load(&ck, c, precision, None);
        let bytes = hit(&second);
        assert_eq!(all_mapped(&second), Some(true));
        let packed: u64 = second
            .plan()
            .ops
            .iter()
            .filter(|o| o.layout.starts_with("packed"))
            .map(|o| o.count as u64 * o.bytes)
            .sum();
        assert!(
            bytes > 0 && bytes <= packed,
            "{bytes} mapped, {packed} packed"
        );
        assert_eq!(logits(&second), want, "{precision:?}");
    }
    // quantized text weights: another file; the vision tower's packed weights come from it next time
    let q = load(&ck, c, Precision::F32, Some(QuantFormat::Q8));
    written(&q);
    let q2 = load(&ck, c, Precision::F32, Some(QuantFormat::Q8));
    hit(&q2);
    assert_eq!(logits(&q2), logits(&q));
    assert_eq!(std::fs::read_dir(&cdir).unwrap().count(), 2);
    let _ = std::fs::remove_dir_all(&ck);
    let _ = std::fs::remove_dir_all(&cdir);
}

fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Truncated, corrupt (table bytes, a bounds-violating entry with a valid checksum, the magic) and
/// stale-keyed files are ignored with a note naming the reason, rebuilt, and the next load hits again.
#[test]
fn corrupt_or_truncated_cache_is_detected_and_rebuilt() {
    let ck = checkpoint("tied", "bad-ck");
    let cdir = temp_dir("bad-cache");
    let c = WeightCache::Dir(&cdir);
    let want = logits(&load(&ck, WeightCache::Off, Precision::F32, None));
    let path = written(&load(&ck, c, Precision::F32, None));
    let good = std::fs::read(&path).unwrap();
    let le = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let t_off = le(&good, 24) as usize;
    let name_len = u32::from_le_bytes(good[t_off + 8..t_off + 12].try_into().unwrap()) as usize;
    // the first entry's blob offset, its table checksum fixed up
    let mut far = good.clone();
    let at = t_off + 12 + name_len + 18;
    far[at..at + 8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    let sum = fnv64(&far[t_off..]);
    far[40..48].copy_from_slice(&sum.to_le_bytes());
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let mut magic = good.clone();
    magic[0] = b'X';
    let mut key = good.clone();
    key[56] ^= 0x20;
    let cases: [(&str, Vec<u8>); 5] = [
        ("truncated", good[..good.len() - 1].to_vec()),
        ("table checksum mismatch", flipped),
        ("is not an aligned range of the data section", far),
        ("bad magic", magic),
        ("stale", key),
    ];
    for (why, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let m = load(&ck, c, Precision::F32, None);
        let notes = &m.weight_cache().notes;
        assert!(
            notes[0].contains("ignored")
                && notes[0].contains(why)
                && notes[0].contains("rebuilding"),
            "{why}: {notes:?}"
        );
        assert_eq!(written(&m), path);
        assert_eq!(all_mapped(&m), Some(false));
        assert_eq!(logits(&m), want, "{why}");
        let again = load(&ck, c, Precision::F32, None);
        hit(&again);
        assert_eq!(logits(&again), want, "{why}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), good);
    let _ = std::fs::remove_dir_all(&ck);
    let _ = std::fs::remove_dir_all(&cdir);
}

/// A checkpoint file with a new modification time or size, or a changed config.json, makes the file
/// stale (the note names what changed); it is rewritten in the same slot.
#[test]
fn changed_checkpoint_invalidates_the_cache() {
    let ck = checkpoint("tied", "stale-ck");
    let cdir = temp_dir("stale-cache");
    let c = WeightCache::Dir(&cdir);
    let path = written(&load(&ck, c, Precision::F32, None));
    hit(&load(&ck, c, Precision::F32, None));
    // a writer's temporary file: of a dead process (pid over Linux's limit) removed, of a live one kept
    let tmp = |pid: u32| PathBuf::from(format!("{}.tmp{pid}", path.display()));
    for pid in [4_294_967, 1] {
        std::fs::write(tmp(pid), b"partial").unwrap();
    }
    let st = ck.join("model.safetensors");
    let f = std::fs::File::options().write(true).open(&st).unwrap();
    let t = f.metadata().unwrap().modified().unwrap();
    f.set_modified(t + std::time::Duration::from_secs(3))
        .unwrap();
    drop(f);
    let m = load(&ck, c, Precision::F32, None);
    let note = &m.weight_cache().notes[0];
    assert!(
        note.contains("stale") && note.contains("file model.safetensors"),
        "{note}"
    );
    assert_eq!(written(&m), path);
    #[cfg(target_os = "linux")]
    assert!(!tmp(4_294_967).exists() && tmp(1).exists());
    std::fs::remove_file(tmp(1)).unwrap();
    hit(&load(&ck, c, Precision::F32, None));
    // config.json rewritten with the same values (a trailing newline): still a new key
    let cfg = ck.join("config.json");
    let mut text = std::fs::read(&cfg).unwrap();
    text.push(b'\n');
    std::fs::write(&cfg, text).unwrap();
    let m = load(&ck, c, Precision::F32, None);
    let note = &m.weight_cache().notes[0];
    assert!(
        note.contains("stale") && note.contains("config.json"),
        "{note}"
    );
    written(&m);
    assert_eq!(cache_file(&cdir), path);
    let _ = std::fs::remove_dir_all(&ck);
    let _ = std::fs::remove_dir_all(&cdir);
}

/// A Mixture-of-Experts checkpoint: each expert's packed weights (sliced from fused tensors) come back
/// from the cache by name.
#[test]
fn moe_experts_are_cached() {
    let ck = checkpoint("moe", "moe-ck");
    let cdir = temp_dir("moe-cache");
    let c = WeightCache::Dir(&cdir);
    let r = Reference::load("moe_tied_text");
    let run = |m: &Model| {
        let ids = r.input_ids();
        let mut cache = KvCache::new(&m.config().text, ids.len());
        let mut st = RunState::new();
        let l = m
            .forward(
                &ids,
                r.positions().as_ref(),
                None,
                &mut cache,
                &mut st,
                Logits::All,
            )
            .unwrap();
        l.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let want = run(&load(&ck, WeightCache::Off, Precision::Fast, None));
    let first = load(&ck, c, Precision::Fast, None);
    written(&first);
    let second = load(&ck, c, Precision::Fast, None);
    hit(&second);
    assert_eq!(run(&first), want);
    assert_eq!(run(&second), want);
    let _ = std::fs::remove_dir_all(&ck);
    let _ = std::fs::remove_dir_all(&cdir);
}
