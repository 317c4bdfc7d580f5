//! The browser UI in a real browser: headless Chromium driven over WebDriver by Debian's
//! `chromedriver` (both installed by `./setup`). The server runs in-process on 127.0.0.1:0.
//!
//! One scenario: enter the token, upload a PDF and a PNG through the file input and a text
//! file with a hostile name by drag and drop, wait for their tags, search by a tag, click a
//! tag and a file in the graph, download the file and compare the bytes; no CSP violation or
//! script error on the way. Screenshots go to `target/test-artifacts/`: `disgrafs-ui.png` (all
//! files and the graph), `disgrafs-ui-details.png` (filtered, a file's details) and, when the
//! test fails, `disgrafs-ui-failure.png`.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use disgrafs_server::{Config, Running, start};
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt as _;
use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use tokio::time::Instant;

const TOKEN: &str = "browser-test-token";
/// Upper bound of every wait for the page to reach a state.
const WAIT: Duration = Duration::from_secs(30);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The name of the file dropped onto the page: markup that must stay text.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)> notes.txt";

/// `chromedriver` on a free port; dropping it kills chromedriver and every process it started
/// (the browser), by their ids. It stays in the test's process group, so that a test runner
/// that kills the group on a timeout also ends the browser.
struct ChromeDriver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ChromeDriver {
    async fn start(log: PathBuf) -> Self {
        let http = reqwest::Client::new();
        // Another process may take the free port before chromedriver binds it: try a few.
        for _ in 0..3 {
            let port = disgrafs_testsupport::free_port().unwrap();
            let child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER} (run ./setup): {e}"));
            let mut driver = Self {
                child,
                port,
                log: log.clone(),
            };
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if driver.child.try_wait().unwrap().is_some() {
                    break;
                }
                let status = http.get(format!("{}/status", driver.url())).send().await;
                if let Ok(response) = status
                    && let Ok(body) = response.bytes().await
                    && let Ok(body) = serde_json::from_slice::<Value>(&body)
                    && body["value"]["ready"] == true
                {
                    return driver;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!(
            "chromedriver did not become ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        for pid in descendants(self.child.id()) {
            if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes descended from `pid`, from `/proc/PID/task/TID/children`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut pending = vec![pid];
    while let Some(parent) = pending.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                pending.push(child);
            }
        }
    }
    found
}

/// Where test artifacts go: `target/test-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A one-page PDF showing `text` in Helvetica.
fn pdf(text: &str) -> Vec<u8> {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};

    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
    });
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });
    let content = Content {
        operations: vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 12.into()]),
            Operation::new("Td", vec![72.into(), 700.into()]),
            Operation::new("Tj", vec![Object::string_literal(text)]),
            Operation::new("ET", vec![]),
        ],
    };
    let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
    let page_id = doc.add_object(dictionary! {
        "Type" => "Page",
        "Parent" => pages_id,
        "Contents" => content_id,
    });
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => vec![Object::from(page_id)],
            "Count" => 1,
            "Resources" => resources_id,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
    });
    doc.trailer.set("Root", catalog_id);
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    bytes
}

/// A 320×160 PNG: the left three quarters red, the right quarter blue.
fn png() -> Vec<u8> {
    let picture = image::RgbImage::from_fn(320, 160, |x, y| {
        if x < 240 {
            image::Rgb([220, 20, u8::try_from(y % 40).unwrap()])
        } else {
            image::Rgb([20, 40, 200])
        }
    });
    let mut bytes = Cursor::new(Vec::new());
    picture
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    bytes.into_inner()
}

