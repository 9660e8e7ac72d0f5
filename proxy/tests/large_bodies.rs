//! End to end: bodies stream through the proxy both ways. A 64 MiB upload and a 64 MiB download
//! arrive byte for byte, while the proxy's resident memory grows by far less than the body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_harness::{TestEnv, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const SIZE: usize = 64 << 20;
/// How much the proxy's resident memory may grow while a body of [`SIZE`] passes.
const MAX_GROWTH_KIB: u64 = 24 << 10;

/// `SIZE` bytes that do not repeat in any short period (so that nothing can pass for them).
fn payload() -> Arc<Vec<u8>> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(SIZE);
    while out.len() < SIZE {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(SIZE);
    Arc::new(out)
}

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    portcullis_harness::rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// Samples the resident memory of `pid` every 5 ms until dropped; the peak so far.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    fn watch(pid: u32) -> RssPeak {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssPeak { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn large_uploads_and_downloads_stream_through_without_buffering() {
    let body = payload();
    let download = body.clone();
    let env = TestEnv::builder(BIN)
        .upstream(Upstream::builder().respond_with(move |req| {
            if req.path() == "/download" {
                http::Response::new(download.to_vec())
            } else {
                http::Response::new(format!("got {} bytes", req.body.len()).into_bytes())
            }
        }))
        .route(
            "from = \"http://public.localhost\"\nto = \"{upstream}\"\nallow_public_unauthenticated_access = true",
        )
        .start()
        .await;
    let pid = env.proxy.pid().expect("the proxy runs");
    // No overall timeout: a debug build on a busy machine may take a while for 64 MiB.
    let client = reqwest::Client::builder()
        .no_proxy()
        .resolve(
            "public.localhost",
            SocketAddr::from(([127, 0, 0, 1], env.port)),
        )
        .build()
        .unwrap();
    let url = |path: &str| env.url("public", path);

    // Warm up (connections, allocator arenas), then measure from here.
    for _ in 0..3 {
        let resp = client.get(url("/warm")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", env.logs());
        resp.bytes().await.unwrap();
    }
    let before = rss_kib(pid);

    // Upload.
    let sampler = RssPeak::watch(pid);
    let resp = client
        .post(url("/upload"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert_eq!(resp.text().await.unwrap(), format!("got {SIZE} bytes"));
    let upload_peak = sampler.peak();
    drop(sampler);
    let received = env
        .upstream
        .last()
        .expect("the upload reached the upstream");
    assert_eq!(received.body.len(), SIZE);
    assert!(received.body == *body, "the upload arrived changed");
    drop(received);

    // Download, compared chunk by chunk as it arrives.
    let sampler = RssPeak::watch(pid);
    let mut resp = client.get(url("/download")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", env.logs());
    let mut offset = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        let end = offset + chunk.len();
        assert!(end <= SIZE, "more than {SIZE} bytes");
        assert!(
            chunk[..] == body[offset..end],
            "the download differs at {offset}..{end}"
        );
        offset = end;
    }
    assert_eq!(offset, SIZE, "the download is complete");
    let download_peak = sampler.peak();
    drop(sampler);

    let growth = |peak: u64| peak.saturating_sub(before);
    eprintln!(
        "proxy RSS: {before} KiB before; peak +{} KiB during the 64 MiB upload, +{} KiB during the download",
        growth(upload_peak),
        growth(download_peak)
    );
    for (what, peak) in [("upload", upload_peak), ("download", download_peak)] {
        assert!(
            growth(peak) < MAX_GROWTH_KIB,
            "the proxy grew by {} KiB during the {what} of {} KiB: it buffers the body",
            growth(peak),
            SIZE >> 10
        );
    }
}
