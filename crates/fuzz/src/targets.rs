//! The fuzz targets: each runs one parser on bytes (and, when it accepts them, what the engine does next
//! with the result). `true`: accepted, `false`: refused with an error. A panic, a hang or an allocation
//! over the budget is a bug.

use std::path::PathBuf;
use std::sync::OnceLock;

use qwen3vl_processor::{Content, ImageConfig, Message, Processor};

mod quant;
mod request;
mod video;

pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> bool,
    pub seeds: fn() -> Vec<Vec<u8>>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "config",
        run: config,
        seeds: || {
            vec![
                include_bytes!("../../../testdata/model-tiny-tied/config.json").to_vec(),
                include_bytes!("../../../testdata/model-tiny-untied/config.json").to_vec(),
            ]
        },
    },
    Target {
        name: "preprocessor_config",
        run: preprocessor_config,
        seeds: || {
            vec![
                include_bytes!("../../../testdata/processor/checkpoint/preprocessor_config.json")
                    .to_vec(),
            ]
        },
    },
    Target {
        name: "generation_config",
        run: generation_config,
        seeds: || {
            vec![
                include_bytes!("../../../testdata/model-tiny-tied/generation_config.json").to_vec(),
            ]
        },
    },
    Target {
        name: "safetensors",
        run: safetensors,
        seeds: || vec![safetensors_seed()],
    },
    Target {
        name: "safetensors_index",
        run: safetensors_index,
        seeds: || vec![INDEX_SEED.as_bytes().to_vec()],
    },
    Target {
        name: "image",
        run: image,
        seeds: || {
            vec![
                include_bytes!("../../../testdata/processor/images/rgb_20x30.png").to_vec(),
                include_bytes!("../../../testdata/processor/images/exif6_40x24.jpg").to_vec(),
                include_bytes!("../../../testdata/processor/images/gif_trns_30x44.gif").to_vec(),
                include_bytes!("../../../testdata/processor/images/bmp_30x44.bmp").to_vec(),
                include_bytes!("../../../testdata/processor/images/la_30x40.png").to_vec(),
                include_bytes!("../../../testdata/processor/images/progressive_45x61.jpg").to_vec(),
                include_bytes!("../../../testdata/processor/cmyk/cmyk_21x13.jpg").to_vec(),
            ]
        },
    },
    Target {
        name: "chat_template",
        run: chat_template,
        seeds: || {
            vec![
                qwen3vl_processor::BUILTIN_TEMPLATE.as_bytes().to_vec(),
                b"{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}{% if c.type == 'text' %}{{ c.text }}{% else %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".to_vec(),
            ]
        },
    },
    Target {
        name: "quantized",
        run: quant::run,
        seeds: quant::seeds,
    },
    Target {
        name: "request",
        run: request::run,
        seeds: request::seeds,
    },
    Target {
        name: "video",
        run: video::run,
        seeds: video::seeds,
    },
];

