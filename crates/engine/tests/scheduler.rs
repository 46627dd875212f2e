//! The scheduler on the tiny reference checkpoint (f32): requests decoded together, joining and leaving
//! mid-run with chunked prefills, give the tokens each gets alone; the prefix cache gives a cold run's
//! tokens; a request over the KV budget is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qwen3vl_engine::scheduler::{Event, Request, Scheduler, SchedulerOptions};
use qwen3vl_engine::{Engine, EngineOptions, GenerateParams, SamplingParams};
use qwen3vl_model::Precision;
use qwen3vl_processor::{Content, ImageInput, Message};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn engine() -> Arc<Engine> {
    Arc::new(
        Engine::load(
            &testdata().join("model-tiny-untied"),
            &EngineOptions {
                threads: 0,
                precision: Precision::F32,
                progress: None,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

fn user(n_images: usize, text: &str) -> Message {
    let mut c = vec![Content::Image; n_images];
    c.push(Content::Text(text.to_string()));
    Message::new("user", c)
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        stop_strings: vec![],
        // No EOS: every request runs its whole budget, so they leave at known steps.
        extra_eos: vec![],
    }
}

fn image(e: &Engine, f: &str) -> ImageInput {
    e.load_image(&testdata().join("model-reference").join(f))
        .unwrap()
}

/// The requests of the tests: different lengths, with and without images, different budgets.
fn requests(e: &Engine) -> Vec<Request> {
    vec![
        Request {
            messages: vec![user(0, "Tell me a story about a cat.")],
            images: vec![],
            params: greedy(12),
        },
        Request {
            messages: vec![user(1, "Describe this image.")],
            images: vec![image(e, "img_64x96.png")],
            params: greedy(5),
        },
        Request {
            messages: vec![user(2, "Compare the two pictures, please.")],
            images: vec![image(e, "img_64x96.png"), image(e, "img_96x64.png")],
            params: greedy(9),
        },
    ]
}

#[test]
fn batched_requests_match_each_alone() {
    let e = engine();
    let reqs = requests(&e);
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| {
            e.generate(&r.messages, r.images.clone(), &r.params, 4096, &mut |_| {
                Ok(())
            })
            .unwrap()
            .tokens
        })
        .collect();
    // Chunks of 7 tokens: the image requests prefill over several steps while the others decode.
    let mut opts = SchedulerOptions::new(4096);
    opts.prefill_chunk = 7;
    opts.prefix_cache = false;
    let s = Scheduler::start(e.clone(), opts).unwrap();
    let handles: Vec<_> = reqs.iter().map(|r| s.submit(r.clone()).unwrap()).collect();
    for (i, (h, want)) in handles.into_iter().zip(&alone).enumerate() {
        let mut text = String::new();
        let mut done = None;
        while let Some(ev) = h.recv() {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done {
                    tokens, text: t, ..
                } => {
                    assert_eq!(t, text, "request {i}: streamed text");
                    done = Some(tokens);
                }
                Event::Error(m) => panic!("request {i}: {m}"),
                Event::Token(_) => {}
            }
        }
        assert_eq!(done.as_ref(), Some(want), "request {i}: tokens");
    }
}

#[test]
fn prefix_cache_reuses_the_history_and_matches_a_cold_run() {
    let e = engine();
    let img = image(&e, "img_64x96.png");
    let first = Request {
        messages: vec![user(1, "Describe this image.")],
        images: vec![img.clone()],
        params: greedy(6),
    };
    let warm = Scheduler::start(e.clone(), SchedulerOptions::new(4096)).unwrap();
    let a1 = warm.submit(first.clone()).unwrap().wait().unwrap();
    assert_eq!(a1.stats.cached_tokens, 0);
    // The second turn resends everything: the first question, its answer, a new question.
    let answer = e.processor.decode(&a1.tokens).unwrap();
    let second = Request {
        messages: vec![
            user(1, "Describe this image."),
            Message::text("assistant", &answer),
            user(0, "And the colours?"),
        ],
        images: vec![img],
        params: greedy(6),
    };
    let a2 = warm.submit(second.clone()).unwrap().wait().unwrap();
    // Every image token is in the reused prefix (the image is not encoded again).
    let prompt1 = a1.stats.prompt_tokens;
    assert!(
        a2.stats.cached_tokens >= prompt1,
        "reused {} tokens of a {prompt1}-token first turn",
        a2.stats.cached_tokens
    );
    assert_eq!(a2.stats.image_tokens, 0, "the image was encoded again");
    let mut cold_opts = SchedulerOptions::new(4096);
    cold_opts.prefix_cache = false;
    let cold = Scheduler::start(e.clone(), cold_opts).unwrap();
    let c2 = cold.submit(second).unwrap().wait().unwrap();
    assert_eq!(c2.stats.cached_tokens, 0);
    assert_eq!(a2.tokens, c2.tokens, "warm and cold second turns differ");
}

#[test]
fn kv_budget_is_shared_and_overruns_are_refused() {
    let e = engine();
    let reqs = requests(&e);
    let prompt = e
        .prepare(&reqs[0].messages, vec![], Default::default(), Some(1), 4096)
        .unwrap()
        .tokens
        .len();
    // Room for one request at a time: the second waits for the first, both finish.
    let budget = prompt + 12;
    let t = &e.model.config().text;
    let per_token = (2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * 4) as u64;
    assert_eq!(
        SchedulerOptions::kv_tokens_for_bytes(&e, budget as u64 * per_token + per_token - 1),
        budget
    );
    let s = Scheduler::start(e.clone(), SchedulerOptions::new(budget)).unwrap();
    let h1 = s.submit(reqs[0].clone()).unwrap();
    let h2 = s.submit(reqs[0].clone()).unwrap();
    let (a, b) = (h1.wait().unwrap(), h2.wait().unwrap());
    assert_eq!(a.tokens, b.tokens);
    // One token more than the budget: refused at submit, naming the budget.
    let mut big = reqs[0].clone();
    big.params.max_tokens = Some(13);
    let err = s.submit(big).err().expect("over budget").to_string();
    assert!(err.contains(&format!("budget is {budget} tokens")), "{err}");
    // max_tokens unset takes what the budget leaves.
    let mut fill = reqs[0].clone();
    fill.params.max_tokens = None;
    let c = s.submit(fill).unwrap().wait().unwrap();
    assert_eq!(c.tokens.len(), 12);
    // A cancelled request ends its stream without a result.
    let h = s.submit(reqs[0].clone()).unwrap();
    h.cancel();
    assert!(h.wait().is_err());
}

#[test]
fn handles_are_shared_across_threads() {
    fn check<T: Send + Sync>() {}
    check::<Scheduler>();
    fn send<T: Send>() {}
    send::<qwen3vl_engine::RequestHandle>();
}

/// An image request joining while another sequence decodes has its vision tower run one block per step
/// (the running sequence keeps getting tokens), and answers as it does alone; alone, the tower runs whole.
#[test]
fn vision_runs_between_decode_steps_of_the_others() {
    let e = engine();
    let blocks = e.model.vision_blocks();
    assert!(blocks > 1, "the tiny checkpoint has {blocks} vision blocks");
    let img = Request {
        messages: vec![user(1, "Describe this image.")],
        images: vec![image(&e, "img_96x64.png")],
        params: greedy(3),
    };
    let long = Request {
        messages: vec![user(0, "Count to a thousand.")],
        images: vec![],
        params: greedy(400),
    };
    let mut opts = SchedulerOptions::new(4096);
    opts.prefix_cache = false;
    opts.vision_cache_bytes = 0;
    let s = Scheduler::start(e.clone(), opts).unwrap();
    let alone = s.submit(img.clone()).unwrap().wait().unwrap();
    assert_eq!(alone.stats.vision_steps, 1, "{:?}", alone.stats);
    let l = s.submit(long).unwrap();
    // the long request decodes: its first piece of text has come
    while !matches!(l.recv(), Some(Event::Text(_))) {}
    let joined = s.submit(img).unwrap().wait().unwrap();
    assert_eq!(joined.stats.vision_steps, blocks, "{:?}", joined.stats);
    assert_eq!(joined.tokens, alone.tokens);
    l.cancel();
}

/// An image seen again after different text (so no shared prefix covers it) comes from the vision cache,
/// and the answer is the one of a run without any cache.
#[test]
fn vision_cache_reuses_an_image_after_other_text() {
    let e = engine();
    let img = image(&e, "img_64x96.png");
    let ask = |system: &str| Request {
        messages: vec![
            Message::text("system", system),
            user(2, "What is in these?"),
        ],
        images: vec![img.clone(), image(&e, "img_96x64.png")],
        params: greedy(4),
    };
    let s = Scheduler::start(e.clone(), SchedulerOptions::new(4096)).unwrap();
    let a = s.submit(ask("You are terse.")).unwrap().wait().unwrap();
    assert_eq!(a.stats.cached_images, 0);
    let b = s.submit(ask("You are verbose.")).unwrap().wait().unwrap();
    assert_eq!(b.stats.cached_images, 2, "{:?}", b.stats);
    let mut off = SchedulerOptions::new(4096);
    off.prefix_cache = false;
    off.vision_cache_bytes = 0;
    let cold = Scheduler::start(e.clone(), off).unwrap();
    let c = cold
        .submit(ask("You are verbose."))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(c.stats.cached_images, 0);
    assert_eq!(
        b.tokens, c.tokens,
        "cached and encoded features give different answers"
    );
}

/// The tokens of a finished handle.
fn tokens_of(h: qwen3vl_engine::RequestHandle) -> Vec<u32> {
    h.wait().unwrap().tokens
}

#[test]
fn n_answers_fork_after_one_prefill_and_match_single_requests_with_their_seeds() {
    use qwen3vl_engine::SeqOptions;
    let e = engine();
    let s = Scheduler::start(e.clone(), SchedulerOptions::new(4096)).unwrap();
    let mut params = greedy(8);
    params.sampling = SamplingParams {
        temperature: 1.0,
        seed: 40,
        ..SamplingParams::default()
    };
    let req = Request {
        messages: vec![user(0, "Tell me a story about a cat.")],
        images: vec![],
        params: params.clone(),
    };
    let opts = SeqOptions {
        n: 3,
        logprobs: Some(2),
        ..Default::default()
    };
    let steps0 = s.load().steps;
    let handles = s.submit_with(req.clone(), opts).unwrap();
    assert_eq!(handles.len(), 3);
    // Answer k samples with seed 40 + k: the same tokens as a single request with that seed.
    let mut got = Vec::new();
    for h in handles {
        let mut lps = 0;
        let mut done = None;
        while let Some(ev) = h.recv() {
            match ev {
                Event::Token(lp) => {
                    assert_eq!(lp.top.len(), 2);
                    assert!(lp.logprob <= 0.0);
                    lps += 1;
                }
                Event::Done { tokens, .. } => done = Some(tokens),
                Event::Text(_) => {}
                Event::Error(m) => panic!("{m}"),
            }
        }
        let tokens = done.unwrap();
        assert_eq!(lps, tokens.len());
        got.push(tokens);
    }
    // One prefill step (the prompt fits one chunk) then 8 decode steps for all three together.
    let steps = s.load().steps - steps0;
    assert!(steps <= 9, "{steps} steps for 3 answers of 8 tokens");
    for (k, tokens) in got.iter().enumerate() {
        let mut p = params.clone();
        p.sampling.seed = 40 + k as u64;
        let alone = tokens_of(
            s.submit(Request {
                params: p,
                ..req.clone()
            })
            .unwrap(),
        );
        assert_eq!(&alone, tokens, "answer {k}");
    }
    assert_ne!(got[0], got[1]);
    // More answers than run at once: refused at submit, naming n.
    let mut small = SchedulerOptions::new(4096);
    small.max_batch = 2;
    let s2 = Scheduler::start(e, small).unwrap();
    let err = s2
        .submit_with(
            req,
            SeqOptions {
                n: 3,
                ..Default::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("n = 3"), "{err}");
}

#[test]
fn a_dropped_handle_frees_its_sequence_at_the_next_step() {
    let e = engine();
    let s = Scheduler::start(e, SchedulerOptions::new(4096)).unwrap();
    let h = s
        .submit(Request {
            messages: vec![user(0, "Go on.")],
            images: vec![],
            params: greedy(2000),
        })
        .unwrap();
    // Wait until it decodes, then drop it.
    while !matches!(h.recv(), Some(Event::Text(_))) {}
    let steps_at_drop = s.load().steps;
    drop(h);
    let t = std::time::Instant::now();
    while s.load().cancelled == 0 {
        assert!(t.elapsed().as_secs() < 10);
        std::thread::yield_now();
    }
    let l = s.load();
    assert_eq!((l.running, l.waiting, l.finished), (0, 0, 0));
    assert!(
        l.steps - steps_at_drop <= 2,
        "{} steps after the drop",
        l.steps - steps_at_drop
    );
}

/// Requests that arrive together are prefilled together: three text prompts admitted at once (they waited
/// for the KV budget held by a long answer, cancelled) take one prefill step between them, then decode
/// together, with the tokens each gets alone.
#[test]
fn a_burst_of_requests_is_prefilled_in_one_step() {
    use qwen3vl_engine::History;
    let e = engine();
    let long = Request {
        messages: vec![user(0, "Go on.")],
        images: vec![],
        params: greedy(2000),
    };
    let burst: Vec<Request> = [
        "Tell me a story about a cat.",
        "Why is the sky blue?",
        "Count to ten.",
    ]
    .iter()
    .map(|q| Request {
        messages: vec![user(0, q)],
        images: vec![],
        params: greedy(8),
    })
    .collect();
    // The budget holds the long answer but not it and one more.
    let kv = |r: &Request| {
        e.prepare(
            &r.messages,
            vec![],
            History::default(),
            r.params.max_tokens,
            4096,
        )
        .unwrap()
        .kv_tokens()
    };
    let min_burst = burst.iter().map(kv).min().unwrap();
    let mut opts = SchedulerOptions::new(kv(&long) + min_burst - 1);
    opts.prefix_cache = false;
    let s = Scheduler::start(e.clone(), opts).unwrap();
    let h = s.submit(long).unwrap();
    while !matches!(h.recv(), Some(Event::Text(_))) {}
    let handles: Vec<_> = burst.iter().map(|r| s.submit(r.clone()).unwrap()).collect();
    assert_eq!(s.load().running, 1, "the burst waits for the budget");
    let steps0 = s.load().steps;
    h.cancel();
    let got: Vec<Vec<u32>> = handles.into_iter().map(tokens_of).collect();
    // At most one more step of the long answer, one prefill step for all three, 7 decode steps.
    let steps = s.load().steps - steps0;
    assert!(steps <= 9, "{steps} steps for 3 answers of 8 tokens");
    for (r, tokens) in burst.iter().zip(&got) {
        let alone = e
            .generate(&r.messages, vec![], &r.params, 4096, &mut |_| Ok(()))
            .unwrap()
            .tokens;
        assert_eq!(&alone, tokens);
    }
}

/// A prompt with a video between an image and text, through the scheduler in chunks of 5 (the visual
/// rows of the image and of the video's frame groups split across steps): the tokens a session generates
/// for it; and again from the prefix cache, whose reuse covers the video's tokens.
#[test]
fn a_video_request_matches_a_session_and_is_reused_from_the_prefix_cache() {
    use qwen3vl_processor::VideoOptions;
    let e = engine();
    let clip = std::fs::read(testdata().join("video/clips/gif_33x47_10f.gif")).unwrap();
    let video = e.load_video_bytes(&clip, &VideoOptions::default()).unwrap();
    let img = image(&e, "img_64x96.png");
    let messages = vec![Message::new(
        "user",
        vec![
            Content::Image,
            Content::Text("and then".into()),
            Content::Video,
            Content::Text("What happens?".into()),
        ],
    )];
    let params = greedy(6);
    let want = e
        .session(4096)
        .generate_media(
            &messages,
            std::slice::from_ref(&img),
            std::slice::from_ref(&video),
            &params,
            &mut |_| Ok(()),
        )
        .unwrap();
    let mut opts = SchedulerOptions::new(4096);
    opts.prefill_chunk = 5;
    let s = Scheduler::start(e.clone(), opts).unwrap();
    let req = Request {
        messages,
        images: vec![img],
        params,
    };
    let run = || {
        let mut h = s
            .submit_media(req.clone(), vec![video.clone()], Default::default())
            .unwrap();
        h.pop().unwrap().wait().unwrap()
    };
    let cold = run();
    assert_eq!(cold.tokens, want.tokens);
    assert_eq!(cold.stats.cached_tokens, 0);
    // The image's tokens and the video's 2 (4 frames of 33x47: 2 groups of one merged patch), encoded.
    let n = |g: [usize; 3]| g.iter().product::<usize>() / 4;
    assert_eq!(n(video.visual.grid_thw), 2);
    assert_eq!(
        cold.stats.image_tokens,
        n(req.images[0].grid_thw) + n(video.visual.grid_thw)
    );
    let warm = run();
    assert_eq!(warm.tokens, want.tokens);
    assert_eq!(warm.stats.cached_tokens, cold.stats.prompt_tokens - 1);
}
