//! The peers the gateway is measured against, each started as its own process in front of the
//! same static upstream: nginx (`proxy_pass`, `proxy_cache`), HAProxy and a bare hyper-util
//! proxy (the floor: what forwarding with hyper costs before any of the gateway's work).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::net::TcpStream;

use super::{pinned, pinned_command, Proc, PARTNER, STATIC_BEARER};

/// A program on `PATH` or in the sbin directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A free loopback address.
fn free_addr() -> Option<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()
}

/// Waits until `proc` accepts on `listen`; `None` if it exits or takes more than 5 s.
async fn accepting(mut proc: Proc, listen: SocketAddr) -> Option<(Proc, SocketAddr)> {
    for _ in 0..100 {
        if TcpStream::connect(listen).await.is_ok() {
            return Some((proc, listen));
        }
        if matches!(proc.child.try_wait(), Ok(Some(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// How nginx is run: over TLS to the upstream (the CA to verify it with), and with or without
/// its access log (on, as by default, unless `quiet`).
#[derive(Clone, Copy, Default)]
pub struct NginxMode<'a> {
    /// The CA of the upstream's certificate: TLS to the upstream.
    pub tls: Option<&'a Path>,
    /// `access_log off`.
    pub quiet: bool,
}

/// nginx in front of `upstream`, as `mode` says.
pub fn nginx_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr, mode: NginxMode) -> String {
    let d = dir.display();
    let access_log = if mode.quiet {
        "off".to_owned()
    } else {
        format!("{d}/access.log")
    };
    let (scheme, tls) = match mode.tls {
        None => ("http", String::new()),
        Some(ca) => (
            "https",
            format!(
                "proxy_ssl_trusted_certificate {};\n        proxy_ssl_verify on;\n        \
                 proxy_ssl_name {};\n        proxy_ssl_server_name on;\n        \
                 proxy_ssl_session_reuse on;\n        proxy_ssl_protocols TLSv1.3;",
                ca.display(),
                super::tls::UPSTREAM_NAME
            ),
        ),
    };
    // As root, workers would drop to `nobody` and could not write the cache in this directory.
    let user = if running_as_root() { "user root;" } else { "" };
    let workers = if pinned() { "1" } else { "auto" };
    format!(
        r#"
{user}
daemon off;
master_process on;
# One worker per core, as the gateway runs one tokio worker thread per core (one when pinned).
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    keepalive_requests 10000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=records:16m max_size=512m inactive=10m use_temp_path=off;
    upstream ratepay {{
        server {upstream};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {listen};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Authorization "{STATIC_BEARER}";
        proxy_set_header X-Partner "{PARTNER}";
        {tls}
        location / {{
            proxy_pass {scheme}://ratepay;
        }}
        location /pps/api/v1/session-record/ {{
            proxy_pass {scheme}://ratepay;
            proxy_cache records;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"#
    )
}

/// Starts nginx on a free loopback port in front of `upstream`, as `mode` says.
pub async fn spawn_nginx(
    nginx: &Path,
    dir: &Path,
    upstream: SocketAddr,
    mode: NginxMode<'_>,
) -> Option<(Proc, SocketAddr)> {
    let listen = free_addr()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, listen, upstream, mode)).ok()?;
    let child = pinned_command(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let proc = Proc {
        child,
        name: "nginx",
    };
    let up = accepting(proc, listen).await;
    if up.is_none() {
        eprintln!(
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }
    up
}

/// HAProxy in front of `upstream`: one thread (`nbthread 1`), no logs, keep-alive to the
/// upstream (`http-reuse always`), `Authorization` and `X-Partner` set as nginx sets them; over
/// TLS verified against the CA in `tls` (by the name sent as SNI) when given.
pub fn haproxy_conf(listen: SocketAddr, upstream: SocketAddr, tls: Option<&Path>) -> String {
    let threads = if pinned() { "nbthread 1" } else { "" };
    let tls = tls.map_or(String::new(), |ca| {
        format!(
            " ssl verify required ca-file {} sni str({}) alpn http/1.1 ssl-min-ver TLSv1.3",
            ca.display(),
            super::tls::UPSTREAM_NAME
        )
    });
    format!(
        r#"
global
    {threads}
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always
frontend gateway
    bind {listen}
    default_backend ratepay
backend ratepay
    http-request set-header Authorization "{STATIC_BEARER}"
    http-request set-header X-Partner "{PARTNER}"
    server upstream {upstream}{tls}
"#
    )
}

/// Starts HAProxy (foreground, `-db`) on a free loopback port in front of `upstream` (over TLS
/// with `tls`, the CA).
pub async fn spawn_haproxy(
    haproxy: &Path,
    dir: &Path,
    upstream: SocketAddr,
    tls: Option<&Path>,
) -> Option<(Proc, SocketAddr)> {
    let listen = free_addr()?;
    let conf = dir.join("haproxy.cfg");
    std::fs::write(&conf, haproxy_conf(listen, upstream, tls)).ok()?;
    let child = pinned_command(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    accepting(
        Proc {
            child,
            name: "haproxy",
        },
        listen,
    )
    .await
}

/// Set (to the upstream's address) on the bench binary re-run as the floor proxy.
pub const FLOOR_ROLE: &str = "BENCH_FLOOR_PROXY";
/// Set too (to the CA's PEM file) when the floor proxy talks TLS to the upstream.
pub const FLOOR_CA: &str = "BENCH_FLOOR_CA";

/// The floor proxy, in this (child) process: a current-thread runtime, hyper's HTTP/1 server,
/// the pooled legacy client (over rustls when `FLOOR_CA` is set), two headers set, nothing
/// else. Prints its address, serves until killed. What forwarding through hyper costs before
/// any of the gateway's own work.
pub fn floor_proxy(upstream: SocketAddr) {
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        match std::env::var_os(FLOOR_CA) {
            None => {
                let client = Client::builder(TokioExecutor::new()).build_http();
                floor_serve(client, format!("http://{upstream}")).await
            }
            Some(ca) => {
                let connector = super::tls::floor_connector(Path::new(&ca));
                let client = Client::builder(TokioExecutor::new()).build(connector);
                floor_serve(client, format!("https://{upstream}")).await
            }
        }
    });
}

/// Serves the floor proxy with `client` toward `base` (scheme and authority).
async fn floor_serve<C>(
    client: hyper_util::client::legacy::Client<C, hyper::body::Incoming>,
    base: String,
) where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    use http::{HeaderValue, Request};
    use hyper::{body::Incoming, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("{}", listener.local_addr().expect("addr"));
    let bearer = HeaderValue::from_static(STATIC_BEARER);
    let partner = HeaderValue::from_static(PARTNER);
    let base: std::sync::Arc<str> = base.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (client, bearer, partner, base) = (
            client.clone(),
            bearer.clone(),
            partner.clone(),
            base.clone(),
        );
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (client, bearer, partner, base) = (
                    client.clone(),
                    bearer.clone(),
                    partner.clone(),
                    base.clone(),
                );
                async move {
                    let (mut parts, body) = req.into_parts();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = format!("{base}{path}").parse().expect("upstream uri");
                    parts.headers.insert(http::header::AUTHORIZATION, bearer);
                    parts.headers.insert("x-partner", partner);
                    client.request(Request::from_parts(parts, body)).await
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Starts the floor proxy (this binary again, pinned like the other proxies); over TLS with
/// `tls`, the CA.
pub async fn spawn_floor(upstream: SocketAddr, tls: Option<&Path>) -> Option<(Proc, SocketAddr)> {
    use std::io::BufRead;
    let exe = std::env::current_exe().ok()?;
    let mut cmd = pinned_command(&exe);
    if let Some(ca) = tls {
        cmd.env(FLOOR_CA, ca);
    }
    let mut child = cmd
        .env(FLOOR_ROLE, upstream.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let proc = Proc {
        child,
        name: "the floor proxy",
    };
    let addr = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).ok()?;
        line.trim().parse::<SocketAddr>().ok()
    })
    .await
    .ok()??;
    accepting(proc, addr).await
}
