//! Securing the master and worker APIs, from files named by the environment:
//!
//! - a shared token (`SHOAL_TOKEN_FILE`): servers accept only requests that carry
//!   `authorization: Bearer <its content>`, and every client sends it;
//! - TLS: servers with `SHOAL_TLS_CERT` and `SHOAL_TLS_KEY` serve only TLS;
//!   clients with `SHOAL_TLS_CA` connect with TLS and verify the server against
//!   that CA (and the name `SHOAL_TLS_DOMAIN`, when the certificate names the
//!   service rather than each address).
//!
//! Without them nothing is checked. Files are read once (Kubernetes Secrets
//! mounted as files); their contents are never logged.

use std::sync::{Arc, OnceLock};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::master::master_client::MasterClient;
use crate::worker::worker_client::WorkerClient;

/// A channel that sends the token.
pub type Conn = InterceptedService<Channel, ClientAuth>;
/// A master client that sends the token.
pub type Master = MasterClient<Conn>;
/// A worker client that sends the token.
pub type Worker = WorkerClient<Conn>;

/// The environment variable naming the token file.
pub const TOKEN_FILE_ENV: &str = "SHOAL_TOKEN_FILE";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct AuthError {
    pub path: String,
    pub reason: String,
}

/// The token, read from `$SHOAL_TOKEN_FILE` once (`None` when it is not set).
pub fn token() -> Result<Option<Arc<str>>, AuthError> {
    static TOKEN: OnceLock<Result<Option<Arc<str>>, AuthError>> = OnceLock::new();
    TOKEN.get_or_init(|| read_token(std::env::var(TOKEN_FILE_ENV).ok().filter(|p| !p.is_empty()))).clone()
}

fn read_token(path: Option<String>) -> Result<Option<Arc<str>>, AuthError> {
    let Some(path) = path else { return Ok(None) };
    let err = |reason: String| AuthError { path: format!("{TOKEN_FILE_ENV}={path}"), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read the token: {e}")))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(err("the token must be at least 16 characters".into()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err("the token must be printable ASCII without spaces".into()));
    }
    Ok(Some(token.into()))
}

/// Adds the token to every request.
#[derive(Clone)]
pub struct ClientAuth(Option<MetadataValue<Ascii>>);

impl ClientAuth {
    /// From `$SHOAL_TOKEN_FILE`; a client with an unreadable token file sends
    /// none, and the server refuses it with a clear status.
    pub fn from_env() -> ClientAuth {
        ClientAuth(token().ok().flatten().and_then(|t| format!("Bearer {t}").parse().ok()))
    }
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Checks the token on every request a server receives.
#[derive(Clone)]
pub struct ServerAuth(Option<Arc<str>>);

impl ServerAuth {
    pub fn from_env() -> Result<ServerAuth, AuthError> {
        Ok(ServerAuth(token()?))
    }

