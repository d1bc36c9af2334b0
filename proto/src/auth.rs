//! Securing the master and worker APIs, from files named by the environment:
//!
//! - a shared token (`SHOAL_TOKEN_FILE`): servers accept only requests that carry
//!   `authorization: Bearer <its content>`, and every client sends it;
//! - TLS: servers with `SHOAL_TLS_CERT` and `SHOAL_TLS_KEY` serve only TLS;
//!   clients with `SHOAL_TLS_CA` connect with TLS and verify the server against
//!   that CA (and the name `SHOAL_TLS_DOMAIN`, when the certificate names the
//!   service rather than each address).
//!
//! - roles (`SHOAL_TOKENS_FILE`, servers only): a table of credentials, each
//!   with a role (admin, worker, client) and the Kubernetes namespaces whose
//!   datasets it may see; a server with it accepts only those tokens and gives
//!   each request its [`Principal`]. The one shared token has every right.
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
/// A channel to the leading master that sends the token.
pub type MasterConn = InterceptedService<crate::leader::Leader, ClientAuth>;
/// A master client that sends the token and follows the leader.
pub type Master = MasterClient<MasterConn>;
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
    check_token(token).map_err(err)?;
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

/// The environment variable naming a server's credentials table (roles).
pub const TOKENS_FILE_ENV: &str = "SHOAL_TOKENS_FILE";

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Create, delete, sync, prewarm and free datasets; everything a client may.
    Admin,
    /// Cluster-internal: workers registering and reading store credentials, the
    /// master driving workers.
    Worker,
    /// Read datasets: mounts, the CSI plugin, the scheduler.
    Client,
}

impl Role {
    fn bit(self) -> u8 {
        match self {
            Role::Admin => 1,
            Role::Worker => 2,
            Role::Client => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }
}

/// Who sent a request, as the server's credentials table says; handlers read it
/// from the request's extensions with [`principal`].
#[derive(Debug, Clone)]
pub struct Principal {
    roles: u8,
    /// Kubernetes namespaces whose datasets it may see; `None` = all.
    namespaces: Option<Arc<[String]>>,
}

impl Principal {
    /// Every right: a server without credentials, or the one shared token.
    pub fn everything() -> Principal {
        Principal { roles: 7, namespaces: None }
    }

    pub fn new(role: Role, namespaces: Option<Vec<String>>) -> Principal {
        Principal { roles: role.bit(), namespaces: namespaces.map(Into::into) }
    }

    /// Whether it holds every right: an open server's caller, or the holder of
    /// the one shared token, where callers cannot be told apart.
    pub fn is_everything(&self) -> bool {
        self.roles == 7 && self.namespaces.is_none()
    }

    /// Whether it holds `role` (an admin is also a client).
    pub fn has(&self, role: Role) -> bool {
        let mut roles = self.roles;
        if roles & Role::Admin.bit() != 0 {
            roles |= Role::Client.bit();
        }
        roles & role.bit() != 0
    }

    /// `PermissionDenied` unless it holds `role`; `what` names the call.
    pub fn require(&self, role: Role, what: &str) -> Result<(), Status> {
        if self.has(role) {
            return Ok(());
        }
        let held: Vec<&str> =
            [Role::Admin, Role::Worker, Role::Client].into_iter().filter(|r| self.has(*r)).map(Role::as_str).collect();
        Err(Status::permission_denied(format!(
            "{what} needs the {} role; this credential has {}",
            role.as_str(),
            held.join(", ")
        )))
    }

    /// Whether it may see datasets of Kubernetes namespace `ns`.
    pub fn sees(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|list| list.iter().any(|n| n == ns))
    }

    /// Whether it may see every namespace.
    pub fn sees_all(&self) -> bool {
        self.namespaces.is_none()
    }

    /// `PermissionDenied` unless it may see namespace `ns`.
    pub fn require_namespace(&self, ns: &str, what: &str) -> Result<(), Status> {
        if self.sees(ns) {
            return Ok(());
        }
        let list = self.namespaces.as_deref().unwrap_or_default().join(", ");
        Err(Status::permission_denied(format!(
            "{what} belongs to namespace {ns:?}; this credential is for namespaces {list}"
        )))
    }
}

