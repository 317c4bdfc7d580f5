//! Arbitrary and mutated input never makes the parsers, the checks or the planner panic.

use std::path::Path;

use lab::topology::{Format, Plan, PlanOptions, parse};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Runs everything a file goes through: parse, check, plan, print, render.
fn exercise(text: &str, format: Format) {
    match parse("fuzz", text, format) {
        Ok(loaded) => {
            let plan = Plan::new(&loaded.topology, &PlanOptions::default());
            let _ = plan.to_string();
            let _ = serde_json::to_string(&plan);
            let _ = loaded.warnings.render_plain();
        }
        Err(diagnostics) => {
            assert!(diagnostics.error_count() > 0);
            let _ = diagnostics.render_plain();
            for d in diagnostics.iter() {
                let _ = d.location();
            }
        }
    }
}

fn shipped() -> Vec<(String, Format)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/topologies");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("scenarios/topologies exists")
        .map(|e| e.expect("readable").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("readable");
            (text, Format::from_path(p))
        })
        .collect()
}

const TOKENS: &[&str] = &[
    "\n",
    " ",
    "=",
    ":",
    ",",
    "[",
    "]",
    "{",
    "}",
    "[[links]]",
    "[nodes.a]",
    "\"",
    "'",
    "- ",
    "#",
    "µ",
    "é",
    "🦀",
    "kind",
    "bridge",
    "host",
    "vm",
    "netns",
    "linux",
    "endpoints",
    "addresses",
    "impair",
    "delay",
    "\"1ms\"",
    "\"0.1%\"",
    "\"1gbit\"",
    "\"a:eth0\"",
    "\"b:eth0\"",
    "mtu",
    "9000",
    "-1",
    "1e9",
    "\"10.0.0.1/24\"",
    "\"fd00::1/64\"",
    "routes",
    "to",
    "via",
    "default",
    "exec",
    "name",
    "topology",
    "nodes",
    "links",
    "groups",
    "defaults",
    "type",
    "host-interface",
    "~",
    "null",
    "true",
    "&a",
    "*a",
    "!!str",
    "\t",
];

/// 256 cases unless `PROPTEST_CASES` says otherwise; failures are printed, not saved.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text(text in "\\PC{0,200}", yaml in any::<bool>()) {
        exercise(&text, if yaml { Format::Containerlab } else { Format::Toml });
    }

    #[test]
    fn token_soup(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..80), yaml in any::<bool>()) {
        exercise(&tokens.concat(), if yaml { Format::Containerlab } else { Format::Toml });
    }

    #[test]
    fn mutated_shipped_files(
        file in any::<prop::sample::Index>(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), 0..3u8, prop::sample::select(TOKENS)),
            1..6,
        ),
    ) {
        let files = shipped();
        let (text, format) = &files[file.index(files.len())];
        let mut chars: Vec<char> = text.chars().collect();
        for (at, op, token) in edits {
            let i = at.index(chars.len() + 1);
            match op {
                0 if i < chars.len() => {
                    chars.remove(i);
                }
                1 if i < chars.len() => {
                    chars.splice(i..=i, token.chars());
                }
                _ => {
                    chars.splice(i..i, token.chars());
                }
            }
        }
        exercise(&chars.into_iter().collect::<String>(), *format);
    }
}
