//! Scenario files: the shipped ones load and keep their schedules; every class of mistake is
//! reported at the right `file:line:col`.

use std::path::Path;

use accel::ethtool::Offload;
use lab::scenario::{
    self, AcceleratorKind, EventAction, Generator, MonitorMode, Service, WorkloadKind, parse,
};
use lab::topology::{Nanos, Severity};

const TOPOLOGY: &str = r#"
topology = { name = "t", nodes = { a = {}, b = {} }, links = [{ endpoints = ["a:eth0", "b:eth0"], addresses = ["10.1.0.1/24", "10.1.0.2/24"] }] }
"#;

/// A valid scenario on an inline two-node topology, followed by `extra`.
fn with(extra: &str) -> String {
    format!(
        "name = \"s\"{TOPOLOGY}[[variants]]\nname = \"off\"\n[[workloads]]\nkind = \"tcp_rr\"\n\
         from = \"a\"\nto = \"b:7000\"\n{extra}"
    )
}

/// `file:line:col code: message` of every error.
fn errors(text: &str) -> Vec<String> {
    match parse("s.toml", text, Path::new(".")) {
        Ok(_) => panic!("expected errors in:\n{text}"),
        Err(d) => d
            .iter()
            .filter(|d| d.severity() == Severity::Error)
            .map(|d| format!("{} {}: {}", d.location(), d.code(), d.message()))
            .collect(),
    }
}

fn shipped(name: &str) -> scenario::Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name);
    match scenario::load(&path) {
        Ok(loaded) => loaded.scenario,
        Err(scenario::LoadError::Invalid(d)) => panic!("{}", d.render_plain()),
        Err(e) => panic!("{e}"),
    }
}

/// The schedule as variant names, one repetition per line.
fn schedule_text(s: &scenario::Scenario) -> String {
    let slots = s.schedule();
    (0..s.repetitions)
        .map(|rep| {
            let names: Vec<&str> = slots
                .iter()
                .filter(|slot| slot.repetition == rep)
                .map(|slot| s.variants[slot.variant].name.value.as_str())
                .collect();
            format!("rep {rep}: {}\n", names.join(" "))
        })
        .collect()
}

#[test]
fn shipped_rr_scenario() {
    let s = shipped("baseline-rr.toml");
    let names: Vec<&str> = s.variants.iter().map(|v| v.name.value.as_str()).collect();
    assert_eq!(names, ["off", "monitor"]);
    assert!(s.variants[0].accelerators.is_empty());
    assert!(matches!(
        &s.variants[1].accelerators[0].kind,
        AcceleratorKind::Monitor { iface, .. } if iface.value == "eth0"
    ));
    assert_eq!(s.variants[1].accelerators[0].node.value, "server");
    // Nothing needs netem: it runs on any kernel.
    assert!(
        s.topology
            .links
            .iter()
            .all(|l| l.impair.iter().all(|i| i.is_none()))
    );
    assert!(s.variants.iter().all(|v| v.impair.is_empty()));
    assert_eq!(s.workloads[0].to.addr.to_string(), "10.78.0.2:5201");
    assert!(matches!(
        s.workloads[0].kind,
        WorkloadKind::TcpRr {
            request: 64,
            response: 64,
            connections: 1
        }
    ));
    insta::assert_snapshot!("baseline_rr_schedule", schedule_text(&s));
}

#[test]
fn shipped_netem_rr_scenario() {
    let s = shipped("netem-rr.toml");
    assert_eq!(s.variants.len(), 2);
    assert_eq!(s.variants[0].impair[0].impair[0].delay, None);
    assert_eq!(
        s.variants[1].impair[0].impair[1].delay,
        Some(Nanos(1_000_000))
    );
    assert_eq!(s.workloads[0].to.addr.to_string(), "10.77.0.2:5201");
    insta::assert_snapshot!("netem_rr_schedule", schedule_text(&s));
}

#[test]
fn shipped_stream_scenario() {
    let s = shipped("baseline-stream.toml");
    assert_eq!(s.workloads.len(), 2);
    assert!(matches!(
        s.workloads[1].kind,
        WorkloadKind::TcpStream { write: 512, .. }
    ));
    assert!(s.variants.iter().all(|v| v.impair.is_empty()));
    insta::assert_snapshot!("baseline_stream_schedule", schedule_text(&s));
}