/// The sender of `req` (every right when no interceptor ran: an in-process call).
pub fn principal<T>(req: &Request<T>) -> Principal {
    req.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::everything)
}

/// Checks the credential of every request a server receives and attaches its
/// [`Principal`].
#[derive(Clone)]
pub struct ServerAuth(Option<Arc<Credentials>>);

/// A server's credentials: each token's SHA-256 digest and who holds it.
#[derive(Debug, Clone)]
pub struct Credentials(Vec<([u8; 32], Principal)>);

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl Credentials {
    /// Who holds `token`. Every entry is compared in constant time, so the time
    /// taken says nothing of which matched.
    pub fn find(&self, token: &str) -> Option<Principal> {
        let d = digest(token);
        let mut found = None;
        for (want, p) in &self.0 {
            if constant_time_eq(&d, want) {
                found = Some(p.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ServerAuth {
    /// From `$SHOAL_TOKENS_FILE` (a table of roles), else `$SHOAL_TOKEN_FILE`
    /// (one shared token with every right), else open.
    pub fn from_env() -> Result<ServerAuth, AuthError> {
        if let Some(path) = std::env::var(TOKENS_FILE_ENV).ok().filter(|p| !p.is_empty()) {
            let err = |reason: String| AuthError { path: format!("{TOKENS_FILE_ENV}={path}"), reason };
            let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read the tokens: {e}")))?;
            return Ok(ServerAuth(Some(Arc::new(parse_tokens(&text).map_err(err)?))));
        }
        Ok(Self::with_token(token()?.as_deref()))
    }

    /// One shared token with every right (`None`: open).
    pub fn with_token(token: Option<&str>) -> ServerAuth {
        ServerAuth(token.map(|t| Arc::new(Credentials(vec![(digest(t), Principal::everything())]))))
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if token.len() < 16 {
        return Err("the token must be at least 16 characters".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// A credentials table: one line per credential, `ROLE NAMESPACES TOKEN`, where
/// `ROLE` is `admin`, `worker` or `client`, `NAMESPACES` is `*` or a
/// comma-separated list (`*` for workers), and `TOKEN` the token or, better,
/// `sha256:` and its digest in hex (then the table holds no credential itself);
/// blank lines and `#` comments are skipped. Errors name the line, never the token.
pub fn parse_tokens(text: &str) -> Result<Credentials, String> {
    let mut out: Vec<([u8; 32], Principal)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| format!("line {}: {why} (expected ROLE NAMESPACES TOKEN)", n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [role, namespaces, token] = fields[..] else {
            return Err(bad(format!("{} fields instead of 3", fields.len())));
        };
        let role = match role {
            "admin" => Role::Admin,
            "worker" => Role::Worker,
            "client" => Role::Client,
            other => return Err(bad(format!("unknown role {other:?} (admin, worker or client)"))),
        };
        let namespaces = match namespaces {
            "*" => None,
            list => {
                let list: Vec<String> = list.split(',').map(str::to_string).collect();
                if let Some(n) = list.iter().find(|n| !valid_namespace(n)) {
                    return Err(bad(format!("{n:?} is not a Kubernetes namespace name")));
                }
                Some(list)
            }
        };
        if role == Role::Worker && namespaces.is_some() {
            return Err(bad("a worker credential is for every namespace: write *".into()));
        }
        let d = match token.strip_prefix("sha256:") {
            Some(hex) => hex::decode(hex)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| bad("sha256: must be followed by 64 hex digits".into()))?,
            None => {
                check_token(token).map_err(bad)?;
                digest(token)
            }
        };
        if out.iter().any(|(t, _)| *t == d) {
            return Err(bad("the same token is listed twice".into()));
        }
        out.push((d, Principal::new(role, namespaces)));
    }
    if out.is_empty() {
        return Err("no credentials listed".into());
    }
    Ok(Credentials(out))
}

/// A Kubernetes namespace name: a DNS label (lowercase letters, digits and
/// '-', 1 to 63 characters, starting and ending with a letter or digit).
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 63
        && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-')
}

impl Interceptor for ServerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(table) = &self.0 else {
            req.extensions_mut().insert(Principal::everything());
            return Ok(req);
        };
        let got =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let Some(got) = got else {
            return Err(Status::unauthenticated(format!("this server requires a token: set {TOKEN_FILE_ENV}")));
        };
        match table.find(got) {
            Some(p) => {
                req.extensions_mut().insert(p);
                Ok(req)
            }
            None => Err(Status::unauthenticated("wrong token")),
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

/// The process's one choice of rustls crypto provider: ring, for every TLS
/// client and server (gRPC, the scheduler's HTTPS, kube, OpenDAL's reqwest).
/// Idempotent.
pub fn install_crypto() {
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

/// A master client that sends the token, to whichever of the masters in `list`
/// (`host:port`, comma-separated) leads; `configure` sets up each endpoint
/// (timeouts), which connects lazily.
pub fn master(
    list: &str,
    configure: impl Fn(tonic::transport::Endpoint) -> tonic::transport::Endpoint + Send + Sync + 'static,
) -> Result<Master, AuthError> {
    Ok(MasterClient::new(leader(list, configure)?))
}

/// A channel that sends the token to whichever of the masters in `list` leads
/// (see [`master`]), for any of the masters' services.
pub fn leader(
    list: &str,
    configure: impl Fn(tonic::transport::Endpoint) -> tonic::transport::Endpoint + Send + Sync + 'static,
) -> Result<MasterConn, AuthError> {
    let leader = crate::leader::Leader::new(list, move |addr| Ok(configure(endpoint(addr)?).connect_lazy()))?;
    Ok(InterceptedService::new(leader, ClientAuth::from_env()))
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
    fn a_tokens_table_gives_each_credential_its_role_and_namespaces() {
        let table = parse_tokens(
            "# role namespaces token\nadmin * admin-0123456789abcdef\n\nworker * worker-0123456789abcdef\nclient a,b sha256:509d156eb94230ad3aafdb4de1c50cb659ab73f8d21769549d74c34680dd521f\n",
        )
        .unwrap();
        assert_eq!(
            hex::encode(digest("client-0123456789abcdef")),
            "509d156eb94230ad3aafdb4de1c50cb659ab73f8d21769549d74c34680dd521f"
        );
        let mut auth = ServerAuth(Some(Arc::new(table)));
        let who =
            |auth: &mut ServerAuth, t: &str| principal(&auth.call(request(Some(&format!("Bearer {t}")))).unwrap());
        let admin = who(&mut auth, "admin-0123456789abcdef");
        assert!(admin.has(Role::Admin) && admin.has(Role::Client) && !admin.has(Role::Worker) && admin.sees("x"));
        let worker = who(&mut auth, "worker-0123456789abcdef");
        assert!(worker.has(Role::Worker) && !worker.has(Role::Client) && !worker.has(Role::Admin));
        let client = who(&mut auth, "client-0123456789abcdef");
        assert!(client.has(Role::Client) && !client.has(Role::Admin) && !client.has(Role::Worker));
        assert!(client.sees("a") && client.sees("b") && !client.sees("c"));
        let denied = client.require(Role::Admin, "DeleteDataset").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(client.require_namespace("c", "dataset d").unwrap_err().code(), tonic::Code::PermissionDenied);
        for bad in [None, Some("Bearer client-0123456789abcdeX")] {
            assert_eq!(auth.call(request(bad)).unwrap_err().code(), tonic::Code::Unauthenticated);
        }
        for (text, why) in [
            ("", "no credentials"),
            ("root * 0123456789abcdef0123", "unknown role"),
            ("client * short", "at least 16"),
            ("client A_B 0123456789abcdef0123", "not a Kubernetes namespace"),
            ("client *", "2 fields"),
            ("client * 0123456789abcdef0123\nadmin * 0123456789abcdef0123", "twice"),
            ("worker a 0123456789abcdef0123", "every namespace"),
            ("client * sha256:abcd", "64 hex digits"),
        ] {
            let e = parse_tokens(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(!e.contains("0123456789abcdef0123"), "an error shows the token: {e}");
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
