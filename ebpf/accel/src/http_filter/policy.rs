//! The filter's policy: a TOML file, validated into the rules and map entries the program
//! reads.
//!
//! ```toml
//! # Destination ports in scope, and the methods allowed on them (one method rule per table).
//! [[ports]]
//! name = "web"                          # optional; default "methods:<ports>"
//! ports = [80, 8080]
//! allowed_methods = ["GET", "HEAD"]     # optional; default: all. "OTHER" = any other token
//! method_action = "drop"                # drop (default) | monitor
//!
//! # Path prefix rules: the longest prefix of the request target wins, per port.
//! [[paths]]
//! name = "admin"
//! ports = [8080]                        # each must be declared in a [[ports]] table
//! prefix = "/admin"                     # visible ASCII, at most 254 bytes; "" matches all
//! action = "drop"                       # drop | monitor | allow
//! ```
//!
//! Rule ids are assigned in file order: `[[ports]]` tables first, then `[[paths]]`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    path::Path,
};

use ebpf_common::http_filter::{
    ACTION_ALLOW, ACTION_DROP, ACTION_MONITOR, MAX_PATH_ENTRIES, MAX_PORTS, MAX_RULES, METHOD_ALL,
    METHOD_OTHER, METHODS, PATH_MAX, PathRule, PortPolicy, RULE_NAME_MAX,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a rule does with the requests it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pass, counting the hit (an exception under a broader drop prefix).
    Allow,
    /// Pass and count: monitor mode, what would have been dropped.
    Monitor,
    /// Drop.
    Drop,
}

impl Action {
    /// The `ACTION_*` value the program reads.
    pub fn code(self) -> u32 {
        match self {
            Self::Allow => ACTION_ALLOW,
            Self::Monitor => ACTION_MONITOR,
            Self::Drop => ACTION_DROP,
        }
    }
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Match {
    /// Requests on these ports whose method is not allowed.
    Methods {
        /// The ports.
        ports: Vec<u16>,
        /// The allowed `METHOD_*` bits.
        allowed: u32,
    },
    /// Requests on these ports whose target starts with `prefix` (longest prefix wins).
    Path {
        /// The ports.
        ports: Vec<u16>,
        /// The prefix.
        prefix: String,
    },
}

/// One rule of a validated policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Its id: the index of its hit counter.
    pub id: u32,
    /// Its name, unique in the policy.
    pub name: String,
    /// What it matches.
    #[serde(flatten)]
    pub matches: Match,
    /// What it does.
    pub action: Action,
}

/// A validated policy: the rules, and the map entries they make.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    ports: BTreeMap<u16, PortPolicy>,
    paths: BTreeMap<(u16, Vec<u8>), PathRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    ports: Vec<PortsTable>,
    #[serde(default)]
    paths: Vec<PathsTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortsTable {
    name: Option<String>,
    ports: Vec<u16>,
    allowed_methods: Option<Vec<String>>,
    #[serde(default = "default_method_action")]
    method_action: Action,
}

fn default_method_action() -> Action {
    Action::Drop
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathsTable {
    name: String,
    ports: Vec<u16>,
    prefix: String,
    action: Action,
}

/// Where in the file a rule came from, for messages: `ports[0] ("web")`.
struct Place<'a>(&'static str, usize, &'a str);

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}] ({:?})", self.0, self.1, self.2)
    }
}

impl Policy {
    /// Reads and validates the policy file at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(Error::io(path))?;
        Self::parse(&text).map_err(|message| Error::Policy {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and validates policy text; the error names the line or the rule at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let mut policy = Self::default();
        let mut names = BTreeSet::new();
        let mut claim_name = |name: &str, place: &Place<'_>| -> Result<(), String> {
            if name.is_empty() || name.len() > RULE_NAME_MAX {
                return Err(format!(
                    "{place}: a rule name must be 1 to {RULE_NAME_MAX} bytes long"
                ));
            }
            if !names.insert(name.to_owned()) {
                return Err(format!("{place}: rule name {name:?} is used twice"));
            }
            Ok(())
        };
        let mut next_id = 0u32;
        let mut take_id = |place: &Place<'_>| -> Result<u32, String> {
            if next_id >= MAX_RULES {
                return Err(format!("{place}: more than {MAX_RULES} rules"));
            }
            next_id += 1;
            Ok(next_id - 1)
        };