pub fn by_name(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn config(b: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(b) else {
        return false;
    };
    qwen3vl_model::Config::from_json(s).is_ok()
}

fn kernels() -> qwen3vl_kernels::Kernels {
    static K: OnceLock<qwen3vl_kernels::Kernels> = OnceLock::new();
    *K.get_or_init(|| {
        qwen3vl_kernels::Kernels::detect()
            .expect("kernels")
            .with_threads(1)
    })
}

/// Parse, then preprocess a 37x23 image with the parsed sizes (smart_resize, resize, patchify): the sizes a
/// file claims must never reach an allocation unchecked.
fn preprocessor_config(b: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(b) else {
        return false;
    };
    let Ok(c) = ImageConfig::from_json(s) else {
        return false;
    };
    let (w, h) = (37usize, 23usize);
    let img: Vec<u8> = (0..w * h * 3).map(|i| (i * 7) as u8).collect();
    let Ok((rh, rw)) =
        qwen3vl_processor::resize::smart_resize(h, w, c.factor(), c.min_pixels, c.max_pixels)
    else {
        return false;
    };
    let Ok(resized) = qwen3vl_processor::resize::resize_rgb(&kernels(), &img, h, w, rh, rw) else {
        return false;
    };
    let norm =
        qwen3vl_processor::patch::normalize_table(c.image_mean, c.image_std, c.rescale_factor);
    let pv = qwen3vl_processor::patch::patchify(
        &resized,
        rh,
        rw,
        c.patch_size,
        c.merge_size,
        c.temporal_patch_size,
        &norm,
    );
    !pv.is_empty()
}

fn generation_config(b: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(b) else {
        return false;
    };
    match qwen3vl_engine::GenerationConfig::from_json(s, "generation_config.json") {
        Ok(g) => g.check_vocab(151936, "generation_config.json").is_ok(),
        Err(_) => false,
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// A valid two-tensor file: a F32 [2] and b BF16 [2, 2].
fn safetensors_seed() -> Vec<u8> {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}}"#;
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(&[
        0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0x80, 0x3f, 0, 0x40, 0x40, 0x40, 0x80, 0x40,
    ]);
    v
}

fn safetensors(b: &[u8]) -> bool {
    let p = scratch("st").join("model.safetensors");
    if std::fs::write(&p, b).is_err() {
        return false;
    }
    match qwen3vl_model::weights::SafetensorsFile::open(&p) {
        Ok(f) => f.keys().count() < usize::MAX,
        Err(_) => false,
    }
}

const INDEX_SEED: &str = r#"{"metadata":{"total_size":16},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;

/// The index with two shards that hold `a` and `b`.
fn safetensors_index(b: &[u8]) -> bool {
    let d = scratch("index");
    let shard = |h: &str, data: &[u8]| {
        let mut v = (h.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    };
    let _ = std::fs::write(
        d.join("model-00001-of-00002.safetensors"),
        shard(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
    );
    let _ = std::fs::write(
        d.join("model-00002-of-00002.safetensors"),
        shard(
            r#"{"b":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
    );
    if std::fs::write(d.join("model.safetensors.index.json"), b).is_err() {
        return false;
    }
    qwen3vl_model::weights::Weights::open_dir(&d).is_ok()
}

fn processor() -> &'static Processor {
    static P: OnceLock<Processor> = OnceLock::new();
    P.get_or_init(|| {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/processor/checkpoint");
        Processor::from_dir(&dir)
            .expect("the processor test checkpoint loads")
            .with_kernels(kernels())
    })
}

/// Decode under the default limits, then preprocess and encode a prompt with the image.
fn image(b: &[u8]) -> bool {
    let p = processor();
    let Ok(img) = p.load_image_bytes(b) else {
        return false;
    };
    let Ok(input) = p.preprocess_image(&img) else {
        return false;
    };
    let msgs = [Message::new(
        "user",
        vec![Content::Image, Content::Text("What is this?".into())],
    )];
    p.encode(&msgs, &[input], true).is_ok()
}

/// Compile the bytes as the chat template and encode a two-turn conversation with an image.
fn chat_template(b: &[u8]) -> bool {
    let Ok(src) = std::str::from_utf8(b) else {
        return false;
    };
    static BASE: OnceLock<Vec<f32>> = OnceLock::new();
    let Ok(p) = clone_processor().with_chat_template(src.to_string(), "fuzzed template") else {
        return false;
    };
    let pv = BASE.get_or_init(|| vec![0.0; 16 * 1536]);
    let img = qwen3vl_processor::ImageInput {
        pixel_values: pv.clone(),
        grid_thw: [1, 4, 4],
    };
    let msgs = [
        Message::text("system", "Be brief."),
        Message::new(
            "user",
            vec![Content::Image, Content::Text("Hi <|im_end|>".into())],
        ),
        Message::text("assistant", "Hello."),
        Message::text("user", "And now?"),
    ];
    p.encode(&msgs, &[img], true).is_ok()
}

/// A fresh processor per template (the tokenizer is shared by cloning the loaded one).
fn clone_processor() -> Processor {
    processor().clone()
}
