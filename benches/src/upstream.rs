//! The upstream every scenario ends at: a tiny hyper HTTP/1.1 server with a fixed small body,
//! on its own runtime and thread so that it does not share a scheduler with the load generator.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The body every request gets: 128 bytes.
pub const BODY: &[u8; 128] = b"hello from the portcullis-bench upstream; every scenario gets these same 128 bytes back, whatever sits in front of it .........\n";

/// A running upstream; its thread ends when this is dropped.
pub struct FastUpstream {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FastUpstream {
    pub fn start() -> Result<FastUpstream, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("upstream: bind 127.0.0.1:0: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("upstream runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    loop {
                        let conn = tokio::select! {
                            c = listener.accept() => c,
                            _ = &mut stopped => return,
                        };
                        let Ok((stream, _)) = conn else { continue };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(async move {
                            let service = service_fn(|_req| async {
                                let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
                                *resp.status_mut() = StatusCode::OK;
                                resp.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("text/plain"),
                                );
                                Ok::<_, Infallible>(resp)
                            });
                            let _ = http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            })
            .map_err(|e| format!("upstream thread: {e}"))?;
        Ok(FastUpstream {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FastUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
