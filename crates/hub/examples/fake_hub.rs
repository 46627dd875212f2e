//! Serve a checkpoint directory as a Hub repository on 127.0.0.1 until killed (for trying `pull` or
//! `huggingface_hub` against the fake Hub by hand):
//! `cargo run --release -p qwen3vl-hub --features fake-hub --example fake_hub -- DIR owner/name`
//! prints the endpoint URL (for `HF_ENDPOINT`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(repo)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: fake_hub DIR owner/name");
        std::process::exit(2);
    };
    let hub = qwen3vl_hub::fake_hub::FakeHub::start();
    let files = qwen3vl_hub::fake_hub::FakeHub::dir_files(std::path::Path::new(dir));
    hub.add_repo(repo, "0123456789abcdef0123456789abcdef01234567", files);
    println!("{}", hub.url());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
