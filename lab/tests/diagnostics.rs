//! Every class of error points at the right `file:line:col` with the right message.

use lab::topology::{Format, NodeKind, Severity, parse};

/// `file:line:col code: message` of every diagnostic of an invalid file.
fn errors(text: &str, format: Format) -> Vec<String> {
    let name = match format {
        Format::Toml => "t.toml",
        Format::Containerlab => "t.clab.yml",
    };
    match parse(name, text, format) {
        Ok(_) => panic!("expected errors in:\n{text}"),
        Err(d) => d
            .iter()
            .filter(|d| d.severity() == Severity::Error)
            .map(|d| format!("{} {}: {}", d.location(), d.code(), d.message()))
            .collect(),
    }
}

fn toml_errors(text: &str) -> Vec<String> {
    errors(text, Format::Toml)
}

const TWO_NODES: &str = "name = \"t\"\n[nodes.a]\n[nodes.b]\n";

#[test]
fn deploy_in_a_topology_file() {
    let text = format!(
        "{TWO_NODES}[nodes.br]\nkind = \"bridge\"\n[deploy]\na = [\"mysql\"]\nbr = [\"redis\"]\n\
         b = [\"disgrafs-server\", \"redis\", \"juicefs\"]\n"
    );
    assert_eq!(
        toml_errors(&text),
        [
            "t.toml:7:6 deploy::unknown_service: unknown service `mysql`",
            "t.toml:8:1 deploy::bridge_node: node `br` is a bridge: no service runs on it",
            "t.toml:9:25 deploy::duplicate_service: `redis` runs on one node only, and node `br` already runs it",
        ]
    );
    let ok = format!("{TWO_NODES}[deploy]\nb = [\"redis\", \"disgrafs-server\"]\n");
    let loaded = parse("t.toml", &ok, Format::Toml).expect("valid");
    assert_eq!(loaded.topology.deploy[0].node.value, "b");
    assert_eq!(loaded.topology.deploy[0].services.len(), 2);
}

#[test]
fn unknown_node_in_a_link() {
    let text = format!("{TWO_NODES}[[links]]\nendpoints = [\"a:eth0\", \"c:eth0\"]\n");
    assert_eq!(
        toml_errors(&text),
        ["t.toml:5:25 topology::unknown_node: unknown node `c`"]
    );
}