#[test]
fn shipped_sock_redirect_scenarios() {
    for file in ["sock-redirect-rr.toml", "sock-redirect-stream.toml"] {
        let s = shipped(file);
        let names: Vec<&str> = s.variants.iter().map(|v| v.name.value.as_str()).collect();
        assert_eq!(names, ["off", "on", "on-nogate"], "{file}");
        assert!(s.variants[0].accelerators.is_empty());
        let gates: Vec<u32> = s.variants[1..]
            .iter()
            .map(|v| match &v.accelerators[..] {
                [a] => match &a.kind {
                    AcceleratorKind::SockRedirect { min_size, .. } => *min_size,
                    other => panic!("{file}: {other:?}"),
                },
                other => panic!("{file}: {other:?}"),
            })
            .collect();
        assert_eq!(gates, [1024, 0], "{file}");
        // Client and server share the node: they talk over its loopback.
        for w in &s.workloads {
            assert_eq!(w.from.value, w.to.node.value);
            assert!(w.to.addr.ip().is_loopback(), "{}", w.to.addr);
        }
    }
    let stream = shipped("sock-redirect-stream.toml");
    // The small-write stream runs alone, after the 128 KiB one.
    assert!(stream.workloads[1].start.0 > stream.workloads[0].duration.0);
    assert!(matches!(
        stream.workloads[1].kind,
        WorkloadKind::TcpStream { write: 512, .. }
    ));
    insta::assert_snapshot!(
        "sock_redirect_rr_schedule",
        schedule_text(&shipped("sock-redirect-rr.toml"))
    );
    insta::assert_snapshot!("sock_redirect_stream_schedule", schedule_text(&stream));
}

#[test]
fn sock_redirect_settings() {
    let text = with(
        "start = \"1s\"\n[[variants]]\nname = \"on\"\naccelerators = [{ kind = \"sock_redirect\", \
         node = \"b\", ports = [7000, 80, 7000] }]\n[[variants]]\nname = \"raw\"\n\
         accelerators = [{ kind = \"sock_redirect\", node = \"a\", ports = [7000], min_size = 0 }]\n",
    );
    let s = parse("s.toml", &text, Path::new("."))
        .unwrap_or_else(|d| panic!("{}", d.render_plain()))
        .scenario;
    let kinds: Vec<&AcceleratorKind> = s.variants[1..]
        .iter()
        .map(|v| &v.accelerators[0].kind)
        .collect();
    assert!(matches!(
        kinds[0],
        AcceleratorKind::SockRedirect { ports, min_size: 1024 } if *ports == [80, 7000]
    ));
    assert!(matches!(
        kinds[1],
        AcceleratorKind::SockRedirect { ports, min_size: 0 } if *ports == [7000]
    ));
    assert_eq!(s.workloads[0].start, Nanos(1_000_000_000));
    // The run lasts until the delayed workload ends.
    assert_eq!(s.run_length(), Nanos(6_000_000_000));
}

#[test]
fn sock_redirect_mistakes() {
    let text = with(
        "[[variants]]\nname = \"a\"\naccelerators = [{ kind = \"sock_redirect\", node = \"b\" }]\n\
         [[variants]]\nname = \"b\"\naccelerators = [{ kind = \"sock_redirect\", node = \"b\", ports = [0, 80] }]\n\
         [[variants]]\nname = \"c\"\naccelerators = [{ kind = \"sock_redirect\", node = \"b\", ports = [80], iface = \"eth0\", min_size = -1 }]\n\
         [[variants]]\nname = \"d\"\naccelerators = [{ kind = \"sock_redirect\", node = \"a\", ports = [80] }, { kind = \"sock_redirect\", node = \"b\", ports = [81] }]\n\
         [[variants]]\nname = \"e\"\naccelerators = [{ kind = \"sock_redirect\", node = \"b\", ports = [] }]\n",
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:11:17 scenario::missing_field: the socket redirect needs `ports`",
            "s.toml:14:64 scenario::range: a port must be between 1 and 65535, not 0",
            "s.toml:17:69 topology::unknown_field: unknown field `iface` in the socket redirect",
            "s.toml:17:96 topology::range: `min_size` `-1` is out of range",
            "s.toml:20:104 scenario::duplicate_accelerator: a variant has one socket redirect at most",
            "s.toml:23:63 scenario::range: `ports` must list 1 to 64 ports, not 0",
        ]
    );
}

