//! Raw sockets, for exact bytes.

use super::*;

/// Writes `bytes` to `addr` and reads until the server closes (send
/// `Connection: close` on the last request). Does not half-close: hyper would
/// drop a connection whose read side hits EOF mid-request.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("server did not close the connection within 20s")
        .unwrap();
    out
}

/// The first line of a raw response (`""` if there is none).
pub fn status_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Splits a byte stream into HTTP/1.1 responses. `no_body` lists, in order,
/// whether each response answers a HEAD (no body whatever the headers say).
/// Anything after a response framed "until close" belongs to its body.
pub fn parse_responses(mut buf: &[u8], heads: &[bool]) -> Vec<RawResp> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let end = find(buf, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("truncated head: {:?}", String::from_utf8_lossy(buf)));
        let head = std::str::from_utf8(&buf[..end]).unwrap();
        buf = &buf[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let is_head = heads.get(out.len()).copied().unwrap_or(false);
        let body = if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let eol = find(buf, b"\r\n").unwrap();
                let size_str = std::str::from_utf8(&buf[..eol]).unwrap();
                let size =
                    usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
                buf = &buf[eol + 2..];
                if size == 0 {
                    // Trailers (none expected), then the final CRLF.
                    let end = find(buf, b"\r\n").unwrap();
                    buf = &buf[end + 2..];
                    break;
                }
                body.extend_from_slice(&buf[..size]);
                buf = &buf[size + 2..];
            }
            body
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().unwrap();
            let b = buf[..len].to_vec();
            buf = &buf[len..];
            b
        } else {
            let b = buf.to_vec();
            buf = &[];
            b
        };
        out.push(RawResp {
            status,
            headers,
            body,
        });
    }
    out
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Returns the bytes after the first response head: for no-body responses the
/// server must have sent nothing there.
pub fn after_head(buf: &[u8]) -> &[u8] {
    let end = find(buf, b"\r\n\r\n").expect("no response head");
    &buf[end + 4..]
}
