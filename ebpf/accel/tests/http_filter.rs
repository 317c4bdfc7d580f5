//! The HTTP filter program against the kernel through `BPF_PROG_TEST_RUN`, Katran style: a
//! table of frames with expected verdicts, each also checked against the user-space reference
//! classifier; a property test over random and mutated frames; the `check` command on a pcap.
//! Needs root.

mod common;

use std::{collections::BTreeMap, process::Command};

use accel::http_filter::{Policy, TestRunner, Verdict, pcap, reference::classify};
use anyhow::{Context as _, ensure};
use common::{Ext, POLICY, Spec};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner as PropRunner},
};
use serde::Serialize;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// One fixture: a frame and what the filter must do with it.
struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    verdict: Verdict,
    rule: Option<&'static str>,
}

fn fx(name: &'static str, spec: Spec, verdict: Verdict, rule: Option<&'static str>) -> Fixture {
    Fixture {
        name,
        frame: spec.build(),
        verdict,
        rule,
    }
}

fn raw(name: &'static str, frame: Vec<u8>, verdict: Verdict) -> Fixture {
    Fixture {
        name,
        frame,
        verdict,
        rule: None,
    }
}

fn with(spec: Spec, change: impl FnOnce(&mut Spec)) -> Spec {
    let mut spec = spec;
    change(&mut spec);
    spec
}

/// A target of `len` bytes: `/` and then letters.
fn target_of(len: usize) -> String {
    format!("/{}", "t".repeat(len - 1))
}

/// Byte offset of the IPv4 header in an untagged frame.
const IP: usize = 14;