#[test]
fn sock_redirect_needs_a_node_of_the_runner() {
    let text = "name = \"s\"\ntopology = { name = \"t\", nodes = { a = { kind = \"vm\" } } }\n\
        [[variants]]\nname = \"on\"\naccelerators = [{ kind = \"sock_redirect\", node = \"a\", ports = [80] }]\n\
        [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"a\"\nto = \"a:80\"\n";
    let errors = errors(text);
    assert!(
        errors.iter().any(|e| e.contains(
            "s.toml:5:50 scenario::unsupported_node: node `a` is a VM: the socket redirect"
        )),
        "{errors:#?}"
    );
}

#[test]
fn vm_nodes_serve_one_tcp_workload_on_their_own_cpus() {
    let text = "name = \"s\"\n\
        topology = { name = \"t\", nodes = { c = {}, v = { kind = \"vm\", cpus = 2 }, w = { kind = \"vm\" } }, \
        links = [{ endpoints = [\"c:eth0\", \"v:eth0\"], addresses = [\"10.1.0.1/24\", \"10.1.0.2/24\"] }, \
        { endpoints = [\"c:eth1\", \"w:eth0\"], addresses = [\"10.2.0.1/24\", \"10.2.0.2/24\"] }] }\n\
        [[variants]]\nname = \"off\"\n\
        [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"c\"\nto = \"v:80\"\nto_cpus = [1]\n\
        [[workloads]]\nkind = \"tcp_stream\"\nfrom = \"c\"\nto = \"v:81\"\n\
        [[workloads]]\nkind = \"udp_echo\"\nfrom = \"c\"\nto = \"w:82\"\n\
        [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"w\"\nto = \"c:83\"\n\
        [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"c\"\nto = \"w:84\"\nto_cpus = [1]\n";
    let errors = errors(text);
    assert_eq!(
        errors,
        [
            "s.toml:13:7 scenario::vm_busy: VM node `v` already serves a workload",
            "s.toml:17:7 scenario::unsupported_node: node `w` is a VM: a `udp_echo` server \
             cannot run there yet",
            "s.toml:20:8 scenario::unsupported_node: node `w` is a VM: workload clients run in \
             the runner, on namespace or host nodes",
            "s.toml:22:1 scenario::range: `to_cpus` names CPU 1, but VM node `w` has 1 CPU(s)",
            "s.toml:25:7 scenario::vm_busy: VM node `w` already serves a workload",
        ]
    );
}

#[test]
fn loading_twice_gives_the_same_schedule() {
    let a = shipped("baseline-rr.toml");
    let b = shipped("baseline-rr.toml");
    assert_eq!(a.schedule(), b.schedule());
    assert_eq!(a.schedule().len(), 8);
}

#[test]
fn everything_a_scenario_can_say() {
    let text = with(
        "request = 10\nresponse = 2000\nconnections = 4\nduration = \"3s\"\nfrom_cpus = [0, 1]\n\
         [[variants]]\nname = \"on\"\naccelerators = [{ kind = \"monitor\", node = \"b\", \
         iface = \"eth0\", xdp = \"generic\" }]\nimpair = { \"b:eth0\" = [{ loss = \"1%\" }, {}] }\n\
         [deploy]\nb = [\"redis\", \"disgrafs-server\"]\n\
         [[workloads]]\nkind = \"udp_echo\"\nfrom = \"a\"\nto = \"b:7001\"\npps = 5000\nsize = 100\n\
         [[workloads]]\nkind = \"http_upload\"\nfrom = \"a\"\nto = \"b:8080\"\nsize = 1000\nfiles = 3\n\
         [[workloads]]\nkind = \"http_search\"\nfrom = \"a\"\nto = \"b:8080\"\nquery = \"tags=pdf\"\n\
         [[events]]\nat = \"4s\"\nlink = \"a:eth0\"\nset = \"down\"\n\
         [[events]]\nat = \"1s\"\nlink = \"b:eth0\"\nset = { delay = \"5ms\" }\n",
    );
    let s = parse("s.toml", &text, Path::new("."))
        .unwrap_or_else(|d| panic!("{}", d.render_plain()))
        .scenario;
    assert_eq!(s.topology_file, None);
    assert_eq!(s.repetitions, 5);
    assert_eq!(s.window, Nanos(5_000_000_000));
    assert_eq!(s.workloads[0].duration, Nanos(3_000_000_000));
    assert_eq!(s.workloads[0].from_cpus, [0, 1]);
    assert_eq!(
        s.workloads[0].kind,
        WorkloadKind::TcpRr {
            request: 10,
            response: 2000,
            connections: 4
        }
    );
    assert!(matches!(
        s.variants[1].accelerators[0].kind,
        AcceleratorKind::Monitor {
            xdp: Some(MonitorMode::Generic),
            ..
        }
    ));
    assert_eq!(
        s.variants[1].impair[0].impair[0].loss.map(|l| l.0),
        Some(1.0)
    );
    assert!(s.variants[1].impair[0].impair[1].is_none());
    assert_eq!(s.deploy[0].services[1].value, Service::DisgrafsServer);
    assert_eq!(
        s.workloads[2].kind,
        WorkloadKind::HttpUpload {
            size: 1000,
            files: 3,
            connections: 1
        }
    );
    assert_eq!(
        s.workloads[3].kind,
        WorkloadKind::HttpSearch {
            query: "tags=pdf".to_owned(),
            connections: 1
        }
    );
    assert_eq!(s.run_length(), Nanos(5_000_000_000));
    // Events come out in time order.
    assert!(matches!(s.events[0].action, EventAction::Impair(_)));
    assert_eq!(s.events[1].action, EventAction::Down);
}

