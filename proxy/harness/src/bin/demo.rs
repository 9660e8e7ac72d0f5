//! `portcullis-demo`: a complete local demo of Portcullis on loopback (see
//! `portcullis_harness::demo`). Usage: `portcullis-demo [CONFIG]`, default `config/demo.toml`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match portcullis_harness::demo::run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
