//! Snapshots of the plan of every shipped topology.

use std::path::{Path, PathBuf};

use lab::topology::{self, Netns, Plan, PlanOptions, Step};

fn topologies() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/topologies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios/topologies exists")
        .map(|e| e.expect("readable directory").path())
        .collect();
    files.sort();
    files
}

fn plan_of(file: &str) -> (Plan, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/topologies")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("shipped topology");
    let format = topology::Format::from_path(&path);
    let loaded = topology::parse(file, &text, format)
        .unwrap_or_else(|d| panic!("{file} is invalid:\n{}", d.render_plain()));
    (
        Plan::new(&loaded.topology, &PlanOptions::default()),
        loaded.warnings.render_plain(),
    )
}

macro_rules! snapshot_topology {
    ($test:ident, $file:literal) => {
        #[test]
        fn $test() {
            let (plan, warnings) = plan_of($file);
            insta::assert_yaml_snapshot!(concat!(stringify!($test), "_plan"), plan);
            insta::assert_snapshot!(
                concat!(stringify!($test), "_text"),
                format!("{warnings}{plan}")
            );
        }
    };
}

snapshot_topology!(one_host, "one-host.toml");
snapshot_topology!(two_hosts, "two-hosts.toml");
snapshot_topology!(line_3, "line-3.toml");
snapshot_topology!(star_100, "star-100.toml");
snapshot_topology!(two_linux_clab, "two-linux.clab.yml");
snapshot_topology!(vm_server, "vm-server.toml");
snapshot_topology!(disgrafs, "disgrafs.toml");

/// With the services of `[deploy]` in containers, the demo lab's server and tagger nodes are
/// containers of the base image (the client, without services, stays a namespace).
#[test]
fn disgrafs_with_service_containers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/topologies/disgrafs.toml");
    let loaded = topology::load(&path).expect("valid");
    let options = PlanOptions {
        service_containers: true,
        ..PlanOptions::default()
    };
    let plan = Plan::new(&loaded.topology, &options);
    let nodes: Vec<String> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateNamespace { node, .. } => Some(format!("{node}: netns")),
            Step::StartContainer { node, image, .. } => Some(format!("{node}: {image}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        nodes,
        [
            "lan: netns",
            "client: netns",
            "server: disgrafs-lab/base",
            "tagger: disgrafs-lab/base"
        ]
    );
    // Otherwise the same steps, and two sysctls per container turning IPv6 back on.
    let without = Plan::new(&loaded.topology, &PlanOptions::default());
    let is_ipv6_on =
        |s: &Step| matches!(s, Step::Sysctl { key, .. } if key.ends_with(".disable_ipv6"));
    assert_eq!(plan.steps.iter().filter(|s| is_ipv6_on(s)).count(), 4);
    let others = |p: &Plan| {
        p.steps
            .iter()
            .filter(|s| !is_ipv6_on(s) && s.node_namespace().is_none())
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(others(&plan), others(&without));
}

#[test]
fn every_shipped_topology_has_a_snapshot_test() {
    let tested = [
        "one-host.toml",
        "two-hosts.toml",
        "line-3.toml",
        "star-100.toml",
        "two-linux.clab.yml",
        "vm-server.toml",
        "disgrafs.toml",
    ];
    for file in topologies() {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(tested.contains(&name), "{name} has no snapshot test");
    }
}

/// Every kernel interface name fits in 15 bytes, and is unique in its namespace.
#[test]
fn kernel_names_fit_and_are_unique() {
    for file in topologies() {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let (plan, _) = plan_of(&name);
        let mut devices: Vec<(Netns, String)> = Vec::new();
        for step in &plan.steps {
            let made = match step {
                Step::CreateVeth { a, b, .. } => {
                    vec![(a.ns.clone(), a.dev.clone()), (b.ns.clone(), b.dev.clone())]
                }
                Step::CreateBridge { ns, dev, .. } => vec![(ns.clone(), dev.clone())],
                _ => Vec::new(),
            };
            for (ns, dev) in made {
                assert!(dev.len() <= 15, "{name}: {dev} is longer than 15 bytes");
                assert!(
                    !devices.contains(&(ns.clone(), dev.clone())),
                    "{name}: {dev} made twice in {ns}"
                );
                devices.push((ns, dev));
            }
        }
    }
}

/// Two labs up at once share no namespace and no host interface name.
#[test]
fn different_labs_do_not_collide() {
    let names = |file: &str| {
        let (plan, _) = plan_of(file);
        plan.steps
            .iter()
            .flat_map(|s| match s {
                Step::CreateNamespace { ns, .. } => vec![ns.clone()],
                Step::CreateVeth { a, b, .. } => [a, b]
                    .into_iter()
                    .filter(|e| e.ns == Netns::Root)
                    .map(|e| e.dev.clone())
                    .collect(),
                _ => Vec::new(),
            })
            .collect::<Vec<_>>()
    };
    let files = [
        "one-host.toml",
        "two-hosts.toml",
        "line-3.toml",
        "star-100.toml",
        "disgrafs.toml",
    ];
    for (i, a) in files.iter().enumerate() {
        for b in &files[i + 1..] {
            let (na, nb) = (names(a), names(b));
            assert!(
                na.iter().all(|n| !nb.contains(n)),
                "{a} and {b} share a name"
            );
        }
    }
}

#[test]
fn teardown_is_the_reverse_of_creation() {
    let (plan, _) = plan_of("one-host.toml");
    let created: Vec<_> = plan.steps.iter().filter_map(Step::undo).collect();
    let mut reversed = plan.teardown();
    reversed.reverse();
    assert_eq!(created, reversed);
    assert!(matches!(
        plan.teardown().last(),
        Some(topology::Undo::DeleteNamespace { .. })
    ));
}

#[test]
fn prefix_changes_every_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/topologies/one-host.toml");
    let loaded = topology::load(&path).expect("valid");
    let options = PlanOptions {
        prefix: topology::Prefix::new("t1").expect("valid prefix"),
        ..PlanOptions::default()
    };
    let plan = Plan::new(&loaded.topology, &options);
    let json = serde_json::to_string(&plan).expect("serializable");
    assert!(!json.contains("dgl"), "{json}");
    assert!(json.contains("t1-one-host.server"));
    assert!(topology::Prefix::new("toolong").is_err());
    assert!(topology::Prefix::new("1ab").is_err());
}