#[test]
fn unknown_node_in_a_workload() {
    let text = format!(
        "{}[[workloads]]\nkind = \"tcp_stream\"\nfrom = \"c\"\nto = \"b:1\"\n",
        with("")
    );
    assert_eq!(
        errors(&text),
        ["s.toml:11:8 scenario::unknown_node: unknown node `c`"]
    );
}

#[test]
fn unknown_target_node_and_bad_port() {
    let text = format!(
        "{}[[workloads]]\nkind = \"tcp_rr\"\nfrom = \"a\"\nto = \"x:1\"\n\
         [[workloads]]\nkind = \"tcp_rr\"\nfrom = \"a\"\nto = \"b:99999\"\n",
        with("")
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:12:7 scenario::unknown_node: unknown node `x`",
            "s.toml:16:6 scenario::bad_target: `b:99999` is not `node:port`",
        ]
    );
}

#[test]
fn unknown_kinds_name_the_known_ones() {
    let text = with(
        "[[variants]]\nname = \"on\"\naccelerators = [{ kind = \"warp\", node = \"a\" }]\n\
         [[workloads]]\nkind = \"ping\"\nfrom = \"a\"\nto = \"b:1\"\n",
    );
    let parsed = parse("s.toml", &text, Path::new(".")).unwrap_err();
    let helps: Vec<String> = parsed
        .iter()
        .map(|d| {
            use miette::Diagnostic;
            d.help().map(|h| h.to_string()).unwrap_or_default()
        })
        .collect();
    assert_eq!(
        errors(&text),
        [
            "s.toml:11:26 scenario::unknown_accelerator: unknown accelerator kind `warp`",
            "s.toml:13:8 scenario::unknown_workload: unknown workload kind `ping`",
        ]
    );
    assert_eq!(
        helps,
        [
            "known kinds: monitor, sock_redirect, cpu_balance, rps, offloads, afxdp, http_filter",
            "known kinds: tcp_rr, tcp_stream, udp_echo, http_upload, http_download, http_search"
        ]
    );
}

#[test]
fn shipped_afxdp_scenario_compares_the_socket_echo_with_afxdp() {
    let s = shipped("afxdp-echo.toml");
    assert_eq!(s.variants[0].name.value, "socket");
    assert!(s.variants[0].accelerators.is_empty());
    match &s.variants[1].accelerators[..] {
        [a] => match &a.kind {
            AcceleratorKind::Afxdp { iface, ports, cpus } => {
                assert_eq!(
                    (a.node.value.as_str(), iface.value.as_str()),
                    ("server", "eth0")
                );
                assert_eq!(ports, &[7777]);
                // The queue thread shares the echo server's CPU.
                assert_eq!(cpus, &s.workloads[0].to_cpus);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.workloads[0].kind,
        WorkloadKind::UdpEcho {
            size: 64,
            generator: Generator::Xdp,
            ..
        }
    ));
    assert_eq!(s.workloads[0].to.addr.port(), 7777);
    assert_eq!(s.workloads[0].from_cpus, [0]);
    assert_eq!(s.workloads[0].to_cpus, [1]);
}

#[test]
fn udp_echo_generators_and_afxdp_cpus_are_checked() {
    let text = format!(
        "name = \"s\"{TOPOLOGY}[[variants]]\nname = \"off\"\n\
         accelerators = [{{ kind = \"afxdp\", node = \"b\", iface = \"eth0\", ports = [7], cpus = [1, 1] }}]\n\
         [[workloads]]\nkind = \"udp_echo\"\nfrom = \"a\"\nto = \"b:7\"\ngenerator = \"pktgen\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:5:87 scenario::duplicate_cpu: CPU 1 is listed twice in `cpus`",
            "s.toml:10:13 scenario::bad_generator: unknown udp_echo generator `pktgen`",
        ]
    );
    let text = text.replace("pktgen", "socket").replace("[1, 1]", "[1]");
    let s = parse("s.toml", &text, Path::new(".")).unwrap().scenario;
    assert!(matches!(
        s.workloads[0].kind,
        WorkloadKind::UdpEcho {
            generator: Generator::Socket,
            ..
        }
    ));
}