fn fixtures() -> Vec<Fixture> {
    use Verdict::*;
    let get = |target: &str| Spec::get(80, "GET", target);
    let admin = get("/admin");
    let long_target = format!("/{}", "x".repeat(300));
    let long_admin = format!("/admin{}", "y".repeat(300));
    // Targets at the PATH_MAX (254) boundary: 254 bytes need the version, 255 do not.
    let max_target = format!("/{}", "m".repeat(253));
    let over_max = format!("/{}", "o".repeat(254));
    let mut cut_tcp = admin.build();
    cut_tcp.truncate(IP + 20 + 10);
    let mut cut_payload = admin.build();
    cut_payload.truncate(cut_payload.len() - 5);
    let mut cut_ip = admin.build();
    cut_ip.truncate(IP + 12);
    let mut bad_ihl = admin.build();
    bad_ihl[IP] = 0x44;
    let mut bad_version = admin.build();
    bad_version[IP] = 0x55;
    let mut bad_doff = admin.build();
    bad_doff[IP + 20 + 12] = 0x40;
    let mut padded = Spec::tcp(80, b"").build();
    padded.extend_from_slice(b"GET /admin HTTP/1.1\r\n");
    let mut arp = admin.build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut eth_only = admin.build();
    eth_only.truncate(14);

    vec![
        fx("v4 GET /", get("/"), Request, None),
        fx("v4 GET /admin", admin.clone(), Drop, Some("admin")),
        fx("v4 GET /admin/", get("/admin/"), Drop, Some("admin")),
        fx(
            "byte prefix /administrator",
            get("/administrator"),
            Drop,
            Some("admin"),
        ),
        fx(
            "query string /admin?x=1",
            get("/admin?x=1"),
            Drop,
            Some("admin"),
        ),
        fx("case matters /Admin", get("/Admin"), Request, None),
        fx(
            "longer allow prefix",
            get("/admin/public/logo.png"),
            Allow,
            Some("admin-public"),
        ),
        fx(
            "longest drop prefix",
            get("/admin/public/secret/key"),
            Drop,
            Some("admin-public-secret"),
        ),
        fx(
            "longest prefix is per port (8080)",
            Spec::get(8080, "GET", "/admin/public/secret/key"),
            Allow,
            Some("admin-public"),
        ),
        fx(
            "8080 GET /admin",
            Spec::get(8080, "GET", "/admin"),
            Drop,
            Some("admin"),
        ),
        fx(
            "HEAD /admin",
            Spec::get(80, "HEAD", "/admin"),
            Drop,
            Some("admin"),
        ),
        fx("POST /form", Spec::get(80, "POST", "/form"), Request, None),
        fx("OPTIONS *", Spec::get(80, "OPTIONS", "*"), Request, None),
        fx(
            "PUT not allowed",
            Spec::get(80, "PUT", "/x"),
            Drop,
            Some("web"),
        ),
        fx(
            "DELETE not allowed",
            Spec::get(80, "DELETE", "/x"),
            Drop,
            Some("web"),
        ),
        fx(
            "PATCH not allowed",
            Spec::get(80, "PATCH", "/x"),
            Drop,
            Some("web"),
        ),
        fx(
            "TRACE not allowed",
            Spec::get(80, "TRACE", "/"),
            Drop,
            Some("web"),
        ),
        fx(
            "CONNECT not allowed",
            Spec::get(8080, "CONNECT", "lab:443"),
            Drop,
            Some("web"),
        ),
        fx(
            "other method not allowed",
            Spec::get(80, "PROPFIND", "/"),
            Drop,
            Some("web"),
        ),
        fx(
            "method rule before path",
            Spec::get(80, "PUT", "/admin"),
            Drop,
            Some("web"),
        ),
        fx(
            "9000 monitor path",
            Spec::get(9000, "GET", "/internal/x"),
            Monitor,
            Some("internal-watch"),
        ),
        fx(
            "9000 empty prefix",
            Spec::get(9000, "GET", "/public"),
            Allow,
            Some("everything-9000"),
        ),
        fx(
            "9000 method monitor",
            Spec::get(9000, "POST", "/internal"),
            Monitor,
            Some("api-methods"),
        ),
        fx(
            "9000 OTHER allowed",
            Spec::get(9000, "BREW", "/pot"),
            Allow,
            Some("everything-9000"),
        ),
        fx(
            "8000 longest short prefix",
            Spec::get(8000, "GET", "/admin/x"),
            Allow,
            Some("short-admin"),
        ),
        fx(
            "8000 short prefix",
            Spec::get(8000, "POST", "/api/v1/items"),
            Drop,
            Some("short-api"),
        ),
        fx(
            "8000 shortest prefix",
            Spec::get(8000, "GET", "/about"),
            Monitor,
            Some("short-a"),
        ),
        fx(
            "8000 whole target is the prefix",
            Spec::get(8000, "GET", "/a"),
            Monitor,
            Some("short-a"),
        ),
        fx(
            "8000 target shorter than a prefix",
            Spec::get(8000, "GET", "/api"),
            Monitor,
            Some("short-a"),
        ),
        fx(
            "8000 empty prefix",
            Spec::get(8000, "GET", "/"),
            Allow,
            Some("short-rest"),
        ),
        fx(
            "8000 method not allowed",
            Spec::get(8000, "PUT", "/api/v1"),
            Drop,
            Some("short"),
        ),
        fx(
            "port out of scope",
            Spec::get(443, "GET", "/admin"),
            Other,
            None,
        ),
        fx("UDP", with(admin.clone(), |s| s.udp = true), Other, None),
        fx(
            "VLAN",
            with(admin.clone(), |s| s.vlans = 1),
            Drop,
            Some("admin"),
        ),
        fx(
            "QinQ",
            with(admin.clone(), |s| s.vlans = 2),
            Drop,
            Some("admin"),
        ),
        fx(
            "three VLAN tags",
            with(admin.clone(), |s| s.vlans = 3),
            Other,
            None,
        ),
        fx(
            "IPv4 options 4 B",
            with(admin.clone(), |s| s.ip_options = 4),
            Drop,
            Some("admin"),
        ),
        fx(
            "IPv4 options 40 B",
            with(admin.clone(), |s| s.ip_options = 40),
            Drop,
            Some("admin"),
        ),
        fx(
            "TCP options 40 B",
            with(admin.clone(), |s| s.tcp_options = 40),
            Drop,
            Some("admin"),
        ),
        fx(
            "QinQ + IPv4 options + TCP options",
            with(admin.clone(), |s| {
                s.vlans = 2;
                s.ip_options = 12;
                s.tcp_options = 12;
            }),
            Drop,
            Some("admin"),
        ),
        fx(
            "IPv4 first fragment",
            with(admin.clone(), |s| s.v4_fragment = 0x2000),
            Drop,
            Some("admin"),
        ),
        fx(
            "IPv4 non-first fragment",
            with(admin.clone(), |s| s.v4_fragment = 0x2010),
            Other,
            None,
        ),
        fx(
            "IPv6 GET /admin",
            with(admin.clone(), |s| s.v6 = true),
            Drop,
            Some("admin"),
        ),
        fx("IPv6 GET /", with(get("/"), |s| s.v6 = true), Request, None),
        fx(
            "IPv6 hop-by-hop, routing, dest-opts, fragment 0",
            with(admin.clone(), |s| {
                s.v6 = true;
                s.ext = vec![
                    Ext::HopByHop,
                    Ext::Routing,
                    Ext::DestOpts(2),
                    Ext::Fragment(0),
                ];
            }),
            Drop,
            Some("admin"),
        ),
        fx(
            "IPv6 non-first fragment",
            with(admin.clone(), |s| {
                s.v6 = true;
                s.ext = vec![Ext::Fragment(100)];
            }),
            Other,
            None,
        ),
        fx(
            "IPv6 five extension headers",
            with(admin.clone(), |s| {
                s.v6 = true;
                s.ext = vec![
                    Ext::HopByHop,
                    Ext::DestOpts(0),
                    Ext::Routing,
                    Ext::DestOpts(1),
                    Ext::DestOpts(0),
                ];
            }),
            Malformed,
            None,
        ),
        fx(
            "IPv6 + VLAN + TCP options",
            with(admin.clone(), |s| {
                s.v6 = true;
                s.vlans = 1;
                s.tcp_options = 20;
                s.ext = vec![Ext::DestOpts(0)];
            }),
            Drop,
            Some("admin"),
        ),
        fx(
            "IPv6 UDP",
            with(admin.clone(), |s| {
                s.v6 = true;
                s.udp = true;
            }),
            Other,
            None,
        ),
        fx(
            "body segment",
            Spec::tcp(80, b"hello world"),
            NotRequest,
            None,
        ),
        fx("no payload", Spec::tcp(80, b""), NotRequest, None),
        fx(
            "HTTP/2 version",
            Spec::tcp(80, b"GET /admin HTTP/2\r\n"),
            NotRequest,
            None,
        ),
        fx(
            "lowercase method",
            Spec::tcp(80, b"get /admin HTTP/1.1\r\n"),
            NotRequest,
            None,
        ),
        fx(
            "request line cut by segment",
            Spec::tcp(80, b"GET /adm"),
            NotRequest,
            None,
        ),
        fx(
            "nine-letter method",
            Spec::tcp(80, b"PROPPATCH /admin HTTP/1.1\r\n"),
            NotRequest,
            None,
        ),
        fx(
            "two spaces",
            Spec::tcp(80, b"GET  /admin HTTP/1.1\r\n"),
            NotRequest,
            None,
        ),
        fx("55-byte target", get(&target_of(55)), Request, None),
        fx("56-byte target", get(&target_of(56)), Request, None),
        fx("57-byte target", get(&target_of(57)), Request, None),
        fx("63-byte target", get(&target_of(63)), Request, None),
        fx("64-byte target", get(&target_of(64)), Request, None),
        fx(
            "65-byte admin target",
            get(&format!("/admin{}", "q".repeat(59))),
            Drop,
            Some("admin"),
        ),
        fx(
            "254-byte target with version",
            Spec::tcp(80, format!("GET {max_target} HTTP/1.1\r\n").as_bytes()),
            Request,
            None,
        ),
        fx(
            "254-byte target, no version",
            Spec::tcp(80, format!("GET {max_target}\r\n").as_bytes()),
            NotRequest,
            None,
        ),
        fx(
            "255-byte target, no version",
            Spec::tcp(80, format!("GET {over_max}\r\n").as_bytes()),
            Request,
            None,
        ),
        fx(
            "long target",
            Spec::tcp(80, format!("GET {long_target}").as_bytes()),
            Request,
            None,
        ),
        fx(
            "long target under /admin",
            Spec::tcp(80, format!("GET {long_admin}").as_bytes()),
            Drop,
            Some("admin"),
        ),
        raw("Ethernet padding is not payload", padded, NotRequest),
        raw("ARP", arp, Other),
        raw("Ethernet header only", eth_only, Malformed),
        raw("cut in IPv4 header", cut_ip, Malformed),
        raw("cut in TCP header", cut_tcp, Malformed),
        raw("cut in payload", cut_payload, Malformed),
        raw("IPv4 IHL 4", bad_ihl, Malformed),
        raw("IP version 5", bad_version, Malformed),
        raw("TCP data offset 4", bad_doff, Malformed),
    ]
}

