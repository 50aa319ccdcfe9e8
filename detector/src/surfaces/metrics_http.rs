//! The metrics endpoint (`--metrics-addr`): `/metrics` in OpenMetrics or Prometheus text,
//! `/healthz` and `/readyz`, over HTTP/1 with bounded connections. It serves what
//! [`crate::metrics`] counts.
use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Scrape connections served at once: a scraper or two, a curl, a probe. The DaemonSet listens
/// on 0.0.0.0, so anyone on the network can connect: past this, new connections are closed at
/// once, and the agent's memory and fds stay bounded.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection must have sent its request head this long after it came (or after its last
/// answer, kept alive): a connection that sends nothing holds a slot no longer.
pub const HEADER_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest a connection is kept, however busy (Prometheus reconnects).
pub const CONNECTION_TIME: std::time::Duration = std::time::Duration::from_secs(120);

/// Serves `/metrics` (and `/healthz`, `/readyz`) until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds (EMFILE) or a connection reset before it was accepted: never a
                // busy loop.
                log::debug!("metrics listener: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.metrics_connections_refused.inc();
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, hyper::http::Error>(answer(&metrics, &req)) }
            });
            let conn =
                http1::Builder::new().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIME).serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
        });
    }
}

/// The answer to one request.
fn answer(metrics: &Metrics, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let openmetrics = req.headers().get_all(hyper::header::ACCEPT).iter().any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
    let resp = match req.uri().path() {
        "/metrics" if openmetrics => Response::builder()
            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Full::new(Bytes::from(metrics.render()))),
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(prometheus_text(&metrics.render())))),
        "/healthz" if metrics.alive() => Response::builder().body(Full::new(Bytes::from("ok\n"))),
        "/healthz" => Response::builder().status(503).body(Full::new(Bytes::from("the detection loop has not run for too long\n"))),
        "/readyz" if metrics.ready.load(std::sync::atomic::Ordering::Relaxed) => Response::builder().body(Full::new(Bytes::from("ready\n"))),
        "/readyz" => Response::builder().status(503).body(Full::new(Bytes::from("starting: no detection pass yet\n"))),
        _ => Response::builder().status(404).body(Full::new(Bytes::from("not found; try /metrics\n"))),
    };
    resp.expect("static response parts are valid")
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers and tools
/// that do not ask for OpenMetrics (`curl`, `promtool check metrics`): a counter's HELP and
/// TYPE name its `_total` samples, `info`/`unknown` types become `gauge`/`untyped`, and the
/// OpenMetrics-only lines (`# UNIT`, `# EOF`, `_created` samples) are left out.
pub fn prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // The HELP line waits for its TYPE line, which says whether the name gains `_total`.
    let mut help: Option<(&str, &str)> = None;
    let mut counters: Vec<&str> = Vec::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => {
                    counters.push(name);
                    (format!("{name}_total"), "counter")
                }
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some((_, text)) = help.take().filter(|(h, _)| *h == rest.split(' ').next().unwrap_or_default()) {
                out.push_str(&format!("# HELP {name} {}\n", text.replace("\\\"", "\"")));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else {
            let openmetrics_only =
                line.starts_with("# UNIT ") || line == "# EOF" || counters.iter().any(|c| line.strip_prefix(c).is_some_and(|r| r.starts_with("_created")));
            if !openmetrics_only {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding --metrics-addr {addr}: {e}; pick a free address or pass --metrics-addr off"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample of the text format belongs to a family declared with HELP and TYPE under
    /// its own name (what `promtool check metrics` asks; the integration tests run promtool).
    #[test]
    fn the_text_format_declares_every_sample_under_its_own_name() {
        let m = Metrics::new();
        m.reaped("destroy", "ok", None);
        m.sweep_duration.observe(0.01);
        let text = prometheus_text(&m.render());
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        let typed: std::collections::HashMap<&str, &str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')).collect();
        let helped: std::collections::HashSet<&str> = text.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
        assert_eq!(typed["detector_reaps_total"], "counter");
        assert_eq!(typed["detector_sweep_duration_seconds"], "histogram");
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s).filter(|f| typed.get(f) == Some(&"histogram"))).unwrap_or(name);
            assert!(typed.contains_key(family) && helped.contains(family), "{sample}: no TYPE/HELP for {family}");
        }
        assert!(text.contains("detector_reaps_total{action=\"destroy\",result=\"ok\",why=\"none\"} 1"));
    }
}
