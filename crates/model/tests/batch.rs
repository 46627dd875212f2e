//! A batched forward (several sequences in one pass: decode steps, whole prefills and prefill chunks mixed)
//! gives every sequence the logits and greedy tokens it gets alone.

mod common;

use common::*;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::{
    KvCache, LoadOptions, Logits, Model, Positions, PositionsRef, Precision, RunState, Seq,
    VisionOutput, VisionRows,
};

/// Decode steps after the prefill of each sequence.
const STEPS: usize = 6;

/// f32 precision: a row of logits from a batch is within this of the same row alone, relative to the
/// row's largest magnitude (the matmuls sum in another order when M > 1).
const BATCH_REL_TOL: f32 = 1e-5;

struct Case {
    name: String,
    ids: Vec<u32>,
    pos: Positions,
    delta: i64,
    vis: Option<VisionOutput>,
}

fn load() -> (Model, Vec<Case>) {
    let model = Model::load(
        &model_dir("tied"),
        Kernels::detect().unwrap(),
        &LoadOptions {
            precision: Precision::F32,
            progress: None,
            ..Default::default()
        },
    )
    .unwrap();
    let cases = ["text", "image1", "image2"]
        .iter()
        .map(|c| {
            let name = format!("tied_{c}");
            let r = Reference::load(&name);
            let ims = images(&name, &r);
            Case {
                ids: r.input_ids(),
                pos: r.positions(),
                delta: r.rope_delta(),
                vis: (!ims.is_empty()).then(|| model.encode_images(&ims).unwrap()),
                name,
            }
        })
        .collect();
    (model, cases)
}

/// The case alone: prefill, then STEPS greedy steps (EOS ignored). Returns the logits rows and the tokens.
fn solo(model: &Model, c: &Case) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut cache = KvCache::new(&model.config().text, c.ids.len() + STEPS);
    let mut st = RunState::new();
    let mut rows = vec![model
        .forward(
            &c.ids,
            c.pos.as_ref(),
            c.vis.as_ref(),
            &mut cache,
            &mut st,
            Logits::Last,
        )
        .unwrap()
        .to_vec()];
    let mut tokens = Vec::new();
    for _ in 0..STEPS {
        let id = argmax(rows.last().unwrap()) as u32;
        tokens.push(id);
        let p = cache.len() as i64 + c.delta;
        let l = model
            .forward(
                &[id],
                PositionsRef::single(&p),
                None,
                &mut cache,
                &mut st,
                Logits::Last,
            )
            .unwrap();
        rows.push(l.to_vec());
    }
    (rows, tokens)
}

/// A sequence of the batched run.
struct Live<'a> {
    case: &'a Case,
    cache: KvCache,
    /// Tick at which its prefill starts, and the prefill's chunk boundaries (token indexes).
    join: usize,
    chunks: Vec<usize>,
    /// Prompt tokens prefilled, image tokens among them.
    done: usize,
    image_rows: usize,
    rows: Vec<Vec<f32>>,
    tokens: Vec<u32>,
    next_id: u32,
    next_pos: i64,
}

