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

/// A binary's command line that has the common parts: log settings and the tools.
pub trait ServiceCli: clap::Parser {
    fn log(&self) -> &LogConfig;
    fn tool(&self) -> Option<&Tool>;
}

/// Implements [`ServiceCli`] for a command line with `log: LogConfig` and
/// `tool: Option<Tool>` fields.
#[macro_export]
macro_rules! service_cli {
    ($cli:ty) => {
        impl $crate::tools::ServiceCli for $cli {
            fn log(&self) -> &$crate::logging::LogConfig {
                &self.log
            }

            fn tool(&self) -> Option<&$crate::tools::Tool> {
                self.tool.as_ref()
            }
        }
    };
}

/// Parses the command line, with the settings file's values where the command line and the
/// environment give none (see [`config_file`]). A tool subcommand runs and gives `None` (the
/// binary exits); otherwise logging is set up and the parsed flags come back to run the
/// service with.
pub fn start<C: ServiceCli>() -> std::io::Result<Option<C>> {
    let args = args_with_config_file(&C::command());
    let cli = C::try_parse_from(args).unwrap_or_else(|e| e.exit());
    if let Some(tool) = cli.tool() {
        tool.run(C::command())?;
        return Ok(None);
    }
    let service = C::command().get_name().to_owned();
    if let Err(e) = logging::init(cli.log(), &service) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    Ok(Some(cli))
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
}
