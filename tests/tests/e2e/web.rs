//! The daemon's status page in a real browser: Debian's headless Chromium, driven through
//! chromedriver's WebDriver protocol (plain HTTP and JSON, no client crate), against a real
//! `lockstep daemon` with four SQLite syncs (one of them two-way).
//!
//! What it checks: the overview lists the syncs with the counts of their last runs, marks
//! the failing one and lists what needs attention, also with JavaScript off (a browser
//! session with JavaScript disabled); approving held deletes through the page (button,
//! confirmation, outcome) gets them applied by the next run; retrying a rejected record
//! through the page writes it; the live part of a page updates while runs happen, without a
//! reload; a queued conflict of a two-way sync, resolved on its page by taking a side, is
//! written by the next run; on a phone's screen the overview does not scroll sideways.
//! A screenshot of each page is saved under `target/artifacts/web/`.
//!
//! Without `/usr/bin/chromium` or `/usr/bin/chromedriver` the test is skipped with a notice,
//! and fails under `CI=true` (`.ci/run` installs both).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_e2e::{lockstep, run, service_available, sqlite_count, sqlite_exec, workspace_root};
use serde_json::{json, Value};

use crate::daemon::{free_port, Daemon};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn artifacts() -> PathBuf {
    let dir = workspace_root().join("target/artifacts/web");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One HTTP/1.1 request with an optional JSON body; the answer's status and JSON body.
/// chromedriver keeps connections open whatever the request says, so the body is read by its
/// `Content-Length`.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let (head_end, length) = loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("{method} {path}: the connection closed early"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| format!("{method} {path}: no Content-Length in {head}"))?;
            break (at + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end = buf.len().min(head_end + length);
    let json = serde_json::from_slice(&buf[head_end..end]).unwrap_or(Value::Null);
    Ok((status, json))
}

/// A chromedriver process and one browser session in it, ended when dropped.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Browser {
    /// A browser session with a window of `width` by `height`, with JavaScript on or off.
    fn start(width: u32, height: u32, javascript: bool) -> Browser {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(&addr, "GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
                "prefs": {"profile.managed_default_content_settings.javascript": if javascript { 1 } else { 2 }}
            }
        }}});
        let (status, answer) =
            request(&addr, "POST", "/session", Some(&capabilities)).expect("chromedriver answers");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session ({status}): {answer}"))
            .to_owned();
        Browser {
            driver,
            addr,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = request(
            &self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Waits (up to 20 s) for an element to appear, e.g. on the page a form submit leads to;
    /// fails with the page's source.
    fn wait_for(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = request(
                &self.addr,
                "POST",
                &format!("/session/{}/element", self.session),
                Some(&json!({"using": "css selector", "value": css})),
            )
            .unwrap_or((0, Value::Null));
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on the page:\n{}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn click(&self, css: &str) {
        self.wait_for(css);
        let element = self.find(css);
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    fn text(&self, css: &str) -> String {
        self.wait_for(css);
        let element = self.find(css);
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn source(&self) -> String {
        self.call("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn screenshot(&self, name: &str) {
        use base64_png::decode;
        let data = self.call("GET", "/screenshot", None);
        let png = decode(data.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::write(artifacts().join(name), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 decoding, enough for WebDriver's screenshots.
mod base64_png {
    pub(super) fn decode(text: &str) -> Vec<u8> {
        let value = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let mut acc = 0u32;
        let mut bits = 0;
        for c in text.bytes().filter_map(value) {
            acc = (acc << 6) | c;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }
}

fn setup(dir: &Path) {
    sqlite_exec(
        &dir.join("src.db"),
        &[
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, deleted_at TIMESTAMP, updated_at TIMESTAMP NOT NULL)",
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 20) \
             INSERT INTO items SELECT v, 'item ' || v, NULL, '2026-01-01 00:00:00' FROM n",
            // The fourth contact's score is not a number: it is rejected.
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT, score TEXT)",
            "INSERT INTO contacts VALUES (1, 'a@example.com', '1'), (2, 'b@example.com', '2'), (3, 'c@example.com', '3'), (4, 'd@example.com', 'lots')",
        ],
    );
    std::fs::write(
        dir.join("lockstep.toml"),
        "[state]\nurl = \"sqlite://state.db\"\n\n\
         [connections.src]\nconnector = \"sqlite\"\nconfig = { path = \"src.db\" }\n\n\
         [connections.dst]\nconnector = \"sqlite\"\nconfig = { path = \"dst.db\" }\n\n\
         [syncs.items]\nsource = \"src.items\"\ndestination = \"dst.items\"\nmode = \"mirror\"\n\
         cursor = \"updated_at\"\nmax_delete_fraction = 0.1\ntombstone = \"deleted_at\"\nreconcile_every = 0\n\
         [syncs.items.fields]\nid = \"id\"\nname = \"name\"\n\
         [syncs.items.schedule]\nevery = \"2s\"\n\n\
         [syncs.contacts]\nsource = \"src.contacts\"\ndestination = \"dst.contacts\"\nmode = \"full\"\nmax_rejected = 5\n\
         [syncs.contacts.fields]\nid = \"id\"\nemail = \"email\"\nscore = { from = \"score\", cast = \"int64\" }\n\n\
         [syncs.broken]\nsource = \"src.no_such_table\"\ndestination = \"dst.broken\"\nmode = \"full\"\n\
         [syncs.broken.schedule]\nevery = \"2s\"\n\n\
         [connections.a]\nconnector = \"sqlite\"\nconfig = { path = \"a.db\" }\n\n\
         [connections.b]\nconnector = \"sqlite\"\nconfig = { path = \"b.db\" }\n\n\
         [syncs.people]\nsource = \"a.contacts\"\ndestination = \"b.contacts\"\n\
         mode = \"two-way\"\ncursor = \"updated_at\"\nkey = [\"id\"]\n\
         [syncs.people.fields]\nid = \"id\"\nemail = \"email\"\nname = \"name\"\n\
         [syncs.people.two_way]\npolicy = \"manual\"\nfallback = \"prefer-a\"\nb_cursor = \"updated_at\"\n",
    )
    .unwrap();
    // Both sides of the two-way sync `people`, with one record on side a.
    for side in ["a.db", "b.db"] {
        sqlite_exec(
            &dir.join(side),
            &[
                "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT, name TEXT, updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))",
                "CREATE TRIGGER touch AFTER UPDATE ON contacts FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at BEGIN UPDATE contacts SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = NEW.id; END",
            ],
        );
    }
    sqlite_exec(
        &dir.join("a.db"),
        &["INSERT INTO contacts (id, email, name) VALUES (1, 'ann@x', 'Ann')"],
    );
}

/// The `name` of contact 1 on a side of `people`.
fn name_on(db: &Path) -> String {
    lockstep_e2e::block_on(async {
        let pool = lockstep_e2e::sqlite_pool(db).await;
        let name: String = sqlx::query_scalar("SELECT name FROM contacts WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        name
    })
}

#[test]
fn the_status_page_in_chromium_lists_syncs_marks_failures_and_approves_held_deletes() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).exists() {
            assert!(!service_available(
                "Chromium",
                format!("{tool} is missing; apt-get install chromium chromium-driver")
            ));
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // Before the daemon: contacts once (3 added) and items once (20 added), then half the
    // items are soft-deleted, which the daemon's next run of items holds (past 10 %).
    for sync in ["contacts", "items"] {
        let (out, stdout, stderr) = run(lockstep(d).args(["run", sync, "--output", "json"]));
        assert!(out.status.success(), "{sync}: {stdout}\n{stderr}");
    }
    sqlite_exec(
        &d.join("src.db"),
        &["UPDATE items SET deleted_at = '2026-02-01', updated_at = '2026-02-01 00:00:00' WHERE id <= 10"],
    );
    // people: a first run copies Ann to side b; then both sides rename her differently and
    // the second run queues the conflict (policy manual).
    let people = |d: &Path| {
        let (out, stdout, stderr) = run(lockstep(d).args(["run", "people", "--output", "json"]));
        assert!(out.status.success(), "people: {stdout}\n{stderr}");
    };
    people(d);
    sqlite_exec(
        &d.join("a.db"),
        &["UPDATE contacts SET name = 'Ann A' WHERE id = 1"],
    );
    sqlite_exec(
        &d.join("b.db"),
        &["UPDATE contacts SET name = 'Ann B' WHERE id = 1"],
    );
    people(d);
    let daemon = Daemon::start(d);
    daemon.wait_for(
        Duration::from_secs(60),
        "a held run of items and a failed run of broken",
        |dm| {
            dm.runs("items").iter().any(|r| r["status"] == "held")
                && dm.runs("broken").iter().any(|r| r["status"] == "failed")
        },
    );
    let base = format!("http://{}", daemon.addr);

    // Without JavaScript: the overview's table, counts, marks and queues.
    let nojs = Browser::start(1280, 1000, false);
    nojs.goto(&format!("{base}/ui"));
    let dom = nojs.source();
    nojs.screenshot("overview-without-javascript.png");
    drop(nojs);
    assert!(
        dom.contains("<tr data-sync=\"broken\" class=\"failing\""),
        "{dom}"
    );
    assert!(dom.contains("<tr data-sync=\"contacts\""), "{dom}");
    let contacts_row = &dom[dom.find("<tr data-sync=\"contacts\"").unwrap()..];
    let contacts_row = &contacts_row[..contacts_row.find("</tr>").unwrap()];
    assert!(
        contacts_row.contains("data-label=\"Read\">4</td>")
            && contacts_row.contains("data-label=\"Added\">3</td>")
            && contacts_row.contains("data-label=\"Rejected\">1</td>")
            && contacts_row.contains("not scheduled"),
        "{contacts_row}"
    );
    assert!(dom.contains("10 held deletes wait for approval"), "{dom}");
    assert!(dom.contains("broken</a> is failing"), "{dom}");
    assert!(dom.contains("contacts</a>: 1 rejected records"), "{dom}");

    let browser = Browser::start(1280, 1000, true);
    browser.goto(&format!("{base}/ui"));
    assert!(browser.text("#attention").contains("broken is failing"));
    browser.screenshot("overview.png");

    browser.goto(&format!("{base}/ui/syncs/items"));
    assert!(browser.text("#deletes").contains("10 held"));
    browser.screenshot("sync-items.png");
    // The live part updates while runs happen (every 2 s), without a reload.
    browser.script("window.__lockstep_marker = 1;");
    let newest = |b: &Browser| {
        b.script(
            "var r = document.querySelector('tr[data-run]'); return r ? Number(r.dataset.run) : 0;",
        )
        .as_u64()
        .unwrap_or(0)
    };
    let before = newest(&browser);
    let deadline = Instant::now() + Duration::from_secs(30);
    while newest(&browser) <= before {
        assert!(
            Instant::now() < deadline,
            "the sync page did not update itself"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        browser.script("return window.__lockstep_marker;"),
        json!(1),
        "the page was not reloaded"
    );

    browser.click("form[action=\"/ui/syncs/items/deletes/approve\"] button");
    assert!(browser
        .text("#question")
        .contains("Approve 10 held deletes of sync items?"));
    browser.screenshot("confirm-approve.png");
    browser.click("#confirm");
    let outcome = browser.text("#outcome");
    assert!(
        outcome.contains("Approved 10 held deletes of sync items"),
        "{outcome}"
    );
    browser.screenshot("approved.png");

    // The next run applies them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM items") != 10 {
        assert!(
            Instant::now() < deadline,
            "the approved deletes were not applied:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    browser.goto(&format!("{base}/ui/syncs/items"));
    let source = browser.source();
    assert!(source.contains("deletes-approve"), "the action is recorded");
    assert!(source.contains("No deletes wait."), "{source}");
    browser.screenshot("sync-items-after.png");
    browser.goto(&format!("{base}/ui/syncs/broken"));
    browser.screenshot("sync-broken.png");

    // Retrying the rejected contact once its source is fixed writes it (through a
    // `lockstep rejects retry` child of the daemon).
    sqlite_exec(
        &d.join("src.db"),
        &["UPDATE contacts SET score = '4' WHERE id = 4"],
    );
    browser.goto(&format!("{base}/ui/syncs/contacts"));
    assert!(browser
        .text("#rejects")
        .contains("1 rejected records wait for a retry"));
    browser.screenshot("sync-contacts.png");
    browser.click("form[action=\"/ui/syncs/contacts/rejects/retry\"] button");
    browser.click("#confirm");
    let outcome = browser.text("#outcome");
    assert!(
        outcome.contains("retried 1 rejected records") && outcome.contains("1 succeeded"),
        "{outcome}\n{}",
        daemon.logs()
    );
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM contacts"),
        4
    );

    // The conflict of people: listed on the overview and the sync's page, shown field by
    // field, resolved by taking side b, which the next run writes to side a.
    browser.goto(&format!("{base}/ui"));
    assert!(browser
        .text("#attention")
        .contains("people: 1 open conflicts"));
    browser.goto(&format!("{base}/ui/syncs/people"));
    browser.click("#conflicts a");
    assert!(browser.text("#fields").contains("Ann B"));
    browser.screenshot("conflict.png");
    browser.click("form.action:nth-of-type(2) button");
    assert!(browser.text("#question").contains("by taking side b?"));
    browser.click("#confirm");
    let outcome = browser.text("#outcome");
    assert!(outcome.contains("resolved (take b)"), "{outcome}");
    people(d);
    assert_eq!(name_on(&d.join("a.db")), "Ann B");
    assert_eq!(name_on(&d.join("b.db")), "Ann B");
    drop(browser);

    // A phone's screen: one card per row, no sideways scrolling of the page.
    let phone = Browser::start(390, 844, true);
    phone.goto(&format!("{base}/ui"));
    let overflow =
        phone.script("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
    assert_eq!(
        overflow,
        json!(true),
        "the overview scrolls sideways on a phone"
    );
    phone.screenshot("overview-phone.png");
}

/// `lockstep daemon` on every interface: the page is off without authentication (403, and
/// the log says how to fix it) while `/healthz` still answers; with `web_token_env` naming an
/// unset variable the daemon refuses to start; with the token set, the page wants it.
#[test]
fn off_loopback_the_page_needs_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let start = |envs: &[(&str, &str)]| {
        let port = free_port();
        let mut cmd = lockstep(d);
        cmd.args(["daemon", "--listen", &format!("0.0.0.0:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("daemon.log")).unwrap());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        (
            cmd.spawn().expect("the lockstep binary starts"),
            format!("127.0.0.1:{port}"),
        )
    };
    let wait_up = |child: &mut Child, addr: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while crate::daemon::http_get(addr, "/healthz").map(|r| r.0) != Ok(200) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the daemon exited ({status}):\n{}",
                    std::fs::read_to_string(d.join("daemon.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let (mut child, addr) = start(&[]);
    wait_up(&mut child, &addr);
    let (status, body) = crate::daemon::http_get(&addr, "/ui").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("web_token_env"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(d.join("daemon.log")).unwrap();
    assert!(log.contains("the status page is off"), "{log}");

    let config = std::fs::read_to_string(d.join("lockstep.toml")).unwrap();
    std::fs::write(
        d.join("lockstep.toml"),
        format!("[daemon]\nweb_token_env = \"LOCKSTEP_E2E_WEB_TOKEN\"\n\n{config}"),
    )
    .unwrap();
    let (mut child, _) = start(&[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon started without its token"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(d.join("daemon.log")).unwrap();
    assert!(
        log.contains("LOCKSTEP_E2E_WEB_TOKEN") && log.contains("not set"),
        "{log}"
    );

    let token = "e2e-token-0a9f";
    let (mut child, addr) = start(&[("LOCKSTEP_E2E_WEB_TOKEN", token)]);
    wait_up(&mut child, &addr);
    let (status, body) = crate::daemon::http_get(&addr, "/ui").unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = crate::daemon::http_get(&addr, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(d.join("daemon.log")).unwrap();
    assert!(!log.contains(token), "the token reached the log: {log}");
}