#[test]
fn batched_forward_matches_each_sequence_alone() {
    let (model, cases) = load();
    let img = model.config().image_token_id;
    let alone: Vec<_> = cases.iter().map(|c| solo(&model, c)).collect();

    // Timeline: text joins at tick 0 (one prefill), image1 at tick 1 (its prefill in the same pass as the
    // text's first decode step), image2 at tick 2 in two chunks cut inside its image tokens. Each leaves
    // after STEPS decode steps, so the text sequence leaves while the others still run.
    let plan = [(0, vec![]), (1, vec![]), (2, vec![0usize])];
    let mut live: Vec<Live> = cases
        .iter()
        .zip(plan)
        .map(|(c, (join, mut cuts))| {
            if !cuts.is_empty() {
                let first_img = c.ids.iter().position(|&t| t == img).unwrap();
                cuts = vec![first_img + 5];
            }
            cuts.push(c.ids.len());
            Live {
                case: c,
                cache: KvCache::new(&model.config().text, c.ids.len() + STEPS),
                join,
                chunks: cuts,
                done: 0,
                image_rows: 0,
                rows: Vec::new(),
                tokens: Vec::new(),
                next_id: 0,
                next_pos: 0,
            }
        })
        .collect();

    let mut st = RunState::new();
    let mut tick = 0;
    let mut max_batch = 0;
    loop {
        // Who runs this tick and whether it returns a logits row.
        let mut seqs: Vec<Seq> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        for (i, s) in live.iter_mut().enumerate() {
            if tick < s.join || s.tokens.len() == STEPS {
                continue;
            }
            if s.done < s.case.ids.len() {
                let end = *s.chunks.iter().find(|&&e| e > s.done).unwrap();
                let ids = &s.case.ids[s.done..end];
                let last = end == s.case.ids.len();
                seqs.push(Seq {
                    ids,
                    positions: s.case.pos.slice(s.done, end),
                    vision: s.case.vis.as_ref().map(|features| VisionRows {
                        features,
                        first: s.image_rows,
                    }),
                    cache: &mut s.cache,
                    logits: if last { Logits::Last } else { Logits::None },
                });
                s.image_rows += ids.iter().filter(|&&t| t == img).count();
                s.done = end;
                if last {
                    owners.push(i);
                }
            } else {
                seqs.push(Seq::decode(&s.next_id, &s.next_pos, &mut s.cache));
                owners.push(i);
            }
        }
        if seqs.is_empty() {
            break;
        }
        max_batch = max_batch.max(seqs.len());
        let logits = model.forward_batch(&mut seqs, &mut st).unwrap();
        drop(seqs);
        let v = model.vocab_size();
        assert_eq!(logits.len(), owners.len() * v);
        for (row, &i) in logits.chunks_exact(v).zip(&owners) {
            let s = &mut live[i];
            s.rows.push(row.to_vec());
            if s.rows.len() > 1 {
                s.tokens.push(s.next_id);
            }
            if s.tokens.len() < STEPS {
                s.next_id = argmax(row) as u32;
                s.next_pos = s.cache.len() as i64 + s.case.delta;
            }
        }
        tick += 1;
    }
    assert_eq!(max_batch, 3, "the three sequences never ran together");

    for (s, (want_rows, want_tokens)) in live.iter().zip(&alone) {
        let name = &s.case.name;
        assert_eq!(&s.tokens, want_tokens, "{name}: greedy tokens");
        assert_eq!(s.rows.len(), want_rows.len(), "{name}: logits rows");
        for (step, (got, want)) in s.rows.iter().zip(want_rows).enumerate() {
            let (e, at, mag) = max_abs_err(got, want);
            assert!(
                e <= BATCH_REL_TOL * mag,
                "{name}: step {step}: max abs {e:.3e} at vocab {at} (logits up to {mag})"
            );
        }
    }
}

#[test]
fn batched_forward_rejects_bad_sequences_before_running() {
    let (model, cases) = load();
    let tc = &model.config().text;
    let mut st = RunState::new();
    let (mut a, mut b) = (KvCache::new(tc, 4), KvCache::new(tc, 1));
    b.truncate(0);
    let (id, p) = (5u32, 0i64);
    let c = &cases[0];
    // The second sequence does not fit its cache: nothing runs, the first cache is untouched.
    let mut seqs = [
        Seq::decode(&id, &p, &mut a),
        Seq {
            ids: &c.ids[..2],
            positions: c.pos.slice(0, 2),
            vision: None,
            cache: &mut b,
            logits: Logits::Last,
        },
    ];
    let e = model.forward_batch(&mut seqs, &mut st).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
    assert_eq!((a.len(), b.len()), (0, 0));
    assert!(model.forward_batch(&mut [], &mut st).is_err());
}
