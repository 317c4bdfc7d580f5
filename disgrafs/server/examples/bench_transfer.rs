//! Upload and download throughput through the server against writing and reading the same
//! bytes directly in the same storage, side by side: each repetition runs every way once, the
//! order reversed in repetitions 1, 2, 5, 6, … (ABBA). The direct write does what the server
//! guarantees (write, fsync, rename, sync the directory); the direct read reads the file the
//! server stored. A second yardstick is plain HTTP on the same storage, served from this
//! process: tower-http's `ServeDir` for downloads, and for uploads a `PUT` handler that streams
//! the body into a file with the same write, fsync and renames but no hash, name check or
//! graph — what HTTP alone costs.
//!
//! `cargo run --release -p disgrafs-server --example bench_transfer -- [--size-mib N]
//! [--reps N] [--juicefs]`; with `--juicefs` the data directory is on a JuiceFS mount (Redis
//! metadata, local objects) that the benchmark makes and removes.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use axum::{
    Router,
    body::Body,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    routing::put,
};
use clap::Parser;
use disgrafs_server::{Config, start};
use disgrafs_testsupport::JuiceFs;
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tower_http::services::ServeDir;

const TOKEN: &str = "bench";
const CHUNK: usize = 1 << 20;

#[derive(Debug, Parser)]
struct Args {
    /// Size of each transferred file in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: usize,
    /// Repetitions (each measures both ways, in alternating order).
    #[arg(long, default_value_t = 6)]
    reps: usize,
    /// Put the data directory on a JuiceFS mount instead of a local temporary directory.
    #[arg(long)]
    juicefs: bool,
}

fn direct_write(dir: &Path, name: &str, bytes: &[u8]) -> f64 {
    let started = Instant::now();
    let temp = dir.join(format!(".direct-{name}"));
    let mut file = std::fs::File::create(&temp).unwrap();
    for chunk in bytes.chunks(CHUNK) {
        file.write_all(chunk).unwrap();
    }
    file.sync_all().unwrap();
    std::fs::rename(&temp, dir.join(name)).unwrap();
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
    started.elapsed().as_secs_f64()
}

fn direct_read(path: &Path, expected: usize) -> f64 {
    let started = Instant::now();
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, expected);
    started.elapsed().as_secs_f64()
}

/// Uploads `body` with a `PUT` to `url`; the seconds until the answer.
async fn http_upload(client: &reqwest::Client, url: &str, body: bytes::Bytes) -> f64 {
    let started = Instant::now();
    let response = client
        .put(url)
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.bytes().await.unwrap();
    started.elapsed().as_secs_f64()
}

/// Downloads `url` (`expected` bytes); the seconds until the last byte.
async fn http_download(client: &reqwest::Client, url: &str, expected: usize) -> f64 {
    let started = Instant::now();
    let response = client.get(url).send().await.unwrap();
    assert!(response.status().is_success());
    let mut stream = response.bytes_stream();
    let mut total = 0;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
    }
    assert_eq!(total, expected);
    started.elapsed().as_secs_f64()
}

/// The plain HTTP yardstick's upload: the body streamed into a temp file, fsync, rename, and
/// the directory synced — as the server does, without hashing or recording anything.
async fn plain_put(
    State(dir): State<PathBuf>,
    UrlPath(name): UrlPath<String>,
    body: Body,
) -> StatusCode {
    let temp = dir.join(format!(".plain-{name}"));
    let mut file = tokio::fs::File::create(&temp).await.unwrap();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk.unwrap()).await.unwrap();
    }
    file.sync_all().await.unwrap();
    tokio::fs::rename(&temp, dir.join(&name)).await.unwrap();
    tokio::fs::File::open(&dir)
        .await
        .unwrap()
        .sync_all()
        .await
        .unwrap();
    StatusCode::CREATED
}