        for (i, table) in file.ports.iter().enumerate() {
            let name = table.name.clone().unwrap_or_else(|| {
                let ports: Vec<String> = table.ports.iter().map(u16::to_string).collect();
                format!("methods:{}", ports.join(","))
            });
            let place = Place("ports", i, &name);
            claim_name(&name, &place)?;
            let id = take_id(&place)?;
            check_ports(&table.ports, &place)?;
            if table.method_action == Action::Allow {
                return Err(format!(
                    "{place}: method_action must be \"drop\" or \"monitor\""
                ));
            }
            let allowed = match &table.allowed_methods {
                None => METHOD_ALL,
                Some(methods) => methods.iter().try_fold(0, |bits, m| {
                    method_bit(m).map(|bit| bits | bit).ok_or_else(|| {
                        format!(
                            "{place}: unknown method {m:?} (known: {}, OTHER)",
                            METHODS.map(|(n, _)| n).join(", ")
                        )
                    })
                })?,
            };
            for &port in &table.ports {
                if policy.ports.len() as u32 >= MAX_PORTS {
                    return Err(format!(
                        "{place}: more than {MAX_PORTS} ports in the policy"
                    ));
                }
                let entry = PortPolicy {
                    allowed_methods: allowed,
                    method_action: table.method_action.code(),
                    method_rule: id,
                    ..PortPolicy::default()
                };
                if policy.ports.insert(port, entry).is_some() {
                    return Err(format!(
                        "{place}: port {port} is already declared by another [[ports]] table"
                    ));
                }
            }
            policy.rules.push(Rule {
                id,
                name,
                matches: Match::Methods {
                    ports: table.ports.clone(),
                    allowed,
                },
                action: table.method_action,
            });
        }

        for (i, table) in file.paths.iter().enumerate() {
            let place = Place("paths", i, &table.name);
            claim_name(&table.name, &place)?;
            let id = take_id(&place)?;
            check_ports(&table.ports, &place)?;
            let prefix = table.prefix.as_bytes();
            if prefix.len() > PATH_MAX {
                return Err(format!(
                    "{place}: prefix is {} bytes long, at most {PATH_MAX} are matched",
                    prefix.len()
                ));
            }
            if let Some(bad) = prefix.iter().find(|b| !(0x21..=0x7e).contains(*b)) {
                return Err(format!(
                    "{place}: prefix contains byte {bad:#04x}; request targets are visible \
                     ASCII only (percent-encode anything else)"
                ));
            }
            for &port in &table.ports {
                if !policy.ports.contains_key(&port) {
                    return Err(format!(
                        "{place}: port {port} is not declared in any [[ports]] table"
                    ));
                }
                let entry = PathRule {
                    rule: id,
                    action: table.action.code(),
                };
                if policy.paths.len() as u32 >= MAX_PATH_ENTRIES {
                    return Err(format!(
                        "{place}: more than {MAX_PATH_ENTRIES} (port, prefix) entries"
                    ));
                }
                if let Some(other) = policy.paths.insert((port, prefix.to_vec()), entry) {
                    let other = &policy.rules[other.rule as usize].name;
                    return Err(format!(
                        "{place}: port {port} prefix {:?} is already used by rule {other:?}",
                        table.prefix
                    ));
                }
            }
            policy.rules.push(Rule {
                id,
                name: table.name.clone(),
                matches: Match::Path {
                    ports: table.ports.clone(),
                    prefix: table.prefix.clone(),
                },
                action: table.action,
            });
        }
        for (&port, entry) in &mut policy.ports {
            entry.set_prefixes(
                policy
                    .paths
                    .iter()
                    .filter(move |((p, _), _)| *p == port)
                    .map(|((_, prefix), rule)| (prefix.as_slice(), rule.rule, rule.action)),
            );
        }
        Ok(policy)
    }

    /// The rules, in id order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule with id `id`.
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.get(usize::try_from(id).ok()?)
    }

    /// The port map's entries.
    pub fn ports(&self) -> &BTreeMap<u16, PortPolicy> {
        &self.ports
    }

    /// The path trie's entries, keyed by (port, prefix bytes).
    pub fn paths(&self) -> &BTreeMap<(u16, Vec<u8>), PathRule> {
        &self.paths
    }
}

/// The `METHOD_*` bit of a method name of a policy file.
fn method_bit(name: &str) -> Option<u32> {
    if name == "OTHER" {
        return Some(METHOD_OTHER);
    }
    METHODS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bit)| *bit)
}