#[test]
fn afxdp_needs_valid_ports() {
    let text = with(
        "[[variants]]\nname = \"on\"\naccelerators = [{ kind = \"afxdp\", node = \"b\", iface = \"eth0\", ports = [0, \"x\"] }]\n",
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:11:72 scenario::bad_port: port 0 cannot be echoed",
            "s.toml:11:75 topology::type: a port must be an integer, not a string",
        ]
    );
    let text = with(
        "[[variants]]\nname = \"on\"\naccelerators = [{ kind = \"afxdp\", node = \"b\", iface = \"eth0\" }]\n",
    );
    assert_eq!(
        errors(&text),
        ["s.toml:11:17 scenario::missing_field: afxdp needs `iface` and `ports`"]
    );
}

#[test]
fn monitor_on_an_interface_the_node_lacks() {
    let text = with(
        "[[variants]]\nname = \"on\"\naccelerators = [{ kind = \"monitor\", node = \"a\", iface = \"eth9\" }]\n",
    );
    assert_eq!(
        errors(&text),
        ["s.toml:11:57 scenario::unknown_iface: node `a` has no interface `eth9`"]
    );
}

#[test]
fn unknown_service_field_and_link() {
    let text = with(
        "wat = 1\n[deploy]\nb = [\"mysql\"]\n[[events]]\nat = \"1s\"\nlink = \"a:eth1\"\nset = \"sideways\"\n",
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:9:1 topology::unknown_field: unknown field `wat` in a `tcp_rr` workload",
            "s.toml:11:6 deploy::unknown_service: unknown service `mysql`",
            "s.toml:14:8 scenario::unknown_link: no link of the topology has the endpoint `a:eth1`",
            "s.toml:15:7 scenario::bad_event: `set = \"sideways\"` is not an event",
        ]
    );
}

#[test]
fn events_after_the_run_and_duplicate_variants() {
    let text = with(
        "[[variants]]\nname = \"off\"\n[[events]]\nat = \"5s\"\nlink = \"a:eth0\"\nset = \"up\"\n",
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:10:8 scenario::duplicate_variant: two variants are named `off`",
            "s.toml:12:6 scenario::event_too_late: this event at 5s comes after the end of each run (5s)",
        ]
    );
}

#[test]
fn missing_parts() {
    assert_eq!(
        errors("seed = -1\n"),
        [
            "s.toml:1:1 scenario::missing_field: the scenario has no `name`",
            "s.toml:1:1 scenario::missing_field: the scenario has no `topology`",
            "s.toml:1:1 scenario::missing_field: the scenario has no `[[variants]]`",
            "s.toml:1:1 scenario::missing_field: the scenario has no `[[workloads]]`",
            "s.toml:1:8 topology::range: `seed` `-1` is out of range",
        ]
    );
}

#[test]
fn bad_values() {
    let text = with(
        "connections = 0\nduration = \"0s\"\nfrom_cpus = [4096]\n[[variants]]\nname = \"Big\"\n",
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:9:15 scenario::range: `connections` must be between 1 and 1024, not 0",
            "s.toml:10:12 scenario::bad_duration: `duration` must be longer than zero",
            "s.toml:11:14 scenario::range: a CPU number must be between 0 and 1023, not 4096",
            "s.toml:13:8 scenario::bad_name: bad variant name `Big`",
        ]
    );
}

