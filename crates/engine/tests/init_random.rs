//! `init_random` writes checkpoints that a standard safetensors reader accepts, with every tensor of the
//! geometry, in shards with an index when asked.

use std::path::PathBuf;

use qwen3vl_engine::dev::init_random::{write_checkpoint, InitOptions, Preset};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-init-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn tiny_checkpoint_is_complete_and_readable() {
    let dir = temp_dir("single");
    let s = write_checkpoint(&dir, Preset::Tiny, &InitOptions::default()).unwrap();
    assert_eq!(s.shards, vec!["model.safetensors".to_string()]);
    for f in [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "chat_template.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(
        bytes.len() < 8_000_000,
        "tiny should be a few MB, is {}",
        bytes.len()
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let specs = Preset::Tiny.geometry().tensors();
    assert_eq!(st.len(), specs.len());
    for t in &specs {
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(v.shape(), t.shape.as_slice(), "{}", t.name);
        assert_eq!(v.dtype(), safetensors::Dtype::BF16);
        let vals: Vec<f32> = v
            .data()
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect();
        assert!(vals.iter().all(|x| x.is_finite()), "{}", t.name);
        if vals.len() > 1 {
            assert!(vals.iter().any(|&x| x != vals[0]), "{} is constant", t.name);
        }
    }
    // Same seed, same bytes; the directory now refuses a second write without force.
    let again = temp_dir("again");
    write_checkpoint(&again, Preset::Tiny, &InitOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(again.join("model.safetensors")).unwrap(),
        bytes
    );
    let err = write_checkpoint(&dir, Preset::Tiny, &InitOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["text_config"]["vocab_size"], 151936);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&again);
}

#[test]
fn sharded_checkpoint_has_index() {
    let dir = temp_dir("sharded");
    let opts = InitOptions {
        shard_bytes: 2_000_000,
        seed: 9,
        ..Default::default()
    };
    let s = write_checkpoint(&dir, Preset::Tiny, &opts).unwrap();
    assert!(s.shards.len() >= 2, "{:?}", s.shards);
    assert_eq!(
        s.shards[0],
        format!("model-00001-of-{:05}.safetensors", s.shards.len())
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["metadata"]["total_size"], s.weight_bytes);
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), s.tensors);
    for (name, file) in map {
        let bytes = std::fs::read(dir.join(file.as_str().unwrap())).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.tensor(name).is_ok(), "{name} not in {file}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