/// One row of the snapshot.
#[derive(Serialize)]
struct Row {
    name: &'static str,
    len: usize,
    verdict: Verdict,
    rule: Option<String>,
}

fn rule_name(policy: &Policy, id: Option<u32>) -> Option<String> {
    id.map(|id| {
        policy
            .rule(id)
            .map_or_else(|| format!("#{id}"), |r| r.name.clone())
    })
}

#[test]
fn fixtures_match_expectations_kernel_and_reference() -> anyhow::Result<()> {
    let policy = Policy::parse(POLICY).map_err(anyhow::Error::msg)?;
    let mut runner = TestRunner::new(&policy)?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut expected_hits = BTreeMap::<String, u64>::new();
    let fixtures = fixtures();
    for f in &fixtures {
        let kernel = runner.run(&f.frame).with_context(|| f.name)?;
        let reference = classify(&policy, &f.frame);
        let expected_rule = f.rule.map(str::to_owned);
        let kernel_rule = rule_name(&policy, kernel.classification.rule);
        let expected_action = if f.verdict.is_drop() {
            XDP_DROP
        } else {
            XDP_PASS
        };
        if kernel.classification != reference
            || kernel.classification.verdict != f.verdict
            || kernel_rule != expected_rule
            || kernel.action != expected_action
        {
            failures.push(format!(
                "{}: expected {:?} {expected_rule:?}, kernel {kernel:?} ({kernel_rule:?}), reference {reference:?}",
                f.name, f.verdict
            ));
        }
        if let Some(rule) = f.rule {
            *expected_hits.entry(rule.to_owned()).or_default() += 1;
        }
        rows.push(Row {
            name: f.name,
            len: f.frame.len(),
            verdict: kernel.classification.verdict,
            rule: kernel_rule,
        });
    }
    assert!(
        failures.is_empty(),
        "{} fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let stats = runner.stats()?;
    let total = stats.total();
    let count = |v: &[Verdict]| fixtures.iter().filter(|f| v.contains(&f.verdict)).count() as u64;
    use Verdict::*;
    assert_eq!(total.packets, fixtures.len() as u64);
    assert_eq!(total.dropped, count(&[Drop]));
    assert_eq!(total.passed, total.packets - total.dropped);
    assert_eq!(total.monitored, count(&[Monitor]));
    assert_eq!(total.parse_failures, count(&[Malformed]));
    assert_eq!(total.http_requests, count(&[Request, Allow, Monitor, Drop]));
    for rule in &stats.rules {
        assert_eq!(
            rule.hits,
            expected_hits.get(&rule.name).copied().unwrap_or(0),
            "hits of rule {}",
            rule.name
        );
    }
    insta::assert_yaml_snapshot!("fixtures", rows);
    Ok(())
}

#[test]
fn policy_changes_take_effect_without_reloading() -> anyhow::Result<()> {
    let policy = Policy::parse(POLICY).map_err(anyhow::Error::msg)?;
    let mut runner = TestRunner::new(&policy)?;
    let admin = Spec::get(80, "GET", "/admin").build();
    let put = Spec::get(80, "PUT", "/x").build();
    assert_eq!(runner.run(&admin)?.classification.verdict, Verdict::Drop);

    let relaxed = Policy::parse(
        "[[ports]]\nname = \"web\"\nports = [80]\n\n[[paths]]\nname = \"watch-admin\"\nports = [80]\nprefix = \"/adm\"\naction = \"monitor\"\n",
    )
    .map_err(anyhow::Error::msg)?;
    runner.set_policy(&relaxed)?;
    let after = runner.run(&admin)?;
    assert_eq!(after.classification.verdict, Verdict::Monitor);
    assert_eq!(after.classification, classify(&relaxed, &admin));
    assert_eq!(runner.run(&put)?.classification.verdict, Verdict::Request);
    // Port 8080 and 9000 left the policy: their entries are gone from the maps.
    let other = Spec::get(8080, "GET", "/admin").build();
    assert_eq!(runner.run(&other)?.classification.verdict, Verdict::Other);
    let stats = runner.stats()?;
    let names: Vec<&str> = stats.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["web", "watch-admin"], "stale rule names removed");
    assert_eq!(stats.rule_hits("watch-admin"), Some(1));
    assert_eq!(
        stats.rule_hits("web"),
        Some(0),
        "counters restart with the new policy"
    );
    Ok(())
}