/// The plan is read back from its JSON form (the state file) unchanged.
#[test]
fn plan_round_trips_through_json() {
    for file in topologies() {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let (plan, _) = plan_of(&name);
        let json = serde_json::to_string(&plan).expect("serializable");
        let back: Plan = serde_json::from_str(&json).expect("deserializable");
        assert_eq!(back, plan, "{name}");
    }
}

/// containerlab's `host:IF` endpoints and `type: host` links reach the host's namespace.
#[test]
fn containerlab_host_links() {
    let text = "name: h\ntopology:\n  nodes:\n    a: {kind: linux}\n  links:\n\
        \x20   - endpoints: [\"a:eth1\", \"host:veth-a\"]\n\
        \x20   - type: host\n      endpoint: {node: a, interface: eth2}\n      host-interface: veth-b\n";
    let loaded = topology::parse("h.clab.yml", text, topology::Format::Containerlab)
        .unwrap_or_else(|d| panic!("{}", d.render_plain()));
    let plan = Plan::new(&loaded.topology, &PlanOptions::default());
    let root_ends: Vec<(String, String)> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateVeth { b, .. } if b.ns == Netns::Root => {
                Some((b.iface.clone(), b.dev.clone()))
            }
            _ => None,
        })
        .collect();
    let tag = topology::lab_tag(&topology::Prefix::default(), "h");
    assert_eq!(
        root_ends,
        [
            ("veth-a".to_owned(), format!("{tag}-0")),
            ("veth-b".to_owned(), format!("{tag}-1")),
        ]
    );
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::AddAddress { .. }))
    );
}
