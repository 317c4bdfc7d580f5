//! The `lab` command: builds and inspects network labs from topology files.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lab::topology::{self, LoadError, Plan, PlanOptions, Prefix};
use miette::GraphicalReportHandler;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure while running (e.g. a file cannot be read)
  2  invalid input: bad arguments, or an invalid topology file (every problem is printed)";

/// Exit code for failures while running.
const FAILURE: u8 = 1;
/// Exit code for invalid input.
const INVALID: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "lab", version, about = "Network labs for the DisGraFS eBPF Lab", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the resources that `lab up` would create for a topology, in order.
    #[command(after_help = EXIT_CODES)]
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Topology file: TOML, or containerlab YAML (`.yml`, `.yaml`).
    file: PathBuf,
    /// Print the plan as JSON (the form saved in the lab's state file).
    #[arg(long)]
    json: bool,
    /// Start of every kernel name: 1 to 4 lowercase letters or digits, first a letter.
    #[arg(long, default_value = "dgl", value_parser = Prefix::new)]
    prefix: Prefix,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

/// Loads a topology, printing its warnings, or every diagnostic and the exit code to use.
fn load(file: &std::path::Path) -> Result<topology::Loaded, u8> {
    let handler = GraphicalReportHandler::new();
    match topology::load(file) {
        Ok(loaded) => {
            eprint!("{}", loaded.warnings.render(&handler));
            Ok(loaded)
        }
        Err(LoadError::Invalid(diagnostics)) => {
            eprint!("{}", diagnostics.render(&handler));
            eprintln!(
                "error: {} is invalid ({} errors)",
                file.display(),
                diagnostics.error_count()
            );
            Err(INVALID)
        }
        Err(error @ LoadError::Read { .. }) => {
            eprintln!("error: {error}");
            Err(FAILURE)
        }
    }
}

fn plan(args: &PlanArgs) -> Result<(), u8> {
    let loaded = load(&args.file)?;
    let options = PlanOptions {
        prefix: args.prefix.clone(),
    };
    let plan = Plan::new(&loaded.topology, &options);
    let text = if args.json {
        serde_json::to_string_pretty(&plan).map_err(|e| {
            eprintln!("error: cannot write the plan as JSON: {e}");
            FAILURE
        })? + "\n"
    } else {
        plan.to_string()
    };
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (`lab plan … | head`) is not an error.
fn write_stdout(text: &str) -> Result<(), u8> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write to stdout: {e}");
            Err(FAILURE)
        }
        _ => Ok(()),
    }
}