/// Serves the plain HTTP yardstick: `PUT /upload/{name}` into `uploads`, `GET /files/{name}`
/// from `files`. Returns its base URL.
async fn start_plain_http(uploads: PathBuf, files: &Path) -> anyhow::Result<String> {
    let app = Router::new()
        .route("/upload/{name}", put(plain_put))
        .with_state(uploads)
        .nest_service("/files", ServeDir::new(files));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// Median and a bootstrap 95% confidence interval of the median.
fn median_ci(values: &[f64]) -> (f64, f64, f64) {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut medians = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut sample: Vec<f64> = (0..values.len())
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                values[(seed % values.len() as u64) as usize]
            })
            .collect();
        medians.push(median(&mut sample));
    }
    medians.sort_by(f64::total_cmp);
    (
        median(&mut values.to_vec()),
        medians[medians.len() * 25 / 1000],
        medians[medians.len() * 975 / 1000],
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = args.size_mib << 20;
    let juicefs = if args.juicefs {
        Some(JuiceFs::start()?)
    } else {
        None
    };
    let temp = tempfile::tempdir()?;
    let root = juicefs
        .as_ref()
        .map_or(temp.path(), |volume| volume.mountpoint())
        .join("data");
    let storage = if args.juicefs {
        "JuiceFS mount"
    } else {
        "local directory"
    };
    let running = start(Config {
        max_upload: size as u64 * 2,
        workers: Some(1),
        ..Config::new("127.0.0.1:0".parse()?, root.clone(), TOKEN.to_owned())
    })
    .await?;
    let base = format!("http://{}", running.addr);
    let files = root.join("files");
    let direct = root.join("direct");
    std::fs::create_dir_all(&direct)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let body: bytes::Bytes = (0..size)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect::<Vec<u8>>()
        .into();
    let client = reqwest::Client::new();
    println!(
        "{storage}, {} MiB × {} repetitions; load average before: {}",
        args.size_mib,
        args.reps,
        loadavg()
    );
    let plain_uploads = root.join("plain");
    std::fs::create_dir_all(&plain_uploads)?;
    let plain = start_plain_http(plain_uploads.clone(), &files).await?;
    let mut ratios: [Vec<f64>; 4] = Default::default();
    println!(
        "| rep | upload server MB/s | upload plain HTTP MB/s | upload direct MB/s | download server MB/s | download plain HTTP MB/s | download direct MB/s |\n|---|---|---|---|---|---|---|"
    );
    for rep in 0..args.reps {
        let name = format!("bench-{rep}.bin");
        let server_url = format!("{base}/api/files/{name}");
        let plain_put_url = format!("{plain}/upload/{name}");
        let plain_get_url = format!("{plain}/files/{name}");
        // Server, plain HTTP, direct — or the reverse; uploads, then downloads in that order.
        let order = if rep % 4 == 1 || rep % 4 == 2 {
            [2, 1, 0]
        } else {
            [0, 1, 2]
        };
        let (mut up_server, mut up_plain, mut up_direct) = (0.0, 0.0, 0.0);
        for way in order {
            match way {
                0 => up_server = http_upload(&client, &server_url, body.clone()).await,
                1 => up_plain = http_upload(&client, &plain_put_url, body.clone()).await,
                _ => up_direct = direct_write(&direct, &name, &body),
            }
        }
        // Downloads of the file the server stored, each from a warm cache (the page cache, and
        // JuiceFS' own): whichever read came first would otherwise also pay for fetching the
        // file from the storage.
        direct_read(&files.join(&name), size);
        let (mut down_server, mut down_plain, mut down_direct) = (0.0, 0.0, 0.0);
        for way in order {
            match way {
                0 => down_server = http_download(&client, &server_url, size).await,
                1 => down_plain = http_download(&client, &plain_get_url, size).await,
                _ => down_direct = direct_read(&files.join(&name), size),
            }
        }
        let mbps = |secs: f64| size as f64 / secs / 1e6;
        println!(
            "| {rep} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            mbps(up_server),
            mbps(up_plain),
            mbps(up_direct),
            mbps(down_server),
            mbps(down_plain),
            mbps(down_direct)
        );
        // Throughput ratios are inverse time ratios.
        for (series, ratio) in ratios.iter_mut().zip([
            up_direct / up_server,
            up_plain / up_server,
            down_direct / down_server,
            down_plain / down_server,
        ]) {
            series.push(ratio);
        }
        std::fs::remove_file(direct.join(&name))?;
        std::fs::remove_file(plain_uploads.join(&name))?;
        client.delete(&server_url).bearer_auth(TOKEN).send().await?;
    }
    for (what, series) in [
        "upload: server/direct",
        "upload: server/plain HTTP",
        "download: server/direct",
        "download: server/plain HTTP",
    ]
    .iter()
    .zip(&ratios)
    {
        let (median, low, high) = median_ci(series);
        println!("{what} throughput ratio {median:.2} (95% CI {low:.2}–{high:.2})");
    }
    println!("load average after: {}", loadavg());
    running.shutdown().await?;
    drop(juicefs);
    Ok(())
}