#[test]
fn errors_of_a_topology_file_point_into_it() {
    let dir = std::env::temp_dir().join(format!("lab-scenario-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("t.toml"),
        "name = \"t\"\n[nodes.a]\nkind = \"moon\"\n",
    )
    .unwrap();
    let text = "name = \"s\"\ntopology = \"t.toml\"\n[[variants]]\nname = \"x\"\n";
    let result = parse("s.toml", text, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let d = result.unwrap_err();
    let lines: Vec<String> = d
        .iter()
        .map(|d| format!("{} {}", d.location(), d.code()))
        .collect();
    let topology = dir.join("t.toml").display().to_string();
    assert_eq!(
        lines,
        [
            "s.toml:1:1 scenario::missing_field".to_owned(),
            "s.toml:2:12 scenario::topology_invalid".to_owned(),
            format!("{topology}:3:8 topology::unknown_kind"),
        ]
    );
}

#[test]
fn missing_topology_file() {
    assert_eq!(
        errors(&with("").replace(TOPOLOGY, "\ntopology = \"nowhere.toml\"\n")),
        [
            "s.toml:2:12 scenario::topology_unreadable: cannot read topology ./nowhere.toml: No such file or directory (os error 2)"
        ]
    );
}

#[test]
fn shipped_cpu_balance_scenario() {
    let s = shipped("cpu-balance.toml");
    let names: Vec<&str> = s.variants.iter().map(|v| v.name.value.as_str()).collect();
    assert_eq!(names, ["off", "rps", "cpu_balance"]);
    // Every variant counts per CPU at the server the same way.
    for variant in &s.variants {
        assert!(matches!(
            &variant.accelerators[0].kind,
            AcceleratorKind::Monitor { iface, .. } if iface.value == "eth0"
        ));
    }
    // Every variant gets wire-sized frames with real checksums from the client, and the
    // router's receiving veth polls with GRO, like a NIC.
    for variant in &s.variants {
        let offloads: Vec<(&str, &[(Offload, bool)])> = variant
            .accelerators
            .iter()
            .filter_map(|a| match &a.kind {
                AcceleratorKind::Offloads { settings, .. } => {
                    Some((a.node.value.as_str(), settings.as_slice()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            offloads,
            [
                (
                    "client",
                    &[
                        (Offload::TxChecksum, false),
                        (Offload::Tso, false),
                        (Offload::Gso, false)
                    ][..]
                ),
                ("router", &[(Offload::Gro, true)][..]),
            ],
            "{}",
            variant.name.value
        );
    }
    assert!(matches!(
        &s.variants[1].accelerators[3].kind,
        AcceleratorKind::Rps { iface, cpus } if iface.value == "eth0" && cpus == &[0, 1]
    ));
    assert!(matches!(
        &s.variants[2].accelerators[3].kind,
        AcceleratorKind::CpuBalance { iface, weights }
            if iface.value == "eth0" && weights == &[(0, 1), (1, 1)]
    ));
    assert_eq!(s.variants[2].accelerators[3].node.value, "router");
    assert!(matches!(
        s.workloads[0].kind,
        WorkloadKind::TcpStream { connections, .. } if connections >= 64
    ));
    assert_eq!(s.workloads[0].from_cpus, [0]);
}

#[test]
fn cpu_balance_weights_and_rps_cpus_are_read() {
    let text = with(
        "[[variants]]\nname = \"w\"\naccelerators = [\
         { kind = \"cpu_balance\", node = \"b\", iface = \"eth0\", weights = { \"0\" = 1, \"1\" = 3 } },\
         { kind = \"rps\", node = \"b\", iface = \"eth0\", cpus = [1, 0] }]\n\
         [[variants]]\nname = \"all\"\naccelerators = [{ kind = \"cpu_balance\", node = \"b\", iface = \"eth0\" }]\n",
    );
    let s = parse("s.toml", &text, Path::new(".")).unwrap().scenario;
    assert!(matches!(
        &s.variants[1].accelerators[0].kind,
        AcceleratorKind::CpuBalance { weights, .. } if weights == &[(0, 1), (1, 3)]
    ));
    assert!(matches!(
        &s.variants[1].accelerators[1].kind,
        AcceleratorKind::Rps { cpus, .. } if cpus == &[1, 0]
    ));
    assert!(matches!(
        &s.variants[2].accelerators[0].kind,
        AcceleratorKind::CpuBalance { weights, .. } if weights.is_empty()
    ));
}

#[test]
fn cpu_balance_and_rps_mistakes() {
    let text = with(
        "[[variants]]\nname = \"v\"\naccelerators = [\
         { kind = \"cpu_balance\", node = \"b\", iface = \"eth0\", cpus = [0], weights = { \"0\" = 1 } },\
         { kind = \"cpu_balance\", node = \"b\", iface = \"eth0\", weights = { \"x\" = 1, \"1\" = 0 } },\
         { kind = \"cpu_balance\", node = \"b\", iface = \"eth0\", weights = { \"1\" = 0 } },\
         { kind = \"rps\", node = \"b\", iface = \"eth0\" },\
         { kind = \"rps\", node = \"b\", iface = \"eth0\", cpus = [1, 1] },\
         { kind = \"rps\", node = \"b\", iface = \"eth0\", cpus = [] },\
         { kind = \"rps\", node = \"b\", cpus = [0], queue = 1 }]\n",
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:11:81 scenario::conflicting_fields: `cpus` and `weights` cannot both be given",
            "s.toml:11:169 scenario::bad_cpu: `x` is not a CPU number",
            "s.toml:11:252 scenario::no_cpus: `weights` gives no CPU a weight above zero",
            "s.toml:11:266 scenario::missing_field: RPS needs `cpus`",
            "s.toml:11:366 scenario::duplicate_cpu: CPU 1 is listed twice in `cpus`",
            "s.toml:11:422 scenario::no_cpus: `cpus` names no CPU",
            "s.toml:11:427 scenario::missing_field: RPS needs `iface`",
            "s.toml:11:467 topology::unknown_field: unknown field `queue` in RPS",
        ]
    );
}

#[test]
fn offloads_are_read_and_checked() {
    let text = with(
        "[[variants]]\nname = \"w\"\naccelerators = [\
         { kind = \"offloads\", node = \"a\", iface = \"eth0\", gso = false, gro = true }]\n\
         [[variants]]\nname = \"bad\"\naccelerators = [\
         { kind = \"offloads\", node = \"a\", iface = \"eth0\" },\
         { kind = \"offloads\", node = \"a\", iface = \"eth0\", tso = \"off\" },\
         { kind = \"offloads\", node = \"a\", iface = \"eth0\", lro = false }]\n",
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].contains("offloads needs `tx`, `tso`, `gso` or `gro`"),
        "{errors:#?}"
    );
    assert!(errors[1].contains("`tso`"), "{errors:#?}");
    assert!(errors[2].contains("offloads needs"), "{errors:#?}");
    assert!(
        errors[3].contains("unknown field `lro` in offloads"),
        "{errors:#?}"
    );
    let good = with(
        "[[variants]]\nname = \"w\"\naccelerators = [\
         { kind = \"offloads\", node = \"a\", iface = \"eth0\", gso = false, gro = true }]\n",
    );
    let s = parse("s.toml", &good, Path::new(".")).unwrap().scenario;
    assert!(matches!(
        &s.variants[1].accelerators[0].kind,
        AcceleratorKind::Offloads { iface, settings }
            if iface.value == "eth0" && settings == &[(Offload::Gso, false), (Offload::Gro, true)]
    ));
}

#[test]
fn deploy_rules() {
    let text = with(
        "[deploy]\na = [\"redis\", \"juicefs\", \"redis\"]\nb = [\"redis\", \"disgrafs-server\"]\n\
         c = [\"disgrafs-tagger\"]\n",
    );
    assert_eq!(
        errors(&text),
        [
            "s.toml:10:15 deploy::juicefs_node: `juicefs` is mounted on the server's node only, and `disgrafs-server` runs on `b`",
            "s.toml:10:26 deploy::duplicate_service: `redis` is listed twice for node `a`",
            "s.toml:11:6 deploy::duplicate_service: `redis` runs on one node only, and node `a` already runs it",
            "s.toml:12:1 deploy::unknown_node: unknown node `c`",
        ]
    );
    assert_eq!(
        errors(&with("[deploy]\nb = [\"juicefs\", \"disgrafs-tagger\"]\n")),
        [
            "s.toml:10:6 deploy::missing_service: `juicefs` needs `redis` (its metadata engine)",
            "s.toml:10:6 deploy::missing_service: `juicefs` needs `disgrafs-server` (it holds the server's files)",
            "s.toml:10:17 deploy::missing_service: `disgrafs-tagger` needs `redis` (the tag queue)",
            "s.toml:10:17 deploy::missing_service: `disgrafs-tagger` needs `disgrafs-server` (the server queues the jobs)",
        ]
    );
}

#[test]
fn http_workloads_and_the_http_filter() {
    let dir = std::env::temp_dir().join(format!("lab-scenario-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.toml"),
        "[[ports]]\nports = [8080]\nmethod_action = \"monitor\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("bad.toml"), "[[ports]]\nports = []\n").unwrap();
    let text = with(
        "[[variants]]\nname = \"f\"\naccelerators = [{ kind = \"http_filter\", node = \"b\", \
         iface = \"eth0\", policy = \"p.toml\" }]\n\
         [[variants]]\nname = \"g\"\naccelerators = [{ kind = \"http_filter\", node = \"b\", \
         iface = \"eth0\", policy = \"bad.toml\" }]\n\
         [[workloads]]\nkind = \"http_download\"\nfrom = \"a\"\nto = \"b:8080\"\nsize = 0\n\
         [[workloads]]\nkind = \"http_search\"\nfrom = \"a\"\nto = \"b:8080\"\nquery = \"a b\"\n",
    );
    let result = parse("s.toml", &text, &dir);
    let good = parse(
        "s.toml",
        &with(
            "[[variants]]\nname = \"f\"\naccelerators = [{ kind = \"http_filter\", node = \"b\", \
             iface = \"eth0\", policy = \"p.toml\" }]\n",
        ),
        &dir,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let lines: Vec<String> = result
        .unwrap_err()
        .iter()
        .filter(|d| d.severity() == Severity::Error)
        .map(|d| format!("{} {}", d.location(), d.code()))
        .collect();
    assert_eq!(
        lines,
        [
            "s.toml:14:78 scenario::bad_policy",
            "s.toml:19:8 scenario::range",
            "s.toml:24:9 scenario::bad_query",
        ]
    );
    let good = good
        .unwrap_or_else(|d| panic!("{}", d.render_plain()))
        .scenario;
    match &good.variants[1].accelerators[0].kind {
        AcceleratorKind::HttpFilter {
            iface,
            policy_file,
            policy,
            ..
        } => {
            assert_eq!(iface.value, "eth0");
            assert!(policy_file.ends_with("p.toml"));
            assert_eq!(policy.rules().len(), 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn shipped_disgrafs_scenario() {
    let s = shipped("disgrafs-http.toml");
    let names: Vec<&str> = s.variants.iter().map(|v| v.name.value.as_str()).collect();
    assert_eq!(
        names,
        [
            "off",
            "monitor",
            "http-filter",
            "sock-redirect",
            "cpu-balance"
        ]
    );
    let kinds: Vec<&str> = s
        .variants
        .iter()
        .flat_map(|v| &v.accelerators)
        .map(|a| match a.kind {
            AcceleratorKind::Monitor { .. } => "monitor",
            AcceleratorKind::HttpFilter { .. } => "http_filter",
            AcceleratorKind::SockRedirect { .. } => "sock_redirect",
            AcceleratorKind::CpuBalance { .. } => "cpu_balance",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["monitor", "http_filter", "sock_redirect", "cpu_balance"]
    );
    assert!(
        s.variants
            .iter()
            .flat_map(|v| &v.accelerators)
            .all(|a| a.node.value == "server"),
        "every accelerator is on the server's node"
    );
    let kinds: Vec<&str> = s.workloads.iter().map(|w| w.kind.name()).collect();
    assert_eq!(kinds, ["http_upload", "http_download", "http_search"]);
    assert_eq!(s.deploy.len(), 2);
}

#[test]
fn preflight_names_http_workloads_without_a_server() {
    let text = with(
        "[deploy]\nb = [\"disgrafs-server\"]\n\
         [[workloads]]\nkind = \"http_upload\"\nfrom = \"b\"\nto = \"a:8080\"\n\
         [[workloads]]\nkind = \"http_download\"\nfrom = \"a\"\nto = \"b:9000\"\n\
         [[workloads]]\nkind = \"http_search\"\nfrom = \"a\"\nto = \"b:8080\"\n",
    );
    let s = parse("s.toml", &text, Path::new("."))
        .unwrap_or_else(|d| panic!("{}", d.render_plain()))
        .scenario;
    let problems: Vec<String> = lab::run::problems(&s, || Ok(true), 2)
        .into_iter()
        .filter(|p| !p.starts_with("[deploy]"))
        .collect();
    assert_eq!(
        problems,
        [
            "workload 2 (http_upload to a) needs disgrafs-server deployed on node a ([deploy])",
            "workload 3 (http_download to b) must use port 8080, where the deployed server listens",
        ]
    );
}
