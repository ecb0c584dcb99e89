//! End to end: connections that never send a request, trickle the HTTP/2 preface or sit idle
//! are closed within the configured time, and the proxy listener caps its open connections
//! while the admin listener keeps answering (`[listen]` bounds, issue 13).

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    config_text, keys, metric, process, sandbox_config,
    upstream::{Answer, RawUpstream},
    Harness, Options, TX_PATH,
};
use ratepay_gateway::{config::Config, sandbox};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A harness whose `[listen]` section has `lines` added.
async fn with_listen(lines: &str) -> Harness {
    let opts = Options::default();
    let sandbox = sandbox::spawn(sandbox_config(opts.token_lifetime))
        .await
        .expect("sandbox starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &sandbox.url(), &opts).replacen(
        "shutdown_grace_ms = 5000",
        &format!("shutdown_grace_ms = 5000\n{lines}"),
        1,
    );
    let config = Config::from_toml(&text, Path::new("test.toml")).expect("valid config");
    Harness::serve(sandbox, dir, config).await
}

fn addr(h: &Harness) -> String {
    h.gateway.trim_start_matches("http://").to_owned()
}

/// Sends a GET of a session record on `conn`; the start of its answer.
async fn get_record(conn: &mut TcpStream) -> String {
    let req = format!(
        "GET /pps/api/v1/session-record/nosuchsession HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\n\r\n",
        keys::FULL
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Reads until the gateway closes the connection; how long that took (panics after `limit`).
async fn closed_after(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after {limit:?}");
    started.elapsed()
}

#[tokio::test]
async fn silent_and_slow_preface_connections_are_closed_in_time() {
    let h = with_listen("first_request_timeout_ms = 400").await;
    let limit = Duration::from_secs(5);
    // Nothing at all.
    let mut silent = TcpStream::connect(addr(&h)).await.unwrap();
    let t = closed_after(&mut silent, limit).await;
    assert!(
        t >= Duration::from_millis(300),
        "not before the deadline: {t:?}"
    );
    // The h2 preface a byte at a time: still closed by the deadline counted from the accept.
    let mut slow = TcpStream::connect(addr(&h)).await.unwrap();
    let started = Instant::now();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut cut = false;
    for b in preface {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !cut {
        closed_after(&mut slow, limit).await;
    }
    assert!(started.elapsed() < limit);
    // The preface and an empty SETTINGS frame, then nothing.
    let mut h2 = TcpStream::connect(addr(&h)).await.unwrap();
    h2.write_all(preface).await.unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    closed_after(&mut h2, limit).await;
    let m = h.scrape_metrics().await;
    assert_eq!(
        metric(
            &m,
            "ratepay_gateway_connections_closed_total{listener=\"proxy\",reason=\"first_request_timeout\"}"
        ),
        Some(3.0),
        "{m}"
    );
    // A normal request is still served.
    let resp = h
        .req(
            reqwest::Method::GET,
            &format!("{TX_PATH}/scwBgARW-nE93I7_ywhp"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "forwarded to the sandbox");
    h.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let h = with_listen("idle_timeout_ms = 400").await;
    let mut conn = TcpStream::connect(addr(&h)).await.unwrap();
    assert!(get_record(&mut conn).await.starts_with("HTTP/1.1 "));
    let t = closed_after(&mut conn, Duration::from_secs(5)).await;
    assert!(
        t >= Duration::from_millis(300),
        "idle deadline respected: {t:?}"
    );
    let m = h.scrape_metrics().await;
    assert_eq!(
        metric(
            &m,
            "ratepay_gateway_connections_closed_total{listener=\"proxy\",reason=\"idle\"}"
        ),
        Some(1.0),
        "{m}"
    );
    h.stop().await;
}

/// After an answer, an HTTP/1 connection that trickles its next request head a byte at a time
/// (or sends nothing) is closed `listen.header_timeout_ms` after that answer, long before the
/// idle timeout; one that keeps sending whole requests is not.
#[tokio::test]
async fn a_trickled_http1_head_is_closed_at_the_header_timeout() {
    let h = with_listen("header_timeout_ms = 400").await;
    let req = format!(
        "GET /pps/api/v1/session-record/nosuchsession HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\n\r\n",
        keys::FULL
    );
    let mut buf = vec![0u8; 4096];
    async fn ask(conn: &mut TcpStream, req: &str, buf: &mut [u8]) {
        conn.write_all(req.as_bytes()).await.unwrap();
        let n = conn.read(buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "));
    }
    // Whole requests one after another, for longer than the header timeout altogether: the
    // connection stays open throughout. (Closed by the client after, which counts nothing.)
    let mut busy = TcpStream::connect(addr(&h)).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(900) {
        ask(&mut busy, &req, &mut buf).await;
    }
    drop(busy);
    // A head a byte at a time after one answer.
    let mut slow = TcpStream::connect(addr(&h)).await.unwrap();
    ask(&mut slow, &req, &mut buf).await;
    let answered = Instant::now();
    let limit = Duration::from_secs(5);
    let mut cut = false;
    for b in req.as_bytes() {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if answered.elapsed() > limit {
            break;
        }
    }
    if !cut {
        closed_after(&mut slow, limit).await;
    }
    let t = answered.elapsed();
    assert!(
        t >= Duration::from_millis(300) && t < limit,
        "closed at the header timeout: {t:?}"
    );
    let m = h.scrape_metrics().await;
    assert_eq!(
        metric(
            &m,
            "ratepay_gateway_connections_closed_total{listener=\"proxy\",reason=\"header_timeout\"}"
        ),
        Some(1.0),
        "{m}"
    );
    h.stop().await;
}

/// With `first_request_timeout_ms` raised (clients that connect ahead of need), a first head
/// once begun must still arrive within `header_timeout_ms` of its first byte, and an HTTP/2
/// connection's first stream within `idle_timeout_ms` of its preface; a connection that has
/// sent nothing yet keeps the first-request deadline.
#[tokio::test]
async fn a_first_head_begun_is_bounded_by_the_header_timeout() {
    let h = with_listen(
        "first_request_timeout_ms = 60000\nheader_timeout_ms = 400\nidle_timeout_ms = 1500\n\
         send_timeout_ms = 500",
    )
    .await;
    let limit = Duration::from_secs(10);
    let mut early = TcpStream::connect(addr(&h)).await.unwrap();
    let opened = Instant::now();
    // Half a head, then nothing: closed at the header timeout, not after a minute.
    let mut half = TcpStream::connect(addr(&h)).await.unwrap();
    half.write_all(b"GET /pps/api/v1/session-record/x HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let t = closed_after(&mut half, limit).await;
    assert!(
        t >= Duration::from_millis(300),
        "not before the header timeout: {t:?}"
    );
    // The HTTP/2 preface and SETTINGS, then no stream: shut down with a GOAWAY at the idle
    // timeout, not the header timeout; then, as this client never answers the PING that
    // follows the GOAWAY, closed `send_timeout_ms` later.
    let mut h2 = TcpStream::connect(addr(&h)).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match h2.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("closed in time");
    let t = started.elapsed();
    assert!(
        t >= Duration::from_millis(1900),
        "the h2 preface waits the idle timeout, then the send timeout: {t:?}"
    );
    // The server's frames: 9-byte headers, the type at [3]; GOAWAY is 7.
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= received.len() {
        let len = usize::from(received[at]) << 16
            | usize::from(received[at + 1]) << 8
            | usize::from(received[at + 2]);
        types.push(received[at + 3]);
        at += 9 + len;
    }
    assert!(
        types.contains(&7),
        "a GOAWAY before the close: frame types {types:?}"
    );
    let m = h.scrape_metrics().await;
    let closed = |reason: &str| {
        metric(
            &m,
            &format!(
                "ratepay_gateway_connections_closed_total{{listener=\"proxy\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(closed("header_timeout"), Some(1.0), "{m}");
    assert_eq!(closed("idle"), Some(1.0), "{m}");
    assert_eq!(closed("send_timeout"), Some(1.0), "{m}");
    assert_eq!(closed("first_request_timeout"), None, "{m}");
    // The connection opened first has sent nothing for longer than all three timeouts: still
    // open, and served.
    assert!(opened.elapsed() > Duration::from_millis(1900));
    assert!(
        get_record(&mut early).await.starts_with("HTTP/1.1 "),
        "served after {:?} of silence",
        opened.elapsed()
    );
    h.stop().await;
}

#[tokio::test]
async fn the_proxy_listener_caps_connections_and_admin_keeps_answering() {
    let h = with_listen("max_connections = 20\nfirst_request_timeout_ms = 60000").await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(addr(&h)).await.unwrap());
    }
    // Admitted connections are counted before the next accept, so wait for the gauge.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = h.scrape_metrics().await;
        if metric(&m, "ratepay_gateway_connections_open{listener=\"proxy\"}") == Some(20.0) {
            break;
        }
        assert!(Instant::now() < deadline, "20 connections open: {m}");
        tokio::task::yield_now().await;
    }
    // One more is closed at once, and counted; the admin listener still answers.
    let mut extra = TcpStream::connect(addr(&h)).await.unwrap();
    let t = closed_after(&mut extra, Duration::from_secs(5)).await;
    assert!(t < Duration::from_secs(5));
    let m = h.scrape_metrics().await;
    assert_eq!(
        metric(
            &m,
            "ratepay_gateway_connections_closed_total{listener=\"proxy\",reason=\"cap\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // Once the held connections go, requests are served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = h
            .req(
                reqwest::Method::GET,
                "/pps/api/v1/session-record/nosuchsession",
                keys::FULL,
            )
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 404) {
            break;
        }
        assert!(Instant::now() < deadline, "served again once below the cap");
        tokio::task::yield_now().await;
    }
    h.stop().await;
}

/// The review's case: a flood of silent connections larger than the gateway's open-file limit.
/// Before issue 13 the gateway accepted until it ran out of descriptors, logged `accept failed`
/// in a loop and served nothing until the attacker let go; the connections in its backlog were
/// never even accepted. Now the cap (below the descriptor limit) refuses the excess at once and
/// the first-request deadline closes the rest, so normal requests are served while the
/// attacker still holds every socket it opened.
#[tokio::test]
async fn a_flood_beyond_the_open_file_limit_does_not_stop_the_gateway() {
    const FLOOD: usize = 300;
    let sandbox = sandbox::spawn(sandbox_config(Duration::from_secs(1800)))
        .await
        .expect("sandbox starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = process::gateway_config(dir.path(), sandbox.url().trim_start_matches("http://"));
    let text = std::fs::read_to_string(&cfg).expect("config").replacen(
        "shutdown_grace_ms = 10000",
        "shutdown_grace_ms = 10000\nfirst_request_timeout_ms = 1000\nmax_connections = 100",
        1,
    );
    std::fs::write(&cfg, text).expect("config");
    // 128 descriptors: fewer than the flood, more than the cap plus what the process needs.
    let mut command = Command::new("prlimit");
    command.args(["--nofile=128:128", "--", process::BIN, "serve", "--config"]);
    command.arg(&cfg);
    let (_gateway, addrs) = process::spawn_command(command, &["proxy", "admin"]);
    let proxy = addrs["proxy"].clone();

    let mut held = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let connect = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&proxy));
        let stream = connect.await.expect("the gateway keeps accepting");
        held.push(stream.expect("connect"));
    }
    // Every socket of the flood is closed by the gateway (refused at the cap, or at the
    // first-request deadline), although the attacker keeps all of them open.
    for stream in &mut held {
        closed_after(stream, Duration::from_secs(20)).await;
    }
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let resp = http
            .get(format!(
                "http://{proxy}/pps/api/v1/session-record/nosuchsession"
            ))
            .bearer_auth(process::KEY)
            .send()
            .await
            .expect("a normal request is served during the flood");
        assert_eq!(resp.status(), 404);
    }
    let text = http
        .get(format!("http://{}/metrics", addrs["admin"]))
        .send()
        .await
        .expect("admin answers")
        .text()
        .await
        .expect("metrics");
    let closed = |reason: &str| {
        metric(
            &text,
            &format!(
                "ratepay_gateway_connections_closed_total{{listener=\"proxy\",reason=\"{reason}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    let (cap, timed_out) = (closed("cap"), closed("first_request_timeout"));
    assert!(
        cap >= 1.0 && timed_out >= 1.0,
        "cap {cap}, timed out {timed_out}"
    );
    assert_eq!(
        cap + timed_out,
        FLOOD as f64,
        "every flood connection closed once"
    );
    drop(held);
}

/// A client that pipelines requests and reads none of the answers: once the gateway's writes
/// stay blocked for `listen.send_timeout_ms`, the connection is closed (hyper alone would wait
/// on its flush for good, and `max_connections` such clients would close the listener).
/// A client that reads its answers is not affected.
#[tokio::test]
async fn a_client_that_reads_nothing_is_closed_at_the_send_timeout() {
    let h = with_listen("send_timeout_ms = 400").await;
    // Long paths, so that each 404 answer (which names the path) is a few KB and the client's
    // small window, then the gateway's send buffer, fill after a few thousand.
    let path = format!("/{}", "x".repeat(4000));
    let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr(&h).parse().unwrap()).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        for _ in 0..4000 {
            if writer.write_all(req.as_bytes()).await.is_err() {
                break;
            }
        }
        writer
    });
    let closed =
        "ratepay_gateway_connections_closed_total{listener=\"proxy\",reason=\"send_timeout\"}";
    common::custom::eventually(
        "the unread connection closed at the send timeout",
        || async { metric(&h.scrape_metrics().await, closed) == Some(1.0) },
    )
    .await;
    // A client that reads: answered, and nothing else closed for the send timeout.
    let r = h
        .req(reqwest::Method::GET, TX_PATH, keys::FULL)
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() < 500, "{}", r.status());
    assert_eq!(metric(&h.scrape_metrics().await, closed), Some(1.0));
    drop(reader);
    sending.abort();
    h.stop().await;
}

/// An upstream that answers every request with a chunked body it takes about a second to
/// send, five chunks 200 ms apart (the slowness is what is under test, not a wait for it).
async fn slowly_streaming_upstream() -> String {
    let start =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut writes = vec![(Duration::ZERO, start.as_bytes().to_vec())];
    for part in ["{\"x\":[", "1,", "2,", "3", "]}"] {
        let chunk = format!("{:x}\r\n{part}\r\n", part.len());
        writes.push((Duration::from_millis(200), chunk.into_bytes()));
    }
    writes.push((Duration::ZERO, b"0\r\n\r\n".to_vec()));
    RawUpstream::start(Answer::Paced(writes)).await.url
}

/// An upstream that answers every request with `len` bytes of `x` in one write (hyper's
/// client then reads it in frames of up to ~400 KiB).
async fn bulk_upstream(len: usize) -> String {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n"
    )
    .into_bytes();
    answer.resize(answer.len() + len, b'x');
    RawUpstream::start(Answer::Raw(answer)).await.url
}

/// A harness whose payment API is `upstream` and whose `[listen]` section has `lines` added.
async fn behind_upstream(upstream: &str, lines: &str) -> Harness {
    Harness::edited(
        sandbox_config(Options::default().token_lifetime),
        &Options::default(),
        |text, sandbox, _| {
            common::custom::replace_once(
                &text.replacen(
                    "shutdown_grace_ms = 5000",
                    &format!("shutdown_grace_ms = 5000\n{lines}"),
                    1,
                ),
                &common::custom::upstream_url_line("payment", sandbox),
                &common::custom::upstream_url_line("payment", upstream),
            )
        },
    )
    .await
}

/// A raw HTTP/2 client of the gateway granting each stream `window` bytes at first, and its
/// connection's task.
async fn h2_client(
    h: &Harness,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr(h)).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    (client.ready().await.unwrap(), tokio::spawn(conn))
}

