//! The subcommands every Chorus binary has besides running: shell completions and a man page,
//! both generated from the binary's own clap definition, so they cannot drift from its flags.
//!
//! ```text
//! chorus-gateway completions bash > /etc/bash_completion.d/chorus-gateway
//! chorus-gateway man > /usr/local/share/man/man1/chorus-gateway.1
//! ```

use std::io::Write;

use crate::config_file;
use crate::logging::{self, LogConfig};

/// This process's command line with its settings file applied; a bad file ends the process
/// with its problems (exit code 2, as clap does for a bad flag).
pub fn args_with_config_file(command: &clap::Command) -> Vec<std::ffi::OsString> {
    match config_file::merged_args(command, std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// A binary's command line that has the common parts: log settings, the runtime's threads and
/// the tools.
pub trait ServiceCli: clap::Parser {
    fn log(&self) -> &LogConfig;
    fn runtime(&self) -> &RuntimeConfig;
    fn tool(&self) -> Option<&Tool>;
}

/// How many threads run a service's tasks.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuntimeConfig {
    /// Threads that run the service's tasks (default: one per CPU core). When several Chorus
    /// processes share a host's cores (a gateway per core, say), give each its share: threads
    /// beyond the cores only wait for a core and add latency.
    #[arg(long = "worker-threads", env = "CHORUS_WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

impl RuntimeConfig {
    /// The multi-threaded tokio runtime these settings describe.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = self.worker_threads {
            builder.worker_threads(n.get());
        }
        builder.enable_all().build()
    }
}

/// Implements [`ServiceCli`] for a command line with `log: LogConfig`,
/// `runtime: RuntimeConfig` and `tool: Option<Tool>` fields.
#[macro_export]
macro_rules! service_cli {
    ($cli:ty) => {
        impl $crate::tools::ServiceCli for $cli {
            fn log(&self) -> &$crate::logging::LogConfig {
                &self.log
            }

            fn runtime(&self) -> &$crate::tools::RuntimeConfig {
                &self.runtime
            }

            fn tool(&self) -> Option<&$crate::tools::Tool> {
                self.tool.as_ref()
            }
        }
    };
}

/// Runs a service: parses the command line, with the settings file's values where the command
/// line and the environment give none (see [`config_file`]); runs a tool subcommand instead
/// when one is given; otherwise builds the runtime the settings ask for, sets up logging in it
/// and runs `serve` with the parsed flags to the end.
pub fn run<C, F, E>(serve: impl FnOnce(C) -> F) -> Result<(), E>
where
    C: ServiceCli,
    F: std::future::Future<Output = Result<(), E>>,
    E: From<std::io::Error>,
{
    let args = args_with_config_file(&C::command());
    let cli = C::try_parse_from(args).unwrap_or_else(|e| e.exit());
    if let Some(tool) = cli.tool() {
        tool.run(C::command())?;
        return Ok(());
    }
    let runtime = cli.runtime().build()?;
    runtime.block_on(async move {
        let service = C::command().get_name().to_owned();
        if let Err(e) = logging::init(cli.log(), &service) {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        serve(cli).await
    })
}

/// `completions SHELL` or `man`, next to a binary's own flags.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// Print shell completions for this binary (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print this binary's man page (roff) to stdout.
    Man,
    /// Work with settings files (`--config FILE`).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigAction {
    /// Check a settings file: every unknown name and invalid value, with its line.
    Check { file: std::path::PathBuf },
    /// Print a complete settings file, every setting commented out at its default.
    Defaults,
}

impl Tool {
    /// Writes the completions or the man page of `command` (the binary's `Cli::command()`).
    pub fn write(&self, mut command: clap::Command, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Tool::Completions { shell } => {
                let name = command.get_name().to_owned();
                clap_complete::generate(*shell, &mut command, name, out);
                Ok(())
            }
            Tool::Man => clap_mangen::Man::new(command).render(out),
            Tool::Config {
                action: ConfigAction::Defaults,
            } => out.write_all(config_file::defaults(&command).as_bytes()),
            Tool::Config {
                action: ConfigAction::Check { file },
            } => {
                let problems = config_file::check(&command, file).map_err(std::io::Error::other)?;
                if problems.is_empty() {
                    return writeln!(out, "{}: ok", file.display());
                }
                writeln!(out, "{}:", file.display())?;
                for p in &problems {
                    writeln!(out, "{p}")?;
                }
                Err(std::io::Error::other(format!(
                    "{} problem(s) in {}",
                    problems.len(),
                    file.display()
                )))
            }
        }
    }

    /// Writes to stdout, for a binary's `main`.
    pub fn run(&self, command: clap::Command) -> std::io::Result<()> {
        self.write(command, &mut std::io::stdout().lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// A binary shaped like Chorus's: flags, an environment variable, the tools.
    #[derive(Parser)]
    #[command(name = "chorus-example", version, about = "An example service")]
    struct Cli {
        /// Where to listen.
        #[arg(
            long = "listen",
            env = "CHORUS_EXAMPLE_LISTEN",
            default_value = "0.0.0.0:1"
        )]
        listen: String,
        #[command(subcommand)]
        tool: Option<Tool>,
    }

    fn output(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(cli.listen, "0.0.0.0:1");
        let mut out = Vec::new();
        cli.tool.unwrap().write(Cli::command(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_and_man_page_come_from_the_flags() {
        let bash = output(&["chorus-example", "completions", "bash"]);
        assert!(bash.contains("--listen"), "{bash}");
        assert!(bash.contains("chorus-example"));
        let zsh = output(&["chorus-example", "completions", "zsh"]);
        assert!(zsh.contains("--listen"));
        let man = output(&["chorus-example", "man"]);
        assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
        assert!(
            man.contains("listen") && man.contains("CHORUS_EXAMPLE_LISTEN"),
            "{man}"
        );
    }

    #[derive(Parser)]
    struct WithRuntime {
        #[command(flatten)]
        runtime: RuntimeConfig,
    }

    #[test]
    fn worker_threads_set_the_runtimes_threads_and_zero_is_refused() {
        let one = WithRuntime::try_parse_from(["x", "--worker-threads", "1"]).unwrap();
        assert_eq!(one.runtime.build().unwrap().metrics().num_workers(), 1);
        let three = WithRuntime::try_parse_from(["x", "--worker-threads", "3"]).unwrap();
        assert_eq!(three.runtime.build().unwrap().metrics().num_workers(), 3);
        assert!(WithRuntime::try_parse_from(["x", "--worker-threads", "0"]).is_err());
        let default = WithRuntime::try_parse_from(["x"]).unwrap();
        assert!(default.runtime.worker_threads.is_none());
        assert!(default.runtime.build().unwrap().metrics().num_workers() >= 1);
    }
}