/// Random frames: a structured spec (headers, ports, request-ish payloads), then optionally
/// mutated (truncated, bytes overwritten, bits flipped).
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec![
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "CONNECT",
        "OPTIONS",
        "TRACE",
        "PATCH",
        "BREW",
        "PROPFIND",
        "PROPPATCH",
        "get",
        "G",
        "",
    ]);
    let target = prop::sample::select(vec![
        "/",
        "/index.html",
        "/img/logo.png",
        "/admin",
        "/admin/",
        "/administrator",
        "/admin/public",
        "/admin/public/secret",
        "/admin/public/secret/x",
        "/internal",
        "/internal/y",
        "*",
        "",
        "/a b",
        "/adm",
        "/api/v2",
        "/api",
        "/about",
        "/a",
    ]);
    let tail = prop::sample::select(vec![
        " HTTP/1.1\r\n",
        " HTTP/1.0\r\n",
        " HTTP/2\r\n",
        " HTTP/1.",
        " HTTP/1",
        "\r\n",
        "",
        "?q=1 HTTP/1.1\r\n",
    ]);
    let payload = prop_oneof![
        3 => (method, target, tail, prop::option::of(0usize..300)).prop_map(|(m, t, tail, pad)| {
            let pad = "z".repeat(pad.unwrap_or(0));
            format!("{m} {t}{pad}{tail}").into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    let ext = prop::sample::select(vec![
        Ext::HopByHop,
        Ext::Routing,
        Ext::DestOpts(0),
        Ext::DestOpts(3),
        Ext::Fragment(0),
        Ext::Fragment(9),
    ]);
    let spec = (
        (
            0u8..4,
            any::<bool>(),
            0usize..11,
            prop::sample::select(vec![0u16, 0x2000, 0x0001, 0x4000]),
        ),
        (
            prop::collection::vec(ext, 0..6),
            0usize..11,
            prop::bool::weighted(0.1),
        ),
        (
            prop::sample::select(vec![80u16, 80, 8080, 8080, 9000, 8000, 8000, 443]),
            payload,
        ),
    )
        .prop_map(
            |((vlans, v6, ipo, frag), (ext, tcpo, udp), (dport, payload))| Spec {
                vlans,
                v6,
                ip_options: ipo * 4,
                v4_fragment: frag,
                ext,
                tcp_options: tcpo * 4,
                udp,
                dport,
                payload,
            },
        );
    let mutation = prop_oneof![
        4 => Just(Vec::new()),
        1 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ];
    (
        spec,
        prop::option::weighted(0.2, any::<prop::sample::Index>()),
        mutation,
        prop::option::weighted(0.15, any::<prop::sample::Index>()),
    )
        .prop_map(|(spec, ip_len, mutation, cut)| {
            let mut frame = match ip_len {
                Some(keep) => spec.build_with_ip_len(keep),
                None => spec.build(),
            };
            for (at, byte) in mutation {
                let i = at.index(frame.len());
                frame[i] = if byte & 1 == 0 {
                    byte
                } else {
                    frame[i] ^ (1 << (byte % 8))
                };
            }
            if let Some(cut) = cut {
                // The kernel refuses frames shorter than an Ethernet header.
                frame.truncate(14 + cut.index(frame.len() - 13));
            }
            frame
        })
}

#[test]
fn kernel_equals_reference_on_random_and_mutated_frames() -> anyhow::Result<()> {
    const CASES: u32 = 12_000;
    let policy = Policy::parse(POLICY).map_err(anyhow::Error::msg)?;
    let runner = std::cell::RefCell::new(TestRunner::new(&policy)?);
    let seen = std::cell::RefCell::new(BTreeMap::<Verdict, u64>::new());
    let mut prop = PropRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    prop.run(&frames(), |frame| {
        let kernel = runner
            .borrow_mut()
            .run(&frame)
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let reference = classify(&policy, &frame);
        prop_assert_eq!(kernel.classification, reference, "frame {:02x?}", frame);
        prop_assert_eq!(kernel.action == XDP_DROP, reference.verdict.is_drop());
        *seen.borrow_mut().entry(reference.verdict).or_default() += 1;
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    let seen = seen.into_inner();
    eprintln!("verdicts over {CASES} frames (+ shrinking, if any): {seen:?}");
    // The generator must reach every verdict, or the comparison proves little.
    for v in [
        Verdict::Other,
        Verdict::Malformed,
        Verdict::NotRequest,
        Verdict::Request,
        Verdict::Allow,
        Verdict::Monitor,
        Verdict::Drop,
    ] {
        ensure!(
            seen.get(&v).copied().unwrap_or(0) >= 20,
            "verdict {v:?} seen too rarely: {seen:?}"
        );
    }
    let total = runner.borrow().stats()?.total();
    ensure!(total.packets >= u64::from(CASES), "{total:?}");
    Ok(())
}

#[test]
fn check_command_replays_a_pcap() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(testkit::unique_name());
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> anyhow::Result<()> {
        let policy_path = dir.join("policy.toml");
        std::fs::write(&policy_path, POLICY)?;
        let pcap_path = dir.join("capture.pcap");
        let fixtures = fixtures();
        let frames: Vec<Vec<u8>> = fixtures.iter().map(|f| f.frame.clone()).collect();
        pcap::write(&pcap_path, &frames)?;

        let out = Command::new(env!("CARGO_BIN_EXE_accel"))
            .args(["http-filter", "check", "--policy"])
            .arg(&policy_path)
            .arg("--pcap")
            .arg(&pcap_path)
            .output()?;
        ensure!(
            out.status.success(),
            "check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        ensure!(
            lines.len() == fixtures.len(),
            "{} lines for {} frames",
            lines.len(),
            fixtures.len()
        );
        for (i, (line, f)) in lines.iter().zip(&fixtures).enumerate() {
            ensure!(line["index"] == i, "{line}");
            ensure!(
                line["verdict"] == serde_json::to_value(f.verdict)?,
                "{}: {line}",
                f.name
            );
            ensure!(
                line["rule"] == serde_json::to_value(f.rule)?,
                "{}: {line}",
                f.name
            );
        }

        // A frame the kernel refuses (shorter than an Ethernet header) gets an error line, the
        // others are still judged, and the exit status says the replay was incomplete.
        let runt_pcap = dir.join("runt.pcap");
        pcap::write(&runt_pcap, &[vec![0u8; 10], frames[1].clone()])?;
        let out = Command::new(env!("CARGO_BIN_EXE_accel"))
            .args(["http-filter", "check", "--policy"])
            .arg(&policy_path)
            .arg("--pcap")
            .arg(&runt_pcap)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        ensure!(out.status.code() == Some(1), "{stdout}");
        ensure!(
            lines.len() == 2 && lines[0]["error"].is_string(),
            "{stdout}"
        );
        ensure!(lines[1]["verdict"] == "drop", "{stdout}");
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("1 of 2 frames"),
            "{out:?}"
        );

        // A broken policy and a broken capture: exit 1, the message names the file.
        let bad_policy = dir.join("bad.toml");
        std::fs::write(
            &bad_policy,
            "[[ports]]\nports = [80]\nallowed_methods = [\"YELL\"]\n",
        )?;
        let bad_pcap = dir.join("bad.pcap");
        std::fs::write(&bad_pcap, b"not a capture at all, really")?;
        for (policy, capture, needle) in [
            (&bad_policy, &pcap_path, "YELL"),
            (&policy_path, &bad_pcap, "bad.pcap"),
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_accel"))
                .args(["http-filter", "check", "--policy"])
                .arg(policy)
                .arg("--pcap")
                .arg(capture)
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(out.status.code() == Some(1), "{out:?}");
            ensure!(stderr.contains(needle), "{stderr}");
        }
        Ok(())
    })();
    std::fs::remove_dir_all(&dir)?;
    result
}
