//! The `request` target's regression inputs for issue #20's stack overflow, run on a 2 MiB thread (a
//! tokio blocking thread's and a test's stack): a chain of `$ref`s through a flat `$defs`, which
//! serde_json's nesting limit does not catch but the schema compiler recursed through link by link.
//! Just under the depth limit it is accepted (compiled on the engine's own large-stack thread); over it
//! the request is refused before anything is compiled.

use qwen3vl_fuzz::{corpus_dir, targets};

fn run_on_2_mib(file: &str) -> bool {
    let input = std::fs::read(corpus_dir("request").join(file)).expect("regression input");
    let t = targets::by_name("request").expect("the request target");
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || (t.run)(&input))
        .unwrap()
        .join()
        .expect("no panic")
}

#[test]
fn a_ref_chain_just_under_the_depth_limit_is_accepted_on_a_2_mib_thread() {
    // 248 links: depth 999 of 1000.
    assert!(run_on_2_mib("ref-chain-depth-999.json"));
}

#[test]
fn a_ref_chain_over_the_depth_limit_is_refused() {
    // 300 links: depth 1207.
    assert!(!run_on_2_mib("ref-chain-depth-1207.json"));
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(corpus_dir("request").join("ref-chain-depth-1207.json")).unwrap(),
    )
    .unwrap();
    let e = qwen3vl_server::api::parse_chat(&v, &Default::default()).expect_err("refused");
    assert_eq!(
        e.param.as_deref(),
        Some("response_format.json_schema.schema")
    );
    assert!(
        e.message
            .contains("nests 1207 levels deep, over the limit of 1000"),
        "{}",
        e.message
    );
}
