//! `lab-vm`: fetch matrix kernels, build initramfs images, run commands in a VM, and run the
//! accelerator × kernel matrix.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lab_vm::{Cache, InitramfsSpec, Matrix, SmokeTests, Vm, VmConfig, initramfs, matrix_run};

#[derive(Debug, Parser)]
#[command(
    name = "lab-vm",
    about = "QEMU VMs with Debian kernels for the DisGraFS lab"
)]
struct Cli {
    /// Kernel matrix file (default: the built-in vm-images/kernels.toml).
    #[arg(long, global = true)]
    matrix: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Download and unpack pinned kernels into the cache (all, or the named ones).
    Fetch {
        /// Matrix name of a kernel (repeatable).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
    },
    /// Build an initramfs image for a kernel.
    Initramfs {
        /// Matrix name of the kernel.
        #[arg(long)]
        kernel: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        image: ImageArgs,
    },
    /// Boot a kernel, run one command through the guest agent, print its output, power off.
    Run {
        /// Matrix name of the kernel.
        #[arg(long)]
        kernel: String,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u32,
        /// Host directory shared over 9p, mounted at /host in the guest.
        #[arg(long)]
        share: Option<PathBuf>,
        /// Keep the console log at this path.
        #[arg(long)]
        console: Option<PathBuf>,
        /// Seconds allowed for boot and for the command each.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Extra kernel command line parameters, e.g. "initcall_debug".
        #[arg(long, default_value = "")]
        append: String,
        #[command(flatten)]
        image: ImageArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run every accelerator's smoke test on every kernel (or the named ones) and write the
    /// accelerator × kernel table to DIR/matrix.md and DIR/matrix.json; exit 1 if anything
    /// failed.
    Matrix {
        /// Matrix name of a kernel (repeatable; default: all).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Output directory (tables and console logs).
        #[arg(long, default_value = "target/lab-vm-matrix")]
        out: PathBuf,
        /// The accel binary to test (default: `cargo build --release -p accel` of this
        /// workspace).
        #[arg(long)]
        accel: Option<PathBuf>,
        /// Smoke test file (default: the built-in vm-images/smoke.toml).
        #[arg(long)]
        smoke: Option<PathBuf>,
        /// Virtual CPUs per VM.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Memory per VM in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u32,
        /// Seconds allowed for each boot and for each smoke test step.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

#[derive(Debug, clap::Args)]
struct ImageArgs {
    /// Host binary to include with its libraries, e.g. /usr/sbin/tc (repeatable).
    #[arg(long = "with")]
    extra: Vec<PathBuf>,
    /// Extra module to load at boot (repeatable).
    #[arg(long = "module")]
    modules: Vec<String>,
    /// The minimal image: only the modules the guest agent needs (no network card, no 9p
    /// share) besides those named with --module.
    #[arg(long)]
    minimal: bool,
}

impl ImageArgs {
    fn spec(&self) -> InitramfsSpec {
        let mut spec = if self.minimal {
            InitramfsSpec::minimal()
        } else {
            InitramfsSpec::default()
        };
        spec.modules.extend(self.modules.iter().cloned());
        spec.extra_binaries.clone_from(&self.extra);
        spec
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab-vm: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> lab_vm::Result<ExitCode> {
    let matrix = match &cli.matrix {
        Some(path) => Matrix::load(path)?,
        None => Matrix::builtin()?,
    };
    let cache = Cache::from_env()?;
    match cli.command {
        Cmd::Fetch { kernels } => {
            let names: Vec<String> = if kernels.is_empty() {
                matrix.kernels.iter().map(|k| k.name.clone()).collect()
            } else {
                kernels
            };
            for name in names {
                let kernel = cache.fetch(matrix.kernel(&name)?)?;
                println!(
                    "{}\t{}\t{}",
                    kernel.name,
                    kernel.release,
                    kernel.vmlinux.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Initramfs {
            kernel,
            output,
            image,
        } => {
            let kernel = cache.fetch(matrix.kernel(&kernel)?)?;
            let built = initramfs::build(&kernel, &image.spec(), &output)?;
            println!(
                "{}\t{} bytes\tmodules: {}",
                built.path.display(),
                built.size,
                built.modules.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            kernel,
            cpus,
            memory,
            share,
            console,
            timeout,
            append,
            image,
            command,
        } => {
            let kernel = cache.fetch(matrix.kernel(&kernel)?)?;
            let dir = tempfile::tempdir().map_err(|source| lab_vm::Error::Io {
                context: "creating a temporary directory".into(),
                source,
            })?;
            let image_path = dir.path().join("initramfs.cpio");
            initramfs::build(&kernel, &image.spec(), &image_path)?;
            let timeout = Duration::from_secs(timeout);
            let config = VmConfig {
                cpus,
                memory_mib: memory,
                share,
                console_log: console,
                boot_timeout: timeout,
                append,
                ..VmConfig::new(&kernel.vmlinux, &image_path)
            };
            let mut vm = Vm::boot(&config)?;
            eprintln!(
                "lab-vm: kernel {} ({}) agent ready after {} ms ({:?})",
                kernel.name,
                kernel.release,
                vm.ready_after().as_millis(),
                vm.accel()
            );
            let output = vm.run(&command, timeout)?;
            use std::io::Write;
            let _out = std::io::stdout().write_all(&output.stdout);
            let _err = std::io::stderr().write_all(&output.stderr);
            vm.power_off(Duration::from_secs(10))?;
            Ok(ExitCode::from(u8::try_from(output.exit_code).unwrap_or(1)))
        }
        Cmd::Matrix {
            kernels,
            out,
            accel,
            smoke,
            cpus,
            memory,
            timeout,
        } => {
            let pins = if kernels.is_empty() {
                matrix.kernels.iter().collect()
            } else {
                kernels
                    .iter()
                    .map(|name| matrix.kernel(name))
                    .collect::<lab_vm::Result<Vec<_>>>()?
            };
            let tests = match &smoke {
                Some(path) => SmokeTests::load(path)?,
                None => SmokeTests::builtin()?,
            };
            let accel = match accel {
                Some(path) if path.is_file() => path,
                Some(path) => {
                    return Err(lab_vm::Error::Kernel(format!(
                        "--accel {}: no such file",
                        path.display()
                    )));
                }
                None => matrix_run::build_accel()?,
            };
            let options = matrix_run::RunOptions {
                accel,
                out,
                cpus,
                memory_mib: memory,
                boot_timeout: Duration::from_secs(timeout),
                step_timeout: Duration::from_secs(timeout),
            };
            let report = matrix_run::run(&pins, &cache, &tests, &options)?;
            report.write(&options.out)?;
            print!("{}", report.markdown());
            eprintln!(
                "lab-vm matrix: wrote {0}/matrix.md and {0}/matrix.json",
                options.out.display()
            );
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
