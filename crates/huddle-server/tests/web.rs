//! The web routes: the debug page and `huddle.js` with their content types, `/api/info`, and the
//! dev-token endpoint (present only in dev mode; its tokens verify with the dev app's secret and
//! log in). Plain HTTP/1.1 over a `TcpStream`: no HTTP client crate needed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use huddle_server::{BackgroundServer, ServerConfig, test_app};
use huddle_token::VerifyOptions;
use serde_json::Value;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn http(server: &BackgroundServer, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut tcp = TcpStream::connect(server.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr(),
        body.len()
    );
    tcp.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("a chunk size");
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

fn dev_server() -> (BackgroundServer, tempdir::Dir) {
    let dir = tempdir::Dir::new("web-dev");
    let mut config = ServerConfig::for_tests(vec![]);
    config.data_dir = dir.path.clone();
    config.use_dev_app().unwrap();
    (BackgroundServer::start(config).unwrap(), dir)
}

/// A throwaway directory under the target dir (removed on drop).
mod tempdir {
    use std::path::PathBuf;

    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "huddle-{name}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[test]
fn serves_the_page_and_the_sdk_with_their_content_types() {
    let server = BackgroundServer::start(ServerConfig::for_tests(vec![test_app(3)])).unwrap();
    for (path, ctype, needle) in [
        ("/", "text/html", "id=\"login\""),
        ("/app.js", "text/javascript", "HuddleEngine"),
        ("/style.css", "text/css", "#log"),
        ("/sdk/huddle.js", "text/javascript", "export { HuddleEngine }"),
        (
            "/sdk/sdk/engine.js",
            "text/javascript",
            "export class HuddleEngine",
        ),
    ] {
        let r = http(&server, "GET", path, None);
        assert_eq!(r.status, 200, "{path}");
        let got = r.header("content-type").unwrap_or_default();
        assert!(got.starts_with(ctype), "{path}: content-type {got}");
        assert!(r.body.contains(needle), "{path} lacks {needle}");
    }
    assert_eq!(http(&server, "GET", "/nope.js", None).status, 404);
    // Signaling and health are still there.
    assert_eq!(http(&server, "GET", "/healthz", None).body, "ok");
}

/// Every module of the browser SDK (`web/sdk/`, read from disk here, so a new file the server
/// does not embed fails this test) is served at `/sdk/sdk/<name>` as it is on disk, with the
/// entry's content type and headers; every module the entry and the modules import is served.
#[test]
fn serves_every_sdk_module() {
    let server = BackgroundServer::start(ServerConfig::for_tests(vec![test_app(3)])).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/sdk");
    let entry = http(&server, "GET", "/sdk/huddle.js", None);
    let headers_of = |r: &Reply| {
        [
            "content-type",
            "cache-control",
            "x-content-type-options",
            "content-security-policy",
        ]
        .map(|h| r.header(h).map(str::to_string))
    };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.iter().any(|n| n == "engine.js"), "{names:?}");
    let mut sources = vec![entry.body.clone()];
    for name in &names {
        let r = http(&server, "GET", &format!("/sdk/sdk/{name}"), None);
        assert_eq!(r.status, 200, "web/sdk/{name} is not served");
        assert_eq!(r.body, std::fs::read_to_string(dir.join(name)).unwrap(), "{name}");
        assert_eq!(headers_of(&r), headers_of(&entry), "{name}");
        sources.push(r.body);
    }
    // The imports resolve: `./sdk/x.js` from the entry, `./x.js` between modules.
    for src in &sources {
        for import in src.split("from \"./").skip(1) {
            let target = import.split('"').next().unwrap();
            let name = target.strip_prefix("sdk/").unwrap_or(target);
            assert!(
                names.iter().any(|n| n == name),
                "an import of {target} has no module"
            );
        }
    }
    assert_eq!(http(&server, "GET", "/sdk/sdk/nope.js", None).status, 404);
}

#[test]
fn info_and_no_dev_token_outside_dev_mode() {
    let server = BackgroundServer::start(ServerConfig::for_tests(vec![test_app(3)])).unwrap();
    let info = http(&server, "GET", "/api/info", None);
    assert_eq!(info.status, 200);
    assert!(
        info.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let v = info.json();
    assert_eq!(v["dev_mode"], false);
    assert_eq!(v["protocol"], huddle_proto::PROTOCOL_VERSION);
    assert!(v.get("app_id").is_none(), "{v}");
    let r = http(
        &server,
        "POST",
        "/api/dev-token",
        Some(r#"{"app_id":3,"user_id":"alice"}"#),
    );
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn dev_tokens_verify_with_the_dev_apps_secret() {
    let (server, _dir) = dev_server();
    let app = server.state().config().apps[0].clone();
    let info = http(&server, "GET", "/api/info", None).json();
    assert_eq!(info["dev_mode"], true);
    assert_eq!(info["app_id"], app.app_id.get());

    let body = format!(
        r#"{{"app_id":{},"user_id":"alice","room_id":"room-1"}}"#,
        app.app_id
    );
    let r = http(&server, "POST", "/api/dev-token", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("04"), "{token}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let opts = VerifyOptions {
        app_id: Some(app.app_id.get()),
        user_id: Some("alice"),
        now,
    };
    let claims = huddle_token::verify(token, app.server_secret.as_str(), &opts).unwrap();
    assert_eq!(v["expire"], claims.expire);
    assert!((claims.expire - now - 3600).abs() <= 2, "{}", claims.expire - now);
    let p = claims.privileges().unwrap().expect("a room-bound token");
    assert!(p.allows_room("room-1") && !p.allows_room("room-2"));
    assert!(p.allows_login() && p.allows_publish());

    // Without a room: any room; a chosen lifetime.
    let body = format!(
        r#"{{"app_id":{},"user_id":"bob","effective_secs":40}}"#,
        app.app_id
    );
    let v = http(&server, "POST", "/api/dev-token", Some(&body)).json();
    let token = v["token"].as_str().unwrap();
    let claims = huddle_token::verify(token, app.server_secret.as_str(), &VerifyOptions::new(now)).unwrap();
    assert_eq!(claims.user_id, "bob");
    assert!((claims.expire - now - 40).abs() <= 2);
    assert!(claims.privileges().unwrap().is_none());
}

#[test]
fn dev_token_refuses_bad_input_with_codes() {
    let (server, _dir) = dev_server();
    let app_id = server.state().config().apps[0].app_id.get();
    let cases = [
        ("not json".to_string(), 1000006),
        (r#"{"user_id":"alice"}"#.to_string(), 1000006),
        (
            format!(r#"{{"app_id":{},"user_id":"alice","x":1}}"#, app_id),
            1000006,
        ),
        (r#"{"app_id":0,"user_id":"alice"}"#.to_string(), 1001004),
        (
            format!(r#"{{"app_id":{},"user_id":"alice"}}"#, app_id.wrapping_add(1)),
            1001004,
        ),
        (format!(r#"{{"app_id":{},"user_id":""}}"#, app_id), 1002005),
        (format!(r#"{{"app_id":{},"user_id":"a b"}}"#, app_id), 1002006),
        (
            format!(r#"{{"app_id":{},"user_id":"{}"}}"#, app_id, "u".repeat(65)),
            1002007,
        ),
        (
            format!(r#"{{"app_id":{},"user_id":"alice","room_id":"a b"}}"#, app_id),
            1002012,
        ),
        (
            format!(r#"{{"app_id":{},"user_id":"alice","effective_secs":0}}"#, app_id),
            1000006,
        ),
        (
            format!(
                r#"{{"app_id":{},"user_id":"alice","effective_secs":86401}}"#,
                app_id
            ),
            1000006,
        ),
    ];
    for (body, code) in cases {
        let r = http(&server, "POST", "/api/dev-token", Some(&body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let v = r.json();
        assert_eq!(v["code"], code, "{body}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
}