/// Polls `probe` until it returns `Some`, for at most [`WAIT`].
async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` (a function body) in the page and returns its result.
async fn js(client: &Client, script: &str, args: Vec<Value>) -> Value {
    client.execute(script, args).await.unwrap()
}

/// The state of the page that the test checks, read in one script (no stale elements).
async fn page_state(client: &Client) -> Value {
    js(
        client,
        r##"
        const text = (selector) => Array.from(document.querySelectorAll(selector), (e) => e.textContent);
        const uploads = {};
        for (const li of document.querySelectorAll("#upload-list > li")) {
            uploads[li.dataset.name] = {
                done: li.classList.contains("done"),
                status: li.querySelector(".status").textContent,
                tags: Array.from(li.querySelectorAll(".tag"), (t) => t.dataset.tag),
                progress: [li.querySelector("progress").value, li.querySelector("progress").max],
            };
        }
        const rows = Array.from(document.querySelectorAll("#results tbody tr"), (tr) => ({
            name: tr.dataset.name,
            shown: tr.querySelector("td.name").textContent,
            tags: Array.from(tr.querySelectorAll(".tag"), (t) => t.dataset.tag),
        }));
        const graph = document.getElementById("graph");
        const total = document.getElementById("upload-total");
        const details = document.getElementById("details");
        return {
            busy: document.getElementById("results").getAttribute("aria-busy") === "true",
            uploads,
            rows,
            summary: document.getElementById("search-summary").textContent,
            searchTags: document.getElementById("search-tags").value,
            graphState: graph.dataset.state || "",
            graphNodes: Array.from(graph.querySelectorAll(".node"), (n) => n.dataset.id),
            total: [total.value, total.max],
            details: details.hidden ? null : {
                name: details.dataset.name,
                tags: Array.from(details.querySelectorAll("#details-tags .tag"), (t) => t.dataset.tag),
                related: text("#details-related li"),
            },
            images: document.querySelectorAll("main img").length,
        };
        "##,
        vec![],
    )
    .await
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn row_names(state: &Value) -> Vec<&str> {
    state["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap())
        .collect()
}

/// Waits (at most [`WAIT`]) until the page state satisfies `condition` and the page is not
/// about to change it by itself (the results are not `aria-busy`: no search scheduled or in
/// flight, no tags awaited); returns that state. Elements found afterwards stay in the page
/// until the test acts: a search scheduled by the page would re-render the results and the
/// graph under the test's element references (stale elements).
async fn wait_for_state(client: &Client, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let state = page_state(client).await;
        if state["busy"] == false && condition(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; the page: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the shape of a graph node once the layout has settled.
async fn click_node(client: &Client, id: &str) {
    wait_for_state(client, &format!("graph node {id}"), |s| {
        s["graphState"] == "settled" && strings(&s["graphNodes"]).contains(&id)
    })
    .await;
    let selector = format!("#graph .node[data-id=\"{id}\"] .shape");
    client
        .find(Locator::Css(&selector))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Saves a screenshot of the top of the page under `target/test-artifacts/`.
async fn screenshot(client: &Client, name: &str) {
    js(client, "window.scrollTo(0, 0); return null;", vec![]).await;
    let path = artifacts_dir().join(name);
    std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
    println!("screenshot of the UI: {}", path.display());
}

struct Files {
    pdf: Vec<u8>,
    png: Vec<u8>,
    dir: tempfile::TempDir,
}

async fn scenario(client: &Client, server: &Running, files: &Files, downloads: &Path) {
    let base = format!("http://{}", server.addr);
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(client.title().await.unwrap(), "DisGraFS");
    wait_for_state(client, "the empty search", |s| s["summary"] == "0 file(s)").await;
    // From here on, record Content-Security-Policy violations and script errors.
    js(
        client,
        r##"
        window.testProblems = [];
        document.addEventListener("securitypolicyviolation",
            (e) => window.testProblems.push(`CSP ${e.violatedDirective}: ${e.blockedURI}`));
        window.addEventListener("error", (e) => window.testProblems.push(`error: ${e.message}`));
        window.addEventListener("unhandledrejection",
            (e) => window.testProblems.push(`rejection: ${e.reason}`));
        return null;
        "##,
        vec![],
    )
    .await;

    // The token is typed once, kept in session storage, and not left in the page.
    let token = client.find(Locator::Id("token")).await.unwrap();
    token.send_keys(TOKEN).await.unwrap();
    client
        .find(Locator::Id("token-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(token.prop("value").await.unwrap().as_deref(), Some(""));
    let stored = js(
        client,
        "return sessionStorage.getItem('disgrafs.token');",
        vec![],
    )
    .await;
    assert_eq!(stored, TOKEN);
    let state_text = client.find(Locator::Id("token-state")).await.unwrap();
    assert_eq!(state_text.text().await.unwrap(), "token set for this tab");

    // Two files through the file input.
    let pdf_path = files.dir.path().join("report.pdf");
    let png_path = files.dir.path().join("red-blue.png");
    std::fs::write(&pdf_path, &files.pdf).unwrap();
    std::fs::write(&png_path, &files.png).unwrap();
    client
        .find(Locator::Id("file-input"))
        .await
        .unwrap()
        .send_keys(&format!("{}\n{}", pdf_path.display(), png_path.display()))
        .await
        .unwrap();
    let state = wait_for_state(client, "both uploads tagged", |s| {
        ["report.pdf", "red-blue.png"]
            .iter()
            .all(|name| s["uploads"][name]["done"] == true)
    })
    .await;
    let pdf_tags = strings(&state["uploads"]["report.pdf"]["tags"]);
    let png_tags = strings(&state["uploads"]["red-blue.png"]["tags"]);
    for tag in ["pages:1", "zebras", "kernel"] {
        assert!(pdf_tags.contains(&tag), "{tag} not in {pdf_tags:?}");
    }
    for tag in [
        "format:png",
        "resolution:320x160",
        "colour:red",
        "colour:blue",
    ] {
        assert!(png_tags.contains(&tag), "{tag} not in {png_tags:?}");
    }
    let total = files.pdf.len() + files.png.len();
    assert_eq!(state["total"], json!([total, total]), "overall progress");
    for (name, len) in [
        ("report.pdf", files.pdf.len()),
        ("red-blue.png", files.png.len()),
    ] {
        assert_eq!(
            state["uploads"][name]["progress"],
            json!([len, len]),
            "progress of {name}"
        );
    }

    // A text file dropped onto the drop zone; its name is markup and must stay text.
    js(
        client,
        r##"
        const transfer = new DataTransfer();
        transfer.items.add(new File([arguments[1]], arguments[0], { type: "text/plain" }));
        const zone = document.getElementById("drop-zone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
        return null;
        "##,
        vec![json!(HOSTILE_NAME), json!("kernel kernel dropped notes")],
    )
    .await;
    let state = wait_for_state(client, "all three files listed with tags", |s| {
        s["uploads"][HOSTILE_NAME]["done"] == true
            && s["rows"].as_array().is_some_and(|rows| {
                rows.len() == 3 && rows.iter().all(|r| !strings(&r["tags"]).is_empty())
            })
    })
    .await;
    assert_eq!(
        row_names(&state),
        vec![HOSTILE_NAME, "red-blue.png", "report.pdf"]
    );
    assert_eq!(state["rows"][0]["shown"], HOSTILE_NAME);
    assert_eq!(state["images"], 0, "a file name became markup");

    // The download link of a result serves the uploaded bytes.
    let href = client
        .find(Locator::Css(
            "#results tr[data-name=\"red-blue.png\"] td.name a",
        ))
        .await
        .unwrap()
        .prop("href")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(href, format!("{base}/api/files/red-blue.png"));
    let fetched = reqwest::get(&href).await.unwrap().bytes().await.unwrap();
    assert!(
        fetched.as_ref() == files.png.as_slice(),
        "the link's bytes differ"
    );

    // Search by a tag.
    let tags_input = client.find(Locator::Id("search-tags")).await.unwrap();
    tags_input.send_keys("colour:red").await.unwrap();
    client
        .find(Locator::Id("search-go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_state(client, "the search by colour:red", |s| {
        row_names(s) == ["red-blue.png"] && s["summary"] == "1 file(s) with tags colour:red"
    })
    .await;
    client
        .find(Locator::Id("search-clear"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_state(client, "all files again, laid out", |s| {
        row_names(s).len() == 3 && s["graphState"] == "settled"
    })
    .await;
    screenshot(client, "disgrafs-ui.png").await;

    // Click a tag in the graph: the search is filtered by it.
    click_node(client, "tag:pages:1").await;
    let state = wait_for_state(client, "the filter by the clicked tag", |s| {
        s["searchTags"] == "pages:1"
            && row_names(s) == ["report.pdf"]
            && !strings(&s["graphNodes"]).contains(&"file:red-blue.png")
    })
    .await;
    assert!(
        strings(&state["graphNodes"]).contains(&"tag:zebras"),
        "{state}"
    );

    // Click a file in the graph: its tags, the files sharing one, and a download link.
    click_node(client, "file:report.pdf").await;
    let state = wait_for_state(client, "the details of report.pdf", |s| {
        s["details"]["name"] == "report.pdf"
    })
    .await;
    let detail_tags = strings(&state["details"]["tags"]);
    assert!(detail_tags.contains(&"zebras"), "{detail_tags:?}");
    assert_eq!(strings(&state["details"]["related"]), vec![HOSTILE_NAME]);

    screenshot(client, "disgrafs-ui-details.png").await;

    client
        .find(Locator::Id("details-download"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let downloaded = downloads.join("report.pdf");
    let bytes = wait_for("the download of report.pdf", async || {
        let bytes = std::fs::read(&downloaded).ok()?;
        let partial = std::fs::read_dir(downloads)
            .ok()?
            .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".crdownload")));
        (bytes.len() == files.pdf.len() && !partial).then_some(bytes)
    })
    .await;
    assert!(
        bytes == files.pdf,
        "the downloaded PDF differs from the upload"
    );
    let problems = js(client, "return window.testProblems;", vec![]).await;
    assert_eq!(problems, json!([]), "CSP violations or script errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_search_graph_and_download_in_chromium() {
    let data = tempfile::tempdir().unwrap();
    let server = start(Config::new(
        "127.0.0.1:0".parse().unwrap(),
        data.path().to_owned(),
        TOKEN.to_owned(),
    ))
    .await
    .unwrap();
    let browser_dir = tempfile::Builder::new()
        .prefix("disgrafs-chromium-")
        .tempdir()
        .unwrap();
    let profile = browser_dir.path().join("profile");
    let downloads = browser_dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let driver = ChromeDriver::start(browser_dir.path().join("chromedriver.log")).await;

    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1400",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object literal");
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "starting Chromium through chromedriver: {e}\n{}",
                std::fs::read_to_string(&driver.log).unwrap_or_default()
            )
        });
    let files = Files {
        pdf: pdf("DisGraFS browser test about zebras zebras zebras and the kernel"),
        png: png(),
        dir: tempfile::tempdir().unwrap(),
    };
    let outcome = AssertUnwindSafe(scenario(&client, &server, &files, &downloads))
        .catch_unwind()
        .await;
    if outcome.is_err()
        && let Ok(png) = client.screenshot().await
    {
        let path = artifacts_dir().join("disgrafs-ui-failure.png");
        if std::fs::write(&path, png).is_ok() {
            eprintln!("screenshot at the failure: {}", path.display());
        }
    }
    let closed = client.close().await;
    drop(driver);
    server.shutdown().await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    closed.unwrap();
}