/// An answer whose body streams for longer than `listen.header_timeout_ms` keeps its
/// connection: the header timeout counts from the end of the answer, not from when the
/// handler returned its head.
#[tokio::test]
async fn a_slowly_streamed_answer_keeps_its_connection_past_the_header_timeout() {
    let upstream = slowly_streaming_upstream().await;
    let h = behind_upstream(&upstream, "header_timeout_ms = 400").await;
    let req = format!(
        "GET {TX_PATH}/slowtx0001 HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\n\r\n",
        keys::FULL
    );
    let mut conn = TcpStream::connect(addr(&h)).await.unwrap();
    for round in 0..2 {
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"0\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .expect("the answer goes on")
                .unwrap();
            assert!(
                n > 0,
                "round {round}: closed after {:?}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        assert!(text.contains("]}"), "round {round}: {text}");
    }
    let m = h.scrape_metrics().await;
    let closed = metric(
        &m,
        "ratepay_gateway_connections_closed_total{listener=\"proxy\",reason=\"header_timeout\"}",
    );
    assert!(matches!(closed, None | Some(0.0)), "{m}");
    h.stop().await;
}

/// An HTTP/2 client that grants a byte of window and then takes nothing more (while its
/// connection answers PINGs and opens streams): a streamed answer's stream is reset at
/// `listen.send_timeout_ms`, and the connection still serves a stream it reads; a whole answer
/// buffered in the connection is dropped with its connection, `send_timeout_ms` after the idle
/// timeout shut that down.
#[tokio::test]
async fn an_h2_answer_the_client_stops_reading_is_dropped_at_the_send_timeout() {
    let upstream = slowly_streaming_upstream().await;
    let h = behind_upstream(&upstream, "send_timeout_ms = 400\nidle_timeout_ms = 600").await;
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", addr(&h)))
            .header("authorization", format!("Bearer {}", keys::FULL))
            .body(())
            .unwrap()
    };
    let streamed = format!("{TX_PATH}/slowtx0001");
    let (mut client, _conn) = h2_client(&h, 1).await;
    // The streamed answer: its head and one byte of its body, then nothing more is taken.
    let (answer, _) = client.send_request(get(&streamed), true).unwrap();
    let mut stalled = answer.await.unwrap().into_body();
    let first = stalled.data().await.unwrap().unwrap();
    assert_eq!(first.len(), 1, "one byte of window");
    let reset = tokio::time::timeout(Duration::from_secs(10), stalled.data())
        .await
        .expect("reset within 10 s");
    let e = reset.expect("a reset, not the end").unwrap_err();
    assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e}");
    // The same connection still serves the same answer to a stream whose client reads it.
    let mut client = client.ready().await.unwrap();
    let (answer, _) = client.send_request(get(&streamed), true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let mut read = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        read.extend_from_slice(&chunk);
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(read, b"{\"x\":[1,2,3]}", "read whole, a byte at a time");
    drop(client);

    // A whole answer (the sandbox's 404) goes to h2's buffer at once: its stream's task ends,
    // and the connection, shut down when idle, could never finish sending it.
    let (mut client, conn) = h2_client(&h, 1).await;
    let (answer, _) = client
        .send_request(get("/pps/api/v1/session-record/nosuchsession"), true)
        .unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 404);
    let mut held = answer.into_body();
    assert_eq!(held.data().await.unwrap().unwrap().len(), 1);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection is closed within 10 s");
    assert!(ended.is_ok(), "the client's task ended: {ended:?}");
    let m = h.scrape_metrics().await;
    let count = |name: &str, reason: &str| {
        metric(
            &m,
            &format!("ratepay_gateway_{name}_total{{listener=\"proxy\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(count("streams_reset", "send_timeout"), Some(1.0), "{m}");
    assert_eq!(
        count("connections_closed", "send_timeout"),
        Some(1.0),
        "{m}"
    );
    drop(held);
    h.stop().await;
}

/// An HTTP/2 client that reads a large answer slowly but steadily (16 KiB at a time, each
/// window granted 50 ms after the last piece) is not reset, though each of the upstream's
/// frames takes it far longer than `listen.send_timeout_ms` to read: the answer goes to h2 in
/// 16 KiB pieces, each one progress.
#[tokio::test]
async fn a_slow_h2_reader_that_reads_is_not_reset() {
    const LEN: usize = 512 * 1024;
    let upstream = bulk_upstream(LEN).await;
    let h = behind_upstream(&upstream, "send_timeout_ms = 300").await;
    let (mut client, _conn) = h2_client(&h, 16 * 1024).await;
    let req = http::Request::get(format!("http://{}{TX_PATH}/bulktx0001", addr(&h)))
        .header("authorization", format!("Bearer {}", keys::FULL))
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(req, true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let mut read = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("reset after {read} bytes: {e}"));
        read += chunk.len();
        // The slow reader's pace: its workload, not a wait for the gateway.
        tokio::time::sleep(Duration::from_millis(50)).await;
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(read, LEN, "read whole");
    let m = h.scrape_metrics().await;
    assert_eq!(
        metric(
            &m,
            "ratepay_gateway_streams_reset_total{listener=\"proxy\",reason=\"send_timeout\"}"
        ),
        Some(0.0),
        "{m}"
    );
    h.stop().await;
}