fn check_ports(ports: &[u16], place: &Place<'_>) -> Result<(), String> {
    if ports.is_empty() {
        return Err(format!("{place}: ports is empty"));
    }
    if ports.contains(&0) {
        return Err(format!("{place}: port 0 is not a destination port"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ebpf_common::http_filter::{
        LOOKUP_NONE, LOOKUP_SHORT, LOOKUP_TRIE, METHOD_GET, METHOD_HEAD, NO_RULE, pack_le,
    };

    use super::*;

    const GOOD: &str = r#"
[[ports]]
name = "web"
ports = [80, 8080]
allowed_methods = ["GET", "HEAD"]

[[ports]]
ports = [9000]
method_action = "monitor"

[[paths]]
name = "admin"
ports = [80, 8080]
prefix = "/admin"
action = "drop"

[[paths]]
name = "admin-public"
ports = [80]
prefix = "/admin/public"
action = "allow"
"#;

    #[test]
    fn a_good_policy_compiles_to_rules_and_entries() {
        let policy = Policy::parse(GOOD).unwrap();
        let names: Vec<&str> = policy.rules().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["web", "methods:9000", "admin", "admin-public"]);
        let web = policy.ports()[&8080];
        assert_eq!(
            (web.allowed_methods, web.method_action, web.method_rule),
            (METHOD_GET | METHOD_HEAD, ACTION_DROP, 0)
        );
        // Prefix lookups: 8080 has "/admin" only (short), 80 also "/admin/public" (trie);
        // no empty prefix; 9000 has no prefix.
        let (web80, web8080) = (policy.ports()[&80], policy.ports()[&8080]);
        assert_eq!((web80.lookup, web80.default_rule), (LOOKUP_TRIE, NO_RULE));
        assert_eq!((web80.head_len, web80.max_prefix_len), (6, 13));
        assert_eq!((web8080.lookup, web8080.short_count), (LOOKUP_SHORT, 1));
        assert_eq!(
            (web8080.short[0].value, web8080.short[0].rule),
            (pack_le(b"/admin"), 2)
        );
        assert_eq!(policy.ports()[&9000].lookup, LOOKUP_NONE);
        assert_eq!(policy.ports()[&9000].allowed_methods, METHOD_ALL);
        assert_eq!(policy.ports()[&9000].method_action, ACTION_MONITOR);
        assert_eq!(policy.paths().len(), 3);
        assert_eq!(
            policy.paths()[&(80, b"/admin/public".to_vec())],
            PathRule {
                rule: 3,
                action: ACTION_ALLOW
            }
        );
    }

    fn error(text: &str) -> String {
        Policy::parse(text).unwrap_err()
    }

    #[test]
    fn bad_policies_name_the_rule_and_the_problem() {
        let cases = [
            (
                "[[ports]]\nports = [80]\nallowed_methods = [\"GETT\"]\n",
                "ports[0] (\"methods:80\"): unknown method \"GETT\"",
            ),
            (
                "[[ports]]\nports = []\n",
                "ports[0] (\"methods:\"): ports is empty",
            ),
            (
                "[[ports]]\nports = [0]\n",
                "port 0 is not a destination port",
            ),
            (
                "[[ports]]\nports = [80]\n[[ports]]\nports = [80, 81]\n",
                "ports[1] (\"methods:80,81\"): port 80 is already declared",
            ),
            (
                "[[ports]]\nports = [80]\nmethod_action = \"allow\"\n",
                "method_action must be",
            ),
            (
                "[[paths]]\nname = \"x\"\nports = [80]\nprefix = \"/\"\naction = \"drop\"\n",
                "paths[0] (\"x\"): port 80 is not declared",
            ),
            (
                "[[ports]]\nports = [80]\n[[paths]]\nname = \"x\"\nports = [80]\nprefix = \"/a b\"\naction = \"drop\"\n",
                "prefix contains byte 0x20",
            ),
            (
                "[[ports]]\nports = [80]\n[[paths]]\nname = \"x\"\nports = [80]\nprefix = \"/a\"\naction = \"drop\"\n[[paths]]\nname = \"y\"\nports = [80]\nprefix = \"/a\"\naction = \"allow\"\n",
                "paths[1] (\"y\"): port 80 prefix \"/a\" is already used by rule \"x\"",
            ),
            (
                "[[ports]]\nname = \"x\"\nports = [80]\n[[paths]]\nname = \"x\"\nports = [80]\nprefix = \"/a\"\naction = \"drop\"\n",
                "rule name \"x\" is used twice",
            ),
            (
                "[[ports]]\nports = [80]\nbogus = 1\n",
                "unknown field `bogus`",
            ),
            ("[[ports]]\nports = [70000]\n", "line 2"),
            (
                "[[ports]]\nports = [80]\n[[paths]]\nname = \"x\"\nports = [80]\nprefix = \"/\"\naction = \"block\"\n",
                "unknown variant `block`",
            ),
        ];
        for (text, expected) in cases {
            let e = error(text);
            assert!(e.contains(expected), "{text}\n→ {e}\nexpected {expected:?}");
        }
        let long = format!(
            "[[ports]]\nports = [80]\n[[paths]]\nname = \"x\"\nports = [80]\nprefix = \"/{}\"\naction = \"drop\"\n",
            "a".repeat(PATH_MAX)
        );
        assert!(error(&long).contains("prefix is 255 bytes long"));
    }

    #[test]
    fn the_example_policy_is_valid() {
        let policy =
            Policy::parse(include_str!("../../policies/http-filter.example.toml")).unwrap();
        assert_eq!(policy.rules().len(), 4);
        assert_eq!(policy.paths().len(), 5);
    }

    #[test]
    fn file_errors_name_the_file() {
        let err = Policy::from_file(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/policy.toml"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("accel-policy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        fs::write(&file, "[[ports]]\nports = \"80\"\n").unwrap();
        let err = Policy::from_file(&file).unwrap_err().to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.starts_with(&format!("policy file {}: ", file.display())),
            "{err}"
        );
        assert!(err.contains("line 2"), "{err}");
    }
}