#[test]
fn endpoint_used_twice() {
    let text = format!(
        "{TWO_NODES}[[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
         [[links]]\nendpoints = [\"a:eth1\", \"b:eth0\"]\n"
    );
    assert_eq!(
        toml_errors(&text),
        ["t.toml:7:27 topology::endpoint_reused: `b:eth0` is used by two links"]
    );
}

#[test]
fn interface_name_too_long() {
    let text = format!("{TWO_NODES}[[links]]\nendpoints = [\"a:abcdefghijklmnop\", \"b:eth0\"]\n");
    assert_eq!(
        toml_errors(&text),
        [
            "t.toml:5:17 topology::bad_ifname: bad interface name `abcdefghijklmnop`: \
             it is 16 bytes long, the kernel allows 15"
        ]
    );
}

#[test]
fn bad_cidr() {
    let text = format!(
        "{TWO_NODES}[[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
         addresses = [\"10.0.0.1/33\", \"10.0.0.300/24\"]\n"
    );
    assert_eq!(
        toml_errors(&text),
        [
            "t.toml:6:14 topology::bad_cidr: bad address: `/33` is not a valid prefix length \
             for `10.0.0.1`",
            "t.toml:6:29 topology::bad_cidr: bad address: `10.0.0.300` is not an IP address",
        ]
    );
}

#[test]
fn overlapping_subnets() {
    let text = "name = \"t\"\n[nodes.a]\n[nodes.b]\n[nodes.c]\n\
        [[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\naddresses = [\"10.0.0.1/16\", \"10.0.0.2/16\"]\n\
        [[links]]\nendpoints = [\"b:eth1\", \"c:eth0\"]\naddresses = [\"10.0.5.1/24\", \"10.0.5.2/24\"]\n";
    let found = toml_errors(text);
    assert_eq!(
        found,
        ["t.toml:10:14 topology::overlap: `10.0.5.1/24` overlaps a subnet of another link",]
    );
}

#[test]
fn unknown_kind() {
    let text = "name = \"t\"\n[nodes.a]\nkind = \"router\"\n";
    assert_eq!(
        toml_errors(text),
        ["t.toml:3:8 topology::unknown_kind: unknown node kind `router`"]
    );
}

#[test]
fn bad_units() {
    let text = format!(
        "{TWO_NODES}[[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
         impair = {{ delay = \"1 parsec\", loss = \"0.1\", rate = \"1gb\", jitter = \"5\" }}\n"
    );
    assert_eq!(
        toml_errors(&text),
        [
            "t.toml:6:20 topology::bad_duration: bad `delay`: `parsec` is not a unit of time",
            "t.toml:6:39 topology::bad_percentage: bad `loss`: `0.1` has no `%` sign",
            "t.toml:6:53 topology::bad_rate: bad `rate`: `gb` is not a unit of rate",
            "t.toml:6:69 topology::bad_duration: bad `jitter`: `5` has no unit",
        ]
    );
}

#[test]
fn jitter_and_reorder_need_a_delay() {
    let text = format!(
        "{TWO_NODES}[[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
         impair = {{ jitter = \"1ms\", reorder = \"1%\" }}\n"
    );
    assert_eq!(
        toml_errors(&text),
        [
            "t.toml:6:12 topology::needs_delay: `jitter` needs a `delay`",
            "t.toml:6:28 topology::needs_delay: `reorder` needs a `delay`",
        ]
    );
}

#[test]
fn kind_specific_fields() {
    let text = "name = \"t\"\n[nodes.a]\nkind = \"container\"\n\
        [nodes.b]\nimage = \"alpine\"\n";
    assert_eq!(
        toml_errors(text),
        [
            "t.toml:3:8 topology::container_image: container node `a` has no `image`",
            "t.toml:5:1 topology::wrong_kind_field: `image` applies only to nodes of kind \
             `container`",
        ]
    );
}

#[test]
fn unknown_field() {
    let text = "name = \"t\"\n[nodes.a]\nkinds = \"netns\"\n";
    assert_eq!(
        toml_errors(text),
        ["t.toml:3:1 topology::unknown_field: unknown field `kinds` in node `a`"]
    );
}

#[test]
fn syntax_error() {
    assert_eq!(
        toml_errors("name = \"t\"\n[nodes.a\n"),
        ["t.toml:2:9 topology::syntax: unclosed table, expected `]`"]
    );
}

#[test]
fn every_error_is_reported() {
    let text = "name = \"T\"\n[nodes.a]\nkind = \"vm\"\ncpus = \"two\"\nkernel = \"4.4\"\n\
        [nodes.b]\nkernel = \"6.1\"\n[[links]]\nendpoints = [\"a:eth0\", \"x:eth0\"]\nmtu = 10\n";
    assert_eq!(
        toml_errors(text),
        [
            "t.toml:1:8 topology::bad_name: bad lab name `T`",
            "t.toml:3:8 topology::unknown_kernel: kernel `4.4` is not in vm-images/kernels.toml",
            "t.toml:4:8 topology::type: `cpus` must be an integer, not a string",
            "t.toml:7:1 topology::wrong_kind_field: `kernel` applies only to nodes of kind `vm`",
            "t.toml:9:25 topology::unknown_node: unknown node `x`",
            "t.toml:10:7 topology::bad_mtu: MTU 10 is out of range",
        ]
    );
}

#[test]
fn routes_need_a_reachable_gateway() {
    let text = "name = \"t\"\n[nodes.a]\nroutes = [{ to = \"default\", via = \"10.9.9.9\" }]\n\
         [nodes.b]\n[[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n";
    assert_eq!(
        toml_errors(text),
        [
            "t.toml:3:35 topology::unreachable_gateway: gateway `10.9.9.9` is on no subnet of \
             node `a`"
        ]
    );
}

#[test]
fn bridge_segments_take_addresses_from_all_or_none() {
    let text = "name = \"t\"\n[nodes.sw]\nkind = \"bridge\"\n[nodes.a]\n[nodes.b]\n\
        [[links]]\nendpoints = [\"a:eth0\", \"sw:p1\"]\naddresses = [\"10.0.0.1/24\"]\n\
        [[links]]\nendpoints = [\"b:eth0\", \"sw:p2\"]\n";
    assert_eq!(
        toml_errors(text),
        [
            "t.toml:9:1 topology::mixed_addressing: this link has no addresses, but another \
             link on the same bridge has"
        ]
    );
}

#[test]
fn containerlab_errors() {
    let text = "name: t\ntopology:\n  nodes:\n    a:\n      kind: ceos\n      imagee: x\n    b:\n      kind: linux\n  links:\n    - endpoints: [\"a:eth1\", \"c:eth1\"]\n    - endpoints: [\"a:eth1\", \"b:e1\"]\n      type: vxlan\n";
    assert_eq!(
        errors(text, Format::Containerlab),
        [
            "t.clab.yml:5:13 topology::unknown_kind: node kind `ceos` is not supported",
            "t.clab.yml:6:7 topology::unknown_field: unknown field `imagee` in node `a`",
            "t.clab.yml:10:30 topology::unknown_node: unknown node `c`",
            "t.clab.yml:12:13 topology::unsupported_link: link type `vxlan` is not supported",
        ]
    );
}

#[test]
fn containerlab_duplicate_keys_and_syntax() {
    assert_eq!(
        errors("name: t\nname: u\n", Format::Containerlab),
        ["t.clab.yml:2:1 topology::duplicate_key: `name` is defined twice"]
    );
    assert_eq!(
        errors("name: t\ntopology: [\n", Format::Containerlab).len(),
        1
    );
}

#[test]
fn containerlab_warnings_name_what_is_ignored() {
    let text = "name: t\nprefix: x\ntopology:\n  nodes:\n    a:\n      kind: linux\n      cmd: sleep 1\n      env: {A: b}\n";
    let loaded = parse("t.clab.yml", text, Format::Containerlab).expect("valid");
    let warnings: Vec<String> = loaded
        .warnings
        .iter()
        .map(|d| format!("{} {}", d.location(), d.message()))
        .collect();
    assert_eq!(
        warnings,
        [
            "t.clab.yml:2:1 `prefix` in the file is not supported yet and is ignored",
            "t.clab.yml:5:5 node `a` of kind `linux` has no `image`: it runs as a network \
             namespace, and its `cmd` is ignored",
            "t.clab.yml:8:7 `env` in node `a` is not supported yet and is ignored",
        ]
    );
}

/// containerlab `linux` nodes with an `image` are container nodes; `cmd` is a string (split at
/// whitespace) or a list, inherited like any setting.
#[test]
fn containerlab_linux_nodes_with_an_image_are_containers() {
    let text = "name: t\ntopology:\n  kinds:\n    linux:\n      image: disgrafs-lab/base\n\
        \x20     cmd: sleep 100\n  nodes:\n    a: {kind: linux}\n    b:\n      kind: linux\n\
        \x20     image: disgrafs-lab/storage\n      cmd: [\"/bin/sh\", \"-c\", \"exec sleep 9\"]\n";
    let loaded = parse("t.clab.yml", text, Format::Containerlab)
        .unwrap_or_else(|d| panic!("{}", d.render_plain()));
    assert_eq!(
        loaded.warnings.iter().count(),
        0,
        "{}",
        loaded.warnings.render_plain()
    );
    let kinds: Vec<(&str, &NodeKind)> = loaded
        .topology
        .nodes
        .iter()
        .map(|n| (n.name.value.as_str(), &n.kind.value))
        .collect();
    let container = |image: &str, cmd: &[&str]| NodeKind::Container {
        image: Some(image.to_owned()),
        cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
    };
    assert_eq!(
        kinds,
        [
            ("a", &container("disgrafs-lab/base", &["sleep", "100"])),
            (
                "b",
                &container("disgrafs-lab/storage", &["/bin/sh", "-c", "exec sleep 9"])
            ),
        ]
    );
    assert_eq!(
        errors(
            "name: t\ntopology:\n  nodes:\n    a: {kind: linux, image: x, cmd: {a: b}}\n",
            Format::Containerlab
        ),
        [
            "t.clab.yml:4:37 topology::type: `cmd` must be a string or an array of strings, not a table"
        ]
    );
}

/// The rendered report underlines the offending text under a `file:line:col` header.
#[test]
fn rendered_report() {
    let text = "name = \"t\"\n[nodes.a]\nkind = \"router\"\n[nodes.b]\n[[links]]\n\
        endpoints = [\"a:eth0\", \"c:a-very-long-name\"]\nimpair = { loss = \"5\" }\n";
    let report = match parse("t.toml", text, Format::Toml) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.render_plain(),
    };
    insta::assert_snapshot!(report);
}
