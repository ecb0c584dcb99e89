//! A raw HTTP/1.1 upstream on 127.0.0.1:0 for the cases the sandbox cannot play: it records
//! every request exactly as received (method, path, headers, body) and answers each with bytes
//! the test chose, framing errors included, or by closing the connection.

use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lowercased names, values as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// Every value of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the upstream answers.
#[derive(Clone)]
pub enum Answer {
    /// These bytes, verbatim, then the connection stays open for the next request.
    Raw(Vec<u8>),
    /// Each part written after its delay (a slow or trickling answer), then the same. The
    /// slowness is the upstream under test, not a wait for it.
    Paced(Vec<(std::time::Duration, Vec<u8>)>),
    /// Close the connection once the request is read (no answer at all).
    Close,
}

/// A running raw upstream.
pub struct RawUpstream {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<Answer>>,
}

impl RawUpstream {
    /// Starts one answering every request with `answer`.
    pub async fn start(answer: Answer) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer = Arc::new(Mutex::new(answer));
        let (s, a) = (seen.clone(), answer.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (seen, answer) = (s.clone(), a.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(req) = read_request(&mut stream, &mut buf).await else {
                            return;
                        };
                        seen.lock().unwrap().push(req);
                        let answer = answer.lock().unwrap().clone();
                        match answer {
                            Answer::Raw(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Answer::Paced(parts) => {
                                for (delay, bytes) in parts {
                                    tokio::time::sleep(delay).await;
                                    if stream.write_all(&bytes).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Answer::Close => return,
                        }
                    }
                });
            }
        });
        RawUpstream { url, seen, answer }
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Changes the answer for later requests.
    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

/// A complete `HTTP/1.1 status` answer with a JSON body and a correct Content-Length.
pub fn json_answer(status: u16, body: &str) -> Answer {
    Answer::Raw(
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

async fn read_request(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

/// Relays every connection `listener` accepts to `to`, byte for byte (an upstream that is
/// somewhere else, e.g. the sandbox behind a port the test controls).
pub fn relay(listener: TcpListener, to: std::net::SocketAddr) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}
