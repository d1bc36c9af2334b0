//! A client channel to a group of masters that follows their leader.
//!
//! `--master` may name several masters (`a:7700,b:7700,c:7700`). Only the
//! leader answers the master API; the others refuse every call with
//! `UNAVAILABLE` and a [`LEADER_HEADER`] naming the leader (empty while an
//! election runs). [`Leader`] sends each request to the master it believes
//! leads and, on such a refusal or when that master cannot be reached, sends
//! the same request to the named leader or the next master, until one answers
//! or [`PATIENCE`] has passed. A leader it is told of but was not given joins
//! its list. Callers see one channel and never a failover.
//!
//! Requests are buffered to be resent, so client-streaming calls are not
//! supported (the master API has none). A refusal is always safe to resend
//! (nothing ran). A transport error is resent only when the connection could
//! not be made (the request never left) or the call only reads: a write the
//! dead leader may already have taken is not run twice, its caller sees the
//! error.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::auth::AuthError;

/// The response header a master that does not lead sends: the leader's
/// address, or "" while none is known.
pub const LEADER_HEADER: &str = "shoal-leader";

/// How long a request waits for some master to lead (an election takes a few
/// seconds) before the last answer is returned.
pub const PATIENCE: Duration = Duration::from_secs(15);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connect = dyn Fn(&str) -> Result<Channel, AuthError> + Send + Sync;

/// The masters named by a `--master` value: comma-separated `host:port`s.
pub fn addresses(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect()
}

/// A channel to whichever of a group of masters leads; cheap to clone.
#[derive(Clone)]
pub struct Leader {
    inner: Arc<Inner>,
}

struct Inner {
    masters: RwLock<Vec<(String, Channel)>>,
    /// Index into `masters` of the one believed to lead.
    current: AtomicUsize,
    connect: Box<Connect>,
    patience: Duration,
}

impl Leader {
    /// Lazily connected channels to the masters in `list`, made by `connect`
    /// (which also makes the channel to a leader named but not listed).
    pub fn new(
        list: &str,
        connect: impl Fn(&str) -> Result<Channel, AuthError> + Send + Sync + 'static,
    ) -> Result<Leader, AuthError> {
        let addrs = addresses(list);
        if addrs.is_empty() {
            return Err(AuthError { path: list.to_string(), reason: "no master address".into() });
        }
        let masters = addrs.into_iter().map(|a| Ok((a.clone(), connect(&a)?))).collect::<Result<Vec<_>, _>>()?;
        Ok(Leader {
            inner: Arc::new(Inner {
                masters: RwLock::new(masters),
                current: AtomicUsize::new(0),
                connect: Box::new(connect),
                patience: PATIENCE,
            }),
        })
    }
}

impl Inner {
    fn pick(&self) -> (usize, String, Channel) {
        let masters = self.masters.read().expect("masters lock");
        let i = self.current.load(Ordering::Relaxed) % masters.len();
        (i, masters[i].0.clone(), masters[i].1.clone())
    }

    fn len(&self) -> usize {
        self.masters.read().expect("masters lock").len()
    }

    /// Make `addr` the current master, adding it when it is new.
    fn follow(&self, addr: &str) {
        let mut masters = self.masters.write().expect("masters lock");
        let i = match masters.iter().position(|(a, _)| a == addr) {
            Some(i) => i,
            None => match (self.connect)(addr) {
                Ok(ch) => {
                    masters.push((addr.to_string(), ch));
                    masters.len() - 1
                }
                Err(e) => {
                    tracing::warn!(leader = %addr, error = %e, "cannot connect to the leader a master named");
                    return;
                }
            },
        };
        self.current.store(i, Ordering::Relaxed);
    }

    /// Move on from master `i` (unless another request already did).
    fn advance(&self, i: usize) {
        let n = self.len();
        let _ = self.current.compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    async fn send(&self, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let mut extensions = Some(parts.extensions.clone());
        let deadline = Instant::now() + self.patience;
        let mut misses = 0usize;
        loop {
            let (i, addr, mut channel) = self.pick();
            let mut req = http::Request::new(Body::new(http_body_util::Full::new(bytes.clone())));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            if let Some(ext) = extensions.take() {
                *req.extensions_mut() = ext;
            }
            let result = match channel.ready().await {
                Ok(ch) => ch.call(req).await,
                Err(e) => Err(e),
            };
            let out_of_time = Instant::now() >= deadline;
            match result {
                Ok(resp) => {
                    let Some(hint) = not_leader(&resp) else { return Ok(resp) };
                    if out_of_time {
                        return Ok(resp);
                    }
                    misses += 1;
                    if !hint.is_empty() && hint != addr {
                        tracing::debug!(from = %addr, leader = %hint, "following the master leader");
                        self.follow(&hint);
                    } else {
                        self.advance(i);
                    }
                    if hint.is_empty() || hint == addr || misses > self.len() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    if out_of_time || self.len() == 1 || !(never_sent(&e) || reads_only(parts.uri.path())) {
                        return Err(e.into());
                    }
                    misses += 1;
                    tracing::debug!(master = %addr, error = %e, "master unreachable; trying the next");
                    self.advance(i);
                    if misses.is_multiple_of(self.len()) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
}

/// Whether `e` says the connection could not be made (so the request was
/// never sent).
fn never_sent(e: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let text = format!("{err} {err:?}");
        if text.contains("ConnectError") || text.contains("tcp connect error") || text.contains("Connection refused") {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether the gRPC method at `path` (`/package.Service/Method`) only reads
/// (or, as a worker's registration and heartbeat, may be repeated).
fn reads_only(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    ["Get", "List", "Lookup", "Read", "Resolve", "Watch", "Status", "Heartbeat", "RegisterWorker"]
        .iter()
        .any(|p| method.starts_with(p))
}

/// The leader a refusal names ("" when none is known); `None` for any other answer.
fn not_leader(resp: &http::Response<Body>) -> Option<String> {
    let h = resp.headers();
    if h.get("grpc-status").map(|v| v.as_bytes()) != Some(b"14") {
        return None;
    }
    h.get(LEADER_HEADER).map(|v| v.to_str().unwrap_or_default().to_string())
}

impl Service<http::Request<Body>> for Leader {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.send(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_resent_after_a_request_may_have_run() {
        assert!(reads_only("/shoal.master.Master/GetDataset"));
        assert!(reads_only("/shoal.master.Master/ListNamespace"));
        assert!(!reads_only("/shoal.master.Master/CreateDataset"));
        assert!(!reads_only("/shoal.master.Master/StartLoad"));
        assert!(!reads_only("/shoal.master.MasterRaft/AddMaster"));
    }

    #[test]
    fn a_master_list_is_split_on_commas() {
        assert_eq!(addresses(" a:1, b:2 ,,c:3"), ["a:1", "b:2", "c:3"]);
        assert!(addresses(" , ").is_empty());
    }
}