    pub fn with_token(token: Option<&str>) -> ServerAuth {
        ServerAuth(token.map(Into::into))
    }
}

impl Interceptor for ServerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else { return Ok(req) };
        let got =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match got {
            Some(got) if constant_time_eq(got.as_bytes(), want.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong token")),
            None => Err(Status::unauthenticated(format!("this server requires a token: set {TOKEN_FILE_ENV}"))),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The TLS environment variables.
pub const TLS_CERT_ENV: &str = "SHOAL_TLS_CERT";
pub const TLS_KEY_ENV: &str = "SHOAL_TLS_KEY";
pub const TLS_CA_ENV: &str = "SHOAL_TLS_CA";
pub const TLS_DOMAIN_ENV: &str = "SHOAL_TLS_DOMAIN";

/// Both of rustls's crypto providers are linked into the binary (through
/// different dependencies), so it cannot pick one itself: use ring.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn env_path(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|p| !p.is_empty())
}

fn read_pem(key: &str, path: &str) -> Result<Vec<u8>, AuthError> {
    let bytes = std::fs::read(path).map_err(|e| AuthError { path: format!("{key}={path}"), reason: e.to_string() })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(AuthError { path: format!("{key}={path}"), reason: "not a PEM file".into() });
    }
    Ok(bytes)
}

/// The client TLS configuration, read once (`None` without `SHOAL_TLS_CA`).
fn client_tls() -> Result<Option<tonic::transport::ClientTlsConfig>, AuthError> {
    static TLS: OnceLock<Result<Option<tonic::transport::ClientTlsConfig>, AuthError>> = OnceLock::new();
    TLS.get_or_init(|| {
        let Some(ca) = env_path(TLS_CA_ENV) else { return Ok(None) };
        install_crypto();
        let pem = read_pem(TLS_CA_ENV, &ca)?;
        let mut cfg =
            tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        if let Some(domain) = env_path(TLS_DOMAIN_ENV) {
            cfg = cfg.domain_name(domain);
        }
        Ok(Some(cfg))
    })
    .clone()
}

/// The server certificate and key files (`None` without `SHOAL_TLS_CERT`/
/// `SHOAL_TLS_KEY`; one without the other is an error), checked to be PEM.
pub fn server_tls_files() -> Result<Option<(std::path::PathBuf, std::path::PathBuf)>, AuthError> {
    match (env_path(TLS_CERT_ENV), env_path(TLS_KEY_ENV)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            install_crypto();
            read_pem(TLS_CERT_ENV, &cert)?;
            read_pem(TLS_KEY_ENV, &key)?;
            Ok(Some((cert.into(), key.into())))
        }
        (Some(p), None) | (None, Some(p)) => {
            Err(AuthError { path: p, reason: format!("{TLS_CERT_ENV} and {TLS_KEY_ENV} must be given together") })
        }
    }
}

/// The gRPC server TLS configuration from [`server_tls_files`].
pub fn server_tls() -> Result<Option<tonic::transport::ServerTlsConfig>, AuthError> {
    let Some((cert, key)) = server_tls_files()? else { return Ok(None) };
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let identity = tonic::transport::Identity::from_pem(read_pem(TLS_CERT_ENV, &cert)?, read_pem(TLS_KEY_ENV, &key)?);
    Ok(Some(tonic::transport::ServerTlsConfig::new().identity(identity)))
}

/// An endpoint for a shoal server at `host:port`: TLS when `SHOAL_TLS_CA` is set.
pub fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, AuthError> {
    let tls = client_tls()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bad =
        |e: tonic::transport::Error| AuthError { path: addr.to_string(), reason: format!("invalid address: {e}") };
    let ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(bad)?;
    match tls {
        Some(cfg) => ep.tls_config(cfg).map_err(bad),
        None => Ok(ep),
    }
}

/// A master client on `channel` that sends the token.
pub fn master(channel: Channel) -> Master {
    MasterClient::with_interceptor(channel, ClientAuth::from_env())
}

/// A worker client on `channel` that sends the token.
pub fn worker(channel: Channel) -> Worker {
    WorkerClient::with_interceptor(channel, ClientAuth::from_env())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn servers_accept_only_the_token_when_one_is_set() {
        let mut open = ServerAuth::with_token(None);
        assert!(open.call(request(None)).is_ok());
        let mut locked = ServerAuth::with_token(Some("0123456789abcdef0123"));
        assert!(locked.call(request(Some("Bearer 0123456789abcdef0123"))).is_ok());
        for bad in [None, Some("Bearer 0123456789abcdef0124"), Some("Bearer "), Some("0123456789abcdef0123")] {
            let e = locked.call(request(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn token_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("shoal-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            Some(p.to_string_lossy().into_owned())
        };
        assert_eq!(read_token(f("ok", "0123456789abcdef0123\n")).unwrap().as_deref(), Some("0123456789abcdef0123"));
        assert!(read_token(f("short", "abc")).is_err());
        assert!(read_token(f("space", "0123456789 abcdef0123")).is_err());
        assert!(read_token(Some(dir.join("missing").to_string_lossy().into_owned())).is_err());
        assert_eq!(read_token(None).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
