//! Addresses from the pool: deterministic, one subnet per L2 segment, never overlapping.

use lab::topology::{Format, Plan, PlanOptions, Step, parse};

/// `(node:iface, address)` of every address in the plan of `text`.
fn addresses(text: &str) -> Vec<(String, String)> {
    let loaded = parse("t.toml", text, Format::Toml)
        .unwrap_or_else(|d| panic!("invalid:\n{}", d.render_plain()));
    let plan = Plan::new(&loaded.topology, &PlanOptions::default());
    let mut ends = Vec::new();
    for step in &plan.steps {
        if let Step::CreateVeth { a, b, .. } = step {
            ends.push(a.clone());
            ends.push(b.clone());
        }
    }
    plan.steps
        .iter()
        .filter_map(|step| match step {
            Step::AddAddress {
                ns, dev, address, ..
            } => {
                let end = ends.iter().find(|e| &e.ns == ns && &e.dev == dev)?;
                Some((format!("{}:{}", end.node, end.iface), address.to_string()))
            }
            _ => None,
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn pool_skips_explicit_subnets() {
    let text = "name = \"t\"\n[pool]\nipv4 = \"10.1.0.0/16\"\nipv6 = \"fd01::/48\"\n\
        [nodes.a]\n[nodes.b]\n[nodes.c]\n\
        [[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
        [[links]]\nendpoints = [\"b:eth1\", \"c:eth0\"]\n\
        addresses = [[\"10.1.0.1/24\", \"fd01::1/64\"], \"10.1.0.2/24\"]\n";
    assert_eq!(
        addresses(text),
        pairs(&[
            ("a:eth0", "10.1.1.1/24"),
            ("a:eth0", "fd01:0:0:1::1/64"),
            ("b:eth0", "10.1.1.2/24"),
            ("b:eth0", "fd01:0:0:1::2/64"),
            ("b:eth1", "10.1.0.1/24"),
            ("b:eth1", "fd01::1/64"),
            ("c:eth0", "10.1.0.2/24"),
        ])
    );
}

#[test]
fn bridges_joined_by_a_link_share_one_subnet() {
    let text = "name = \"t\"\n[pool]\nipv4 = \"10.2.0.0/16\"\n\
        [nodes.sw1]\nkind = \"bridge\"\n[nodes.sw2]\nkind = \"bridge\"\n[nodes.a]\n[nodes.b]\n\
        [[links]]\nendpoints = [\"a:eth0\", \"sw1:p1\"]\nmtu = 1000\n\
        [[links]]\nendpoints = [\"sw1:up\", \"sw2:up\"]\n\
        [[links]]\nendpoints = [\"sw2:p1\", \"b:eth0\"]\n";
    // MTU 1000 is too small for IPv6: the segment gets IPv4 only.
    assert_eq!(
        addresses(text),
        pairs(&[("a:eth0", "10.2.0.1/24"), ("b:eth0", "10.2.0.2/24")])
    );
}

#[test]
fn big_bridges_get_bigger_subnets() {
    let mut links = String::from("links = [\n");
    let mut nodes = String::from("[nodes]\nsw = { kind = \"bridge\" }\n");
    for i in 0..300 {
        links.push_str(&format!(
            "{{ endpoints = [\"h{i}:eth0\", \"sw:p{i}\"] }},\n"
        ));
        nodes.push_str(&format!("h{i} = {{}}\n"));
    }
    let text = format!("name = \"t\"\n{links}]\n[pool]\nipv4 = \"10.3.0.0/16\"\n{nodes}");
    let found = addresses(&text);
    let v4: Vec<&str> = found
        .iter()
        .map(|(_, a)| a.as_str())
        .filter(|a| a.starts_with("10."))
        .collect();
    assert_eq!(v4.len(), 300);
    assert_eq!(v4[0], "10.3.0.1/23");
    assert_eq!(v4[299], "10.3.1.44/23");
}

#[test]
fn exhausted_pool_is_an_error() {
    let text = "name = \"t\"\n[pool]\nipv4 = \"10.4.0.0/24\"\n[nodes.a]\n[nodes.b]\n\
        [[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
        [[links]]\nendpoints = [\"a:eth1\", \"b:eth1\"]\n";
    let errors = parse("t.toml", text, Format::Toml).expect_err("no room for two /24s");
    let messages: Vec<String> = errors
        .iter()
        .map(|d| format!("{} {}", d.location(), d.message()))
        .collect();
    assert_eq!(
        messages,
        ["t.toml:8:1 the IPv4 pool 10.4.0.0/24 has no room for this segment"]
    );
}

#[test]
fn bridge_ports_take_no_address_entry() {
    let text = "name = \"t\"\n[nodes.sw]\nkind = \"bridge\"\n[nodes.a]\n\
        [[links]]\nendpoints = [\"a:eth0\", \"sw:p1\"]\naddresses = [\"10.5.0.1/24\", \"10.5.0.2/24\"]\n";
    let errors = parse("t.toml", text, Format::Toml).expect_err("two entries for one end");
    let messages: Vec<String> = errors.iter().map(|d| d.location()).collect();
    assert_eq!(messages, ["t.toml:7:13"]);
    let fixed = text.replace(", \"10.5.0.2/24\"", "");
    assert_eq!(addresses(&fixed), pairs(&[("a:eth0", "10.5.0.1/24")]));
}

#[test]
fn default_pools_depend_on_the_lab_name() {
    let pools = |name: &str| {
        let text = format!("name = \"{name}\"\n[nodes.a]\n");
        let loaded = parse("t.toml", &text, Format::Toml).expect("valid");
        loaded.topology.pools
    };
    assert_ne!(pools("lab-a"), pools("lab-b"));
    assert_eq!(pools("lab-a"), pools("lab-a"));
}
