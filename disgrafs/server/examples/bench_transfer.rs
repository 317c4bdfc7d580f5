//! Upload and download throughput through the server against writing and reading the same
//! bytes directly in the same storage, side by side: each repetition runs both in alternating
//! order (ABBA). The direct write does what the server guarantees (write, fsync, rename, sync
//! the directory); the direct read reads the file the server stored.
//!
//! `cargo run --release -p disgrafs-server --example bench_transfer -- [--size-mib N]
//! [--reps N] [--juicefs]`; with `--juicefs` the data directory is on a JuiceFS mount (Redis
//! metadata, local objects) that the benchmark makes and removes.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Instant;

use clap::Parser;
use disgrafs_server::{Config, start};
use disgrafs_testsupport::JuiceFs;
use futures_util::StreamExt as _;

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

async fn server_upload(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    body: bytes::Bytes,
) -> f64 {
    let started = Instant::now();
    let response = client
        .put(format!("{base}/api/files/{name}"))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    response.bytes().await.unwrap();
    started.elapsed().as_secs_f64()
}

async fn server_download(client: &reqwest::Client, base: &str, name: &str, expected: usize) -> f64 {
    let started = Instant::now();
    let response = client
        .get(format!("{base}/api/files/{name}"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let mut stream = response.bytes_stream();
    let mut total = 0;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
    }
    assert_eq!(total, expected);
    started.elapsed().as_secs_f64()
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
    let (mut up, mut down) = (Vec::new(), Vec::new());
    println!(
        "| rep | upload server MB/s | upload direct MB/s | download server MB/s | download direct MB/s |\n|---|---|---|---|---|"
    );
    for rep in 0..args.reps {
        let name = format!("bench-{rep}.bin");
        let server_first = rep % 4 == 0 || rep % 4 == 3;
        let (up_server, up_direct) = if server_first {
            let s = server_upload(&client, &base, &name, body.clone()).await;
            (s, direct_write(&direct, &name, &body))
        } else {
            let d = direct_write(&direct, &name, &body);
            (server_upload(&client, &base, &name, body.clone()).await, d)
        };
        let (down_server, down_direct) = if server_first {
            let s = server_download(&client, &base, &name, size).await;
            (s, direct_read(&files.join(&name), size))
        } else {
            let d = direct_read(&files.join(&name), size);
            (server_download(&client, &base, &name, size).await, d)
        };
        let mbps = |secs: f64| size as f64 / secs / 1e6;
        println!(
            "| {rep} | {:.0} | {:.0} | {:.0} | {:.0} |",
            mbps(up_server),
            mbps(up_direct),
            mbps(down_server),
            mbps(down_direct)
        );
        up.push(up_direct / up_server);
        down.push(down_direct / down_server);
        std::fs::remove_file(direct.join(&name))?;
        client
            .delete(format!("{base}/api/files/{name}"))
            .bearer_auth(TOKEN)
            .send()
            .await?;
    }
    for (what, ratios) in [("upload", &up), ("download", &down)] {
        let (median, low, high) = median_ci(ratios);
        println!("{what}: server/direct throughput ratio {median:.2} (95% CI {low:.2}–{high:.2})");
    }
    println!("load average after: {}", loadavg());
    running.shutdown().await?;
    drop(juicefs);
    Ok(())
}
