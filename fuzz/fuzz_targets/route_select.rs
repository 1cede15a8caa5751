//! The route choice on hostile methods, hosts and paths.
//!
//! Input: `method \n host \n path`. The table protects `admin.example.com`,
//! `/admin/` and DELETE on `/files/`; everything else falls to a public `/`
//! route, so a request that dodges a protected route lands on the public one.
//! The oracle below reads the request the way lenient upstreams do (repeated
//! percent-decoding, `;` parameters dropped, dot segments, case folding,
//! trailing dots, full-width forms, HEAD as GET, lower-case methods, a
//! trailing dot and case in the host). If any such reading is protected, the
//! table must not answer "public": it may pick a protected route or refuse
//! the request, nothing else.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tokengate::config::RawConfig;
use tokengate::policy::{Access, RouteTable};

const CONFIG: &str = r#"
[introspection]
url = "http://127.0.0.1:1/introspect"
client_id = "fuzz"
client_secret = "fuzz"

[[routes]]
path_prefix = "/"
host = "admin.example.com"
require_scopes = ["admin"]

[[routes]]
path_prefix = "/admin/"
require_scopes = ["admin"]

[[routes]]
path_prefix = "/files/"
methods = ["DELETE"]
require_scopes = ["admin"]

[[routes]]
path_prefix = "/"
public = true
"#;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let raw: RawConfig = toml::from_str(CONFIG).expect("fuzz config parses");
        match raw.validate() {
            Ok(settings) => settings.routes,
            Err(e) => panic!("fuzz config does not validate: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (Some(method), Some(host), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    // Only what hyper would hand us: a method token and an origin-form path.
    let Ok(m) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(pq) = path.parse::<http::uri::PathAndQuery>() else {
        return;
    };
    if !pq.path().starts_with('/') {
        return;
    }
    let host = (!host.is_empty()).then_some(host);
    let chosen = table().select(&m, host, pq.path());
    let Ok(route) = chosen else {
        return; // refused: always safe
    };
    if matches!(route.access, Access::Public) && protected(method, host, pq.path()) {
        panic!(
            "route {:?} is public, but an upstream may read {method:?} {host:?} {:?} as protected",
            route.name,
            pq.path()
        );
    }
});

/// Whether some lenient reading of the request hits a protected rule.
fn protected(method: &str, host: Option<&str>, path: &str) -> bool {
    let m = method.to_ascii_uppercase();
    let delete = m == "DELETE";
    if let Some(h) = host {
        let h = h.rsplit_once(':').map_or(h, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                h
            }
        });
        let h = fold(h).trim_end_matches('.').to_owned();
        if h == "admin.example.com" {
            return true;
        }
    }
    readings(path).iter().any(|p| {
        under(p, "/admin") || (delete && under(p, "/files"))
    })
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// Lower case, full-width ASCII (U+FF01..U+FF5E) folded as NFKC does.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c as u32 {
            0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFF01 + 0x21).unwrap_or(c),
            _ => c,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The path as lenient upstreams may read it.
fn readings(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut p = path.to_owned();
    // Decoded once, twice, ... until it stops changing (bounded).
    for _ in 0..4 {
        out.push(clean(&p));
        let next = decode(&p);
        if next == p {
            break;
        }
        p = next;
    }
    out
}

/// `;params` dropped, backslashes as slashes, NTFS stream suffixes and
/// trailing dots dropped, dot segments resolved, folded.
fn clean(p: &str) -> String {
    let folded = fold(&p.replace('\\', "/"));
    let mut segs: Vec<&str> = Vec::new();
    for seg in folded.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        let stream = match seg.split_once(':') {
            Some((name, _)) if !name.is_empty() && seg != "." && seg != ".." => name,
            _ => seg,
        };
        let trimmed = stream.trim_end_matches(['.', ' ']);
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            _ if trimmed.is_empty() => {}
            _ => segs.push(trimmed),
        }
    }
    format!("/{}", segs.join("/"))
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
